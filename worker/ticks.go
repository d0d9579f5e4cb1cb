package worker

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
)

// A schedule's ticks roll each other up and expire after one interval
// (schedules.go), so a tick no worker closed in time is replaced by the
// next one, or expires: the server leaves no trace of it. Each tick says
// when the schedule fires next (Nats-Schedule-Next), and the state keeps
// that of the instance's last closed tick; so when a tick is closed (a
// round, a skip, a failure: any result), the ticks expected between the
// last closed one and this one are the ones missed, and they are reported
// as one skipped sync report (code ticks_missed, with their count) before
// the stored tick moves on. A report that cannot be stored leaves the
// stored tick where it was, so the next tick reports them again.

// headerScheduleNext is set by the server on each tick: when the schedule
// fires next.
const headerScheduleNext = "Nats-Schedule-Next"

// accountTicks reports the ticks missed before d, a scheduled tick being
// closed, and records d as the instance's last closed tick.
func (w *Worker) accountTicks(ctx context.Context, d *delivery) {
	if triggerOf(d.msg) != jobs.TriggerSchedule || d.meta == nil {
		return
	}
	next, err := time.Parse(time.RFC3339Nano, d.msg.Headers().Get(headerScheduleNext))
	fired := d.meta.Timestamp
	every := next.Sub(fired)
	if err != nil || every <= 0 {
		return // not a repeating schedule's tick
	}
	this := state.LastTick{Seq: d.meta.Sequence.Stream, Next: next}
	prev, ok, err := d.scope.LastTick(ctx)
	if err != nil {
		d.log.Warn("worker: cannot read the instance's last tick; missed ticks are counted at the next one", "error", err)
		return
	}
	if ok && prev.Seq >= this.Seq {
		return // counted already (a redelivery)
	}
	if ok {
		from := prev.Next
		if in, err := w.instances.Lookup(ctx, w.cfg.Pool, d.addr.Instance); err == nil && in.UpdatedAt.Add(every).After(from) {
			from = in.UpdatedAt.Add(every) // the schedule was set again since: its first tick
		}
		if n := missedTicks(from, fired, every); n > 0 {
			if err := w.reportMissedTicks(ctx, d, n, from, every); err != nil {
				d.log.Warn("worker: cannot store the report of missed ticks; the next tick reports them", "missed", n, "error", err)
				return
			}
		}
	}
	if err := d.scope.AdvanceTick(ctx, this); err != nil {
		d.log.Warn("worker: cannot record the instance's last tick", "error", err)
	}
}

// missedTicks counts the ticks of a schedule firing every `every` from
// `from` on that fired before `fired` (half an interval of slack either
// way: a tick fires a little after its time).
func missedTicks(from, fired time.Time, every time.Duration) int {
	n := math.Floor(float64(fired.Sub(from))/float64(every) + 0.5)
	return int(max(n, 0))
}

func (w *Worker) reportMissedTicks(ctx context.Context, d *delivery, n int, from time.Time, every time.Duration) error {
	now := time.Now().UTC()
	id := d.jobID + "-missed"
	rep := &jobs.SyncReport{JobID: id, Instance: d.addr.Instance, SyncID: id, Outcome: jobs.OutcomeSkipped, Trigger: jobs.TriggerSchedule,
		StartedAt: now, FinishedAt: now, MissedTicks: n,
		Error: &jobs.Error{Code: jobs.CodeTicksMissed, Retryable: true, Message: fmt.Sprintf(
			"%d ticks of the schedule (every %s, from %s) were not served before the next one replaced them: the pool was behind or no worker ran; the tick of %s covers them",
			n, every, from.UTC().Format(time.RFC3339), d.meta.Timestamp.UTC().Format(time.RFC3339))}}
	if err := w.pub.SyncReport(ctx, rep); err != nil {
		return err
	}
	w.stats.TicksMissed.Add(int64(n))
	d.log.Warn("worker: scheduled ticks were missed", "missed", n, "every", every)
	return nil
}

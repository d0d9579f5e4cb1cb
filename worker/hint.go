package worker

import (
	"errors"
	"fmt"
	"time"
)

// A notification trigger (<prefix>.jobs.<pool>.<instance>.notified) is a
// hint from the internet-facing receiver, which knows no instance: anyone
// holding a pool's notification key can mint one for any instance name. A
// hint for an instance that does not exist is dropped before it costs
// anything: no lock, no ledger key, no result, no failure record; it is
// acked and counted (Stats.Dropped, m365_jobs_total{outcome="dropped"}).

// errDropped: a notification trigger for an instance this pool does not
// have; acked without a result.
var errDropped = errors.New("notification trigger for an unknown instance")

// checkHint drops a notification trigger whose instance does not exist in
// the worker's pool. Other jobs pass.
func (w *Worker) checkHint(d *delivery) error {
	if d.addrErr != nil || !d.addr.Notified {
		return nil
	}
	_, err := w.instances.Lookup(d.ctx, w.cfg.Pool, d.addr.Instance)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrInstanceNotFound):
		return errDropped
	default:
		return RetryAfter(2*time.Second, err)
	}
}

// checkSpacing gives a notification trigger back while the instance's
// last notification round started less than Config.NotifySpacing ago; it
// runs once the job holds the instance's exclusive lock, so the pool's
// workers agree. A trigger let through records its round's start.
func (w *Worker) checkSpacing(d *delivery) error {
	if w.cfg.NotifySpacing <= 0 || d.addrErr != nil || !d.addr.Notified || !d.admitted {
		return nil
	}
	last, err := d.scope.NotifiedRound(d.ctx)
	if err != nil {
		return RetryAfter(2*time.Second, fmt.Errorf("cannot read the last notification round: %w", err))
	}
	now := time.Now().UTC()
	if wait := w.cfg.NotifySpacing - now.Sub(last); wait > 0 {
		return RetryAfter(wait, fmt.Errorf("the last round a notification started ran %s ago; notification rounds are %s apart",
			now.Sub(last).Round(time.Second), w.cfg.NotifySpacing))
	}
	if err := d.scope.PutNotifiedRound(d.ctx, now); err != nil {
		return RetryAfter(2*time.Second, fmt.Errorf("cannot record the notification round: %w", err))
	}
	return nil
}

// drop acks a dropped trigger: nothing is stored for it.
func (w *Worker) drop(d *delivery) {
	d.log.Debug("worker: notification trigger for an unknown instance dropped")
	w.stats.Dropped.Add(1)
	w.observe(d, "dropped", 0)
	_ = d.msg.Ack()
}

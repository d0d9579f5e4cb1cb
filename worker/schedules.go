package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/tevyra/m365-worker/jobs"
)

// Schedules manages the server-side sync schedules: one message per instance
// on m365.schedules.<pool>.<instance>.sync carrying Nats-Schedule: @every
// <interval>, targeting the instance's sync subject. Ticks carry a TTL of one
// interval and roll each other up, so a slow sync or an outage coalesces
// ticks instead of piling them up.
type Schedules struct {
	js   jetstream.JetStream
	topo Topology
}

// NewSchedules returns the schedule manager of a deployment.
func NewSchedules(js jetstream.JetStream, t Topology) *Schedules {
	return &Schedules{js: js, topo: t.withDefaults()}
}

// scheduleJobID is the envelope id of an instance's ticks; each tick's job
// id adds its stream sequence.
func scheduleJobID(instance string) string { return "scheduled-sync-" + instance }

// Set creates or replaces an instance's schedule.
func (s *Schedules) Set(ctx context.Context, in Instance) error {
	in = in.WithDefaults()
	every := time.Duration(in.SyncInterval)
	env, _ := json.Marshal(jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: scheduleJobID(in.ID), Instance: in.ID, Action: jobs.ActionSync, RequestedBy: "schedule"})
	m := nats.NewMsg(s.topo.Subjects.Schedule(in.Pool, in.ID))
	m.Data = env
	ttl := max(every, time.Second)
	_, err := s.js.PublishMsg(ctx, m,
		jetstream.WithScheduleEvery(every),
		jetstream.WithScheduleTarget(s.topo.Subjects.SyncJob(in.Pool, in.ID)),
		jetstream.WithScheduleTTL(ttl),
		jetstream.WithScheduleRollup(),
	)
	if err != nil {
		return fmt.Errorf("set the sync schedule of %s: %w", in.ID, err)
	}
	return nil
}

// Remove deletes an instance's schedule in a pool.
func (s *Schedules) Remove(ctx context.Context, pool, instance string) error {
	st, err := s.js.Stream(ctx, s.topo.JobsStream())
	if err != nil {
		return err
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(s.topo.Subjects.Schedule(pool, instance))); err != nil {
		return fmt.Errorf("remove the sync schedule of %s: %w", instance, err)
	}
	return nil
}

// Next returns when an instance's schedule next fires (zero if none).
func (s *Schedules) Next(ctx context.Context, pool, instance string) (time.Time, error) {
	st, err := s.js.Stream(ctx, s.topo.JobsStream())
	if err != nil {
		return time.Time{}, err
	}
	m, err := st.GetLastMsgForSubject(ctx, s.topo.Subjects.Schedule(pool, instance))
	if err != nil {
		return time.Time{}, nil
	}
	if v := m.Header.Get("Nats-Schedule-Next"); v != "" {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return t, nil
		}
	}
	// "@every d" ticks at the schedule's time plus whole intervals.
	every, err := time.ParseDuration(strings.TrimPrefix(m.Header.Get("Nats-Schedule"), "@every "))
	if err != nil || every <= 0 {
		return time.Time{}, nil
	}
	return nextTick(m.Time, every, time.Now()), nil
}

// nextTick is the first start+k·every (k ≥ 1) after now.
func nextTick(start time.Time, every time.Duration, now time.Time) time.Time {
	if now.Before(start) {
		return start.Add(every)
	}
	k := now.Sub(start)/every + 1
	return start.Add(k * every)
}

// RequestSync publishes an on-demand sync job for an instance and returns
// its job id. full forces a full round.
func RequestSync(ctx context.Context, js jetstream.JetStream, subjects jobs.Subjects, pool, instance string, full bool) (string, error) {
	id := "sync-" + instance + "-" + nuid.Next()
	params, _ := json.Marshal(jobs.SyncParams{Full: full})
	j := jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: id, Instance: instance, Action: jobs.ActionSync, Params: params, RequestedBy: "on-demand"}
	b, _ := json.Marshal(j)
	if _, err := js.Publish(ctx, subjects.SyncJob(pool, instance), b); err != nil {
		return "", fmt.Errorf("request a sync of %s: %w", instance, err)
	}
	return id, nil
}

package worker_test

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// Finding 3: a notification trigger is a hint. One for an instance that
// does not exist (a pool-key holder can mint any instance's clientState) is
// dropped and counted: no result, no failure record, no key in the state
// bucket, and the handler never runs.
func TestUnknownInstanceTriggerIsDropped(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	var ran atomic.Int64
	reg := worker.Registry{}
	reg[jobs.ActionSync] = worker.Handler{Exclusive: true, Func: func(ctx context.Context, j *worker.Job) (any, error) {
		ran.Add(1)
		if j.InstanceConfig == nil {
			return nil, worker.Permanent(jobs.CodeInstanceNotFound, "no configuration for instance "+j.Job.Instance)
		}
		return &jobs.SyncReport{Outcome: jobs.OutcomeSucceeded}, nil
	}}
	r := startWorker(t, srv, worker.Config{Pool: "default"}, reg)
	body, _ := json.Marshal(&jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: "notified-ghost", Instance: "ghost", Action: jobs.ActionSync, RequestedBy: "graph-notification"})
	for range 3 {
		if _, err := js.Publish(context.Background(), jobs.Subjects{}.NotifiedJob("default", "ghost"), body); err != nil {
			t.Fatal(err)
		}
	}
	workertest.Eventually(t, 60*time.Second, "the triggers settled", func() bool {
		return (ran.Load() > 0 || r.w.Stats().Dropped.Load() > 0) && consumerIdle(t, js)()
	})
	if n := ran.Load(); n != 0 {
		t.Errorf("the handler ran %d times for an unknown instance's trigger", n)
	}
	if msgs := workertest.Messages(t, js, "M365_RESULTS", "m365.results.ghost.>"); len(msgs) != 0 {
		t.Errorf("%d results for the unknown instance", len(msgs))
	}
	if fs := failures(t, js, "ghost"); len(fs) != 0 {
		t.Errorf("%d failure records for the unknown instance: %+v", len(fs), fs[0])
	}
	if msgs := workertest.Messages(t, js, "KV_m365_state", "$KV.m365_state.*.default.ghost.>"); len(msgs) != 0 {
		t.Errorf("%d state keys for the unknown instance, first %s", len(msgs), msgs[0].Subject())
	}
	if n := r.w.Stats().Dropped.Load(); n == 0 {
		t.Error("no trigger counted dropped")
	}
}

// Finding 4, the worker's side: rounds started by notification triggers
// are at least NotifySpacing apart across the pool, and a trigger that came
// during the spacing makes exactly one more round after it (the rollup
// keeps one waiting), not one per trigger.
func TestNotificationRoundsAreSpaced(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	inst, err := worker.OpenInstances(context.Background(), js, srv.Topology)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Put(context.Background(), worker.Instance{ID: "acme", TenantID: "00000000-0000-0000-0000-000000000001",
		ClientID: "00000000-0000-0000-0000-000000000002", ClientSecret: sealedForTest(t)}); err != nil {
		t.Fatal(err)
	}
	const spacing = 3 * time.Second
	var mu sync.Mutex
	var rounds []time.Time
	reg := worker.Registry{}
	reg[jobs.ActionSync] = worker.Handler{Exclusive: true, Func: func(ctx context.Context, j *worker.Job) (any, error) {
		mu.Lock()
		rounds = append(rounds, time.Now())
		mu.Unlock()
		return &jobs.SyncReport{Outcome: jobs.OutcomeSucceeded}, nil
	}}
	started := func() []time.Time { mu.Lock(); defer mu.Unlock(); return append([]time.Time(nil), rounds...) }
	for range 2 { // two workers: the spacing holds across the pool
		startWorker(t, srv, worker.Config{Pool: "default", NotifySpacing: spacing}, reg)
	}
	body, _ := json.Marshal(&jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: "notified-acme", Instance: "acme", Action: jobs.ActionSync, RequestedBy: "graph-notification"})
	trigger := func() {
		msg := nats.NewMsg(jobs.Subjects{}.NotifiedJob("default", "acme"))
		msg.Data = body
		msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		if _, err := js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	trigger()
	workertest.Eventually(t, 60*time.Second, "the first round", func() bool { return len(started()) == 1 })
	burst := time.Now()
	for range 5 {
		trigger()
	}
	burstEnd := time.Now()
	workertest.Eventually(t, 60*time.Second, "a round after the burst", func() bool {
		r := started()
		return r[len(r)-1].After(burstEnd) && consumerIdle(t, js)()
	})
	r := started()
	for i := 1; i < len(r); i++ {
		if gap := r[i].Sub(r[i-1]); gap < spacing {
			t.Errorf("rounds %d and %d started %s apart, want at least %s", i, i+1, gap, spacing)
		}
	}
	if max := 1 + int(burstEnd.Sub(burst)/spacing); len(r)-1 > max {
		t.Errorf("%d rounds after a burst of 5 triggers, want %d", len(r)-1, max)
	}
}

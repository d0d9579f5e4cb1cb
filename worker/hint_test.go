package worker_test

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

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

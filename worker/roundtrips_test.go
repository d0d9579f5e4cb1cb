package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// The JetStream round trips of a job's path, by stage, for a first delivery
// of an action with a target: the ledger is read once, under the target's
// lock, and settling stores the result, records the job as done and
// releases the lock without waiting for the ack.
func TestRoundTripsOfAJobsPath(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	reg := worker.Registry{}
	worker.Register(reg, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		return map[string]string{"user_id": p.User}, nil
	})
	r := startWorker(t, srv, worker.Config{}, reg)
	workertest.PublishJob(t, js, "default", disableJob("rt-1"))
	workertest.Eventually(t, 30*time.Second, "the job settled", consumerIdle(t, js))
	rt := r.w.RoundTrips()
	want := map[string]int64{"ledger": 0, "ledger again": 1, "handle": 0, "settle": 3}
	for stage, n := range want {
		if rt[stage] != n {
			t.Errorf("stage %q made %d round trips, want %d (all: %v)", stage, rt[stage], n, rt)
		}
	}
	// admit: the target's lock, and the consumer's ack floor when the
	// worker has none fresh (the order check).
	if rt["admit"] < 1 || rt["admit"] > 2 {
		t.Errorf("admit made %d round trips, want 1 or 2 (all: %v)", rt["admit"], rt)
	}
}

// A done job published again whose first delivery fails before it reaches
// its target's lock (here: a pool whose consumer allows so few deliveries
// that every job fails at once) still reads the ledger before storing a
// result: it is acked as a duplicate, not given a second result.
func TestDoneJobFailingBeforeItsLockStoresNoSecondResult(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	reg := worker.Registry{}
	worker.Register(reg, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		return map[string]string{"user_id": p.User}, nil
	})
	r := startWorker(t, srv, worker.Config{MaxDeliver: 2}, reg)
	workertest.PublishJob(t, js, "default", disableJob("early"))
	workertest.Eventually(t, 30*time.Second, "the first copy settled", consumerIdle(t, js))
	if res := results(t, js, "acme"); len(res) != 1 || res[0].Error == nil || res[0].Error.Code != jobs.CodeAttemptsExhausted {
		t.Fatalf("first copy: results %+v", res)
	}
	workertest.PublishJob(t, js, "default", disableJob("early"))
	workertest.Eventually(t, 30*time.Second, "the second copy acked as a duplicate", func() bool { return r.w.Stats().Skipped.Load() == 1 })
	workertest.Eventually(t, 30*time.Second, "the consumer idle", consumerIdle(t, js))
	if res := results(t, js, "acme"); len(res) != 1 {
		t.Fatalf("%d results for one job id, want 1", len(res))
	}
}

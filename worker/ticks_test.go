package worker_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// A tick no worker serves in time is replaced by the next one (rollup) or
// expires, and the server keeps no trace of it. Here no worker runs for a
// while: when one does again, the ticks fired meanwhile are reported as one
// ticks_missed sync report, so every tick the schedule fired is accounted
// for, served or missed, none twice.
func TestMissedTicksAreReported(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	reg := worker.Registry{}
	reg[jobs.ActionSync] = worker.Handler{Exclusive: true, Func: func(ctx context.Context, j *worker.Job) (any, error) {
		return &jobs.SyncReport{Outcome: jobs.OutcomeSucceeded}, nil
	}}
	in, err := worker.OpenInstances(ctx, js, srv.Topology)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Put(ctx, worker.Instance{ID: "acme", TenantID: "6e7b768e-07e2-4810-8459-485f84f8f204", ClientID: "1c4a6a0b-5f6d-4bb8-9f1e-2f7f0f6e4d11", ClientSecret: sealedForTest(t), SyncInterval: worker.Duration(time.Second)}); err != nil {
		t.Fatal(err)
	}
	reports := func() []jobs.SyncReport {
		return workertest.Decode[jobs.SyncReport](t, workertest.Messages(t, js, "M365_RESULTS", "m365.results.acme.syncs"))
	}
	served := func() int {
		n := 0
		for _, r := range reports() {
			if r.Error == nil || r.Error.Code != jobs.CodeTicksMissed {
				n++
			}
		}
		return n
	}

	first := startWorker(t, srv, worker.Config{ID: "first"}, reg)
	workertest.Eventually(t, 60*time.Second, "two ticks served", func() bool { return served() >= 2 })
	first.stop(t)
	before := served()
	sched := worker.NewSchedules(js, srv.Topology)
	t0, err := sched.Next(ctx, "default", "acme")
	if err != nil {
		t.Fatal(err)
	}
	workertest.Eventually(t, 60*time.Second, "four ticks fired with no worker", func() bool {
		next, err := sched.Next(ctx, "default", "acme")
		return err == nil && next.Sub(t0) >= 4*time.Second
	})
	startWorker(t, srv, worker.Config{ID: "second"}, reg)
	workertest.Eventually(t, 60*time.Second, "a ticks_missed report and a tick served after it", func() bool {
		missed := false
		for _, r := range reports() {
			missed = missed || (r.Error != nil && r.Error.Code == jobs.CodeTicksMissed)
		}
		return missed && served() >= before+2
	})

	// Every tick from the first served to the last is a served report or
	// counted in a ticks_missed one.
	var firstAt, lastAt time.Time
	accounted := 0
	for _, r := range reports() {
		if r.Error != nil && r.Error.Code == jobs.CodeTicksMissed {
			if r.MissedTicks < 2 || r.Outcome != jobs.OutcomeSkipped || r.Trigger != jobs.TriggerSchedule {
				t.Errorf("missed-ticks report %+v: at least 3 ticks fired with no worker (the last of them served)", r)
			}
			accounted += r.MissedTicks
			continue
		}
		accounted++
	}
	for _, r := range reports() {
		if r.Error != nil && r.Error.Code == jobs.CodeTicksMissed {
			continue
		}
		if firstAt.IsZero() {
			firstAt = r.StartedAt
		}
		lastAt = r.StartedAt
	}
	fired := int(math.Round(lastAt.Sub(firstAt).Seconds())) + 1
	t.Logf("%d ticks fired from the first served to the last, %d accounted for", fired, accounted)
	if d := accounted - fired; d < -1 || d > 1 {
		t.Errorf("%d ticks fired between the first and the last served (%s), %d accounted for (served or missed)", fired, lastAt.Sub(firstAt), accounted)
	}
}

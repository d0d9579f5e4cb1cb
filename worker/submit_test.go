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

// A JetStream API request that no server answers (a stream leader lost in a
// node's failover) costs WaitResult one attempt, not the caller's whole
// wait. CI saw `submit --wait`'s reader wait out its minute after a cluster
// node went down.
func TestWaitResultSurvivesALostAPIRequest(t *testing.T) {
	srv := workertest.Start(t)
	nc, js := srv.Connect(t)
	res := jobs.ActionResult{SchemaVersion: 1, JobID: "job-1", Instance: "acme", Action: jobs.ActionDisableUser, Status: jobs.StatusSucceeded}
	b, _ := json.Marshal(res)
	if _, err := js.Publish(context.Background(), jobs.Subjects{}.Results("acme", jobs.ResultActions), b); err != nil {
		t.Fatal(err)
	}
	// The client reaches JetStream through a relay whose first request is
	// lost; the others go on to the server, which answers the client.
	var lost atomic.Int64
	lossy := workertest.Lossy(t, nc, func(string) bool { return lost.Add(1) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := worker.WaitResult(ctx, lossy, worker.Topology{}, "acme", jobs.ActionDisableUser, "job-1")
	if err != nil {
		t.Fatalf("after one lost request: %v", err)
	}
	if got.JobID != "job-1" || got.Status != jobs.StatusSucceeded {
		t.Fatalf("result %+v", got)
	}
	if lost.Load() < 2 {
		t.Fatalf("%d API requests: the lost one was not asked again", lost.Load())
	}
}

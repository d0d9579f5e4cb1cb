package handlers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// A worker without the opt-in (the default of run --demo=false and of
// worker) refuses an instance record that points its token requests and
// Graph calls at servers of its own choosing, before asking for a token.
func TestEndpointOverridesRefusedWithoutTheOptIn(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true})
	ctx, cancel := context.WithCancel(context.Background())
	_, js := e.srv.Connect(t)
	graph := graphclient.NewPool(graphclient.PoolConfig{})
	syncer, err := handlers.NewSyncer(ctx, js, handlers.SyncConfig{Topology: e.srv.Topology, Graph: graph})
	if err != nil {
		t.Fatal(err)
	}
	actions, err := handlers.NewActions(ctx, js, handlers.ActionsConfig{Topology: e.srv.Topology, Graph: graph})
	if err != nil {
		t.Fatal(err)
	}
	reg := worker.Registry{}
	syncer.Register(reg)
	actions.Register(reg)
	w, err := worker.New(ctx, js, e.srv.Topology, worker.Config{PoolKey: e.poolKey, PollWait: 200 * time.Millisecond, ManageConsumer: true}, reg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	e.addInstance("acme", 0, time.Hour) // authority, graph_root and ca_pem: the simulator's
	tokens := e.sim.Tokens.Load()
	check := func(what string, je *jobs.Error) {
		t.Helper()
		if je == nil || je.Code != handlers.CodeEndpointOverrideRefused || !strings.Contains(je.Message, "authority, graph_root, ca_pem") ||
			!strings.Contains(je.Message, "--allow-endpoint-overrides") {
			t.Fatalf("%s: got %+v, want %s naming the fields and the flag", what, je, handlers.CodeEndpointOverrideRefused)
		}
	}
	r := e.run("acme", jobs.ActionDeleteUser, map[string]any{"user": "adele@contoso.com"}, false)
	if r.Status != jobs.StatusFailed {
		t.Fatalf("delete_user: %+v", r)
	}
	check("delete_user", r.Error)

	id, err := worker.RequestSync(context.Background(), e.js, jobs.Subjects{}, "default", "acme", false)
	if err != nil {
		t.Fatal(err)
	}
	var rep jobs.SyncReport
	workertest.Eventually(t, 60*time.Second, "the sync report", func() bool {
		for _, r := range e.reports("acme") {
			if r.JobID == id {
				rep = r
				return true
			}
		}
		return false
	})
	if rep.Outcome != jobs.OutcomeFailed {
		t.Fatalf("sync: %+v", rep)
	}
	check("sync", rep.Error)
	if n := e.sim.Tokens.Load() - tokens; n != 0 {
		t.Errorf("%d token requests for a refused instance", n)
	}
}

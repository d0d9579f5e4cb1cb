package handlers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// A client secret rotated with instance update while a burst of 200
// actions runs: no job fails, the workers move to the new secret (the old
// one is removed from the app mid-burst, and tokens live seconds, so a
// worker still using it would fail), and the old sealed value is gone from
// the instances bucket.
func TestSecretRotationDuringABurst(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 220, Groups: 2, NoThrottling: true, TokenLifetime: 3 * time.Second})
	e.startWorker(worker.Config{})
	in := e.addInstance("acme", 0, time.Hour)
	cred := e.sim.Credentials()[0]
	snap, _ := e.sim.Export(cred.TenantID)
	const burst = 200
	ids := make([]string, 0, burst)
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			id := fmt.Sprintf("rot-%d-%d", i, time.Now().UnixNano())
			ids = append(ids, id)
			e.publish("acme", jobs.ActionUpdateUser, id, jobs.UpdateUserParams{UserRef: jobs.UserRef{User: snap.Users[i].ID}, JobTitle: ptr(fmt.Sprintf("Rotated %d", i))}, false)
		}
	}
	publish(0, burst/2)

	// The new secret is added to the app (Entra allows both for a while),
	// the record updated, and the old secret removed once workers have it.
	const newSecret = "n3w~Secret.Value-rotated-0123456789"
	_ = e.sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error {
		app := a.App(cred.ClientID)
		app.MoreSecrets = []graphsim.AppSecret{{Value: newSecret}}
		return nil
	})
	store, err := worker.OpenInstances(context.Background(), e.js, e.srv.Topology)
	if err != nil {
		t.Fatal(err)
	}
	old := in.ClientSecret.Box
	pub, _ := e.poolKey.PublicKey()
	in.ClientSecret, _ = jobs.SealFor([]byte(newSecret), pub, in.SecretBinding(worker.FieldClientSecret))
	if _, _, err := store.Apply(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	publish(burst/2, burst)
	// Once a job published after the update has succeeded, the workers
	// use the new record: the old secret goes.
	workertest.Eventually(t, 90*time.Second, "a job after the update", func() bool { return e.resultOf("acme", ids[burst/2]) != nil })
	_ = e.sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error {
		app := a.App(cred.ClientID)
		app.Secret, app.MoreSecrets = newSecret, nil
		return nil
	})
	for _, id := range ids {
		r := e.result("acme", id)
		if r.Status != jobs.StatusSucceeded {
			t.Errorf("%s: %s %+v", id, r.Status, r.Error)
		}
	}
	// A round after the burst still works: it takes a token with the new
	// secret only (the old one is gone from the app).
	e.syncNow("acme", false)

	// The old sealed value is nowhere in the bucket's stream.
	for _, m := range workertest.Messages(t, e.js, "KV_"+e.srv.Topology.InstancesBucket(), ">") {
		if strings.Contains(string(m.Data()), old) {
			t.Fatalf("the old sealed secret is still in the instances bucket (%s)", m.Subject())
		}
	}
}

// resultOf is the result of job id, or nil while there is none.
func (e *env) resultOf(instance, id string) *jobs.ActionResult {
	for _, r := range workertest.Decode[jobs.ActionResult](e.t, workertest.Messages(e.t, e.js, "M365_RESULTS", "m365.results."+instance+".actions")) {
		if r.JobID == id {
			return &r
		}
	}
	return nil
}

package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

func TestInstancesStoreAndWatch(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	store, err := worker.OpenInstances(ctx, js, srv.Topology)
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := nkeys.CreateCurveKeys()
	pub, _ := kp.PublicKey()
	secret, _ := jobs.Seal([]byte("client-secret-value"), pub)

	// Validation names every bad field.
	_, err = store.Put(ctx, worker.Instance{ID: "bad id", TenantID: "nope", ClientID: "x", Cloud: "mars", HTTPProxy: "ftp://x", Authority: "http://plain"})
	for _, f := range []string{"id", "tenant_id", "client_id", "client_secret", "cloud", "http_proxy", "authority"} {
		if err == nil || !strings.Contains(err.Error(), f+" ") {
			t.Errorf("validation error misses %s: %v", f, err)
		}
	}

	var mu sync.Mutex
	seen := map[string]*worker.Instance{}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	other, _ := worker.OpenInstances(ctx, js, srv.Topology)
	if err := other.Watch(wctx, func(id string, in *worker.Instance) { mu.Lock(); seen[id] = in; mu.Unlock() }); err != nil {
		t.Fatal(err)
	}
	in, err := store.Put(ctx, worker.Instance{ID: "acme", TenantID: "6e7b768e-07e2-4810-8459-485f84f8f204", ClientID: "1c4a6a0b-5f6d-4bb8-9f1e-2f7f0f6e4d11", ClientSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	if in.Pool != "default" || in.Cloud != "global" || time.Duration(in.SyncInterval) != 5*time.Minute {
		t.Errorf("defaults: %+v", in)
	}
	workertest.Eventually(t, 30*time.Second, "the watcher to see acme", func() bool { mu.Lock(); defer mu.Unlock(); return seen["acme"] != nil })
	got, err := other.Lookup(ctx, "default", "acme")
	if err != nil || got.TenantID != in.TenantID {
		t.Fatalf("lookup: %+v %v", got, err)
	}
	plain, err := got.ClientSecret.Open(kp)
	if err != nil || string(plain) != "client-secret-value" {
		t.Fatalf("sealed secret round trip: %v", err)
	}
	// The bucket holds the secret sealed, never in clear.
	e, err := js.KeyValue(ctx, "m365_instances")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := e.Get(ctx, "default.acme")
	if strings.Contains(string(raw.Value()), "client-secret-value") {
		t.Fatal("the secret sits in clear in the bucket")
	}
	list, err := store.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "acme" {
		t.Fatalf("list: %+v %v", list, err)
	}
	if err := store.Delete(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	workertest.Eventually(t, 30*time.Second, "the watcher to see the deletion", func() bool {
		mu.Lock()
		defer mu.Unlock()
		v, ok := seen["acme"]
		return ok && v == nil
	})
	if _, err := other.Lookup(ctx, "default", "acme"); !errors.Is(err, worker.ErrInstanceNotFound) {
		t.Errorf("lookup after delete: %v", err)
	}
}

func TestSetupIsIdempotentAndConcurrent(t *testing.T) {
	srv := workertest.Start(t)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, js := srv.Connect(t)
			errs <- worker.Setup(context.Background(), js, srv.Topology)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent setup: %v", err)
		}
	}
	// An upgrade that changes a setting updates the stream in place; a
	// state bucket set up by an earlier version (one value a key) keeps
	// state.History values a key after it.
	_, js := srv.Connect(t)
	if _, err := js.UpdateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "m365_state", History: 1, LimitMarkerTTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := worker.Setup(context.Background(), js, worker.Topology{ResultsMaxAge: 48 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	st, _ := js.Stream(context.Background(), "M365_RESULTS")
	info, _ := st.Info(context.Background())
	if info.Config.MaxAge != 48*time.Hour {
		t.Errorf("results max age %s after upgrade", info.Config.MaxAge)
	}
	kv, _ := js.KeyValue(context.Background(), "m365_state")
	if ks, err := kv.Status(context.Background()); err != nil {
		t.Error(err)
	} else if ks.History() != state.History {
		t.Errorf("state bucket keeps %d values a key after the upgrade, want %d", ks.History(), state.History)
	}
}

func TestShutdownDeadlineGivesJobsBack(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	started := make(chan struct{}, 1)
	var calls int
	var mu sync.Mutex
	reg := worker.Registry{}
	worker.Register(reg, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 1 {
			started <- struct{}{}
			<-ctx.Done() // a handler slower than the shutdown deadline
			return nil, ctx.Err()
		}
		return "done", nil
	})
	slow := startWorker(t, srv, worker.Config{ShutdownTimeout: 200 * time.Millisecond}, reg)
	workertest.PublishJob(t, js, "default", disableJob("slow-1"))
	<-started
	slow.stop(t)
	// Given back at once (not after the ack wait), without using an attempt.
	startWorker(t, srv, worker.Config{}, reg)
	workertest.Eventually(t, 30*time.Second, "the result", func() bool { return len(results(t, js, "acme")) == 1 })
	res := results(t, js, "acme")[0]
	if res.Status != jobs.StatusSucceeded || res.Attempts != 1 {
		t.Errorf("result after a give-back: %+v", res)
	}
}

func TestScheduleNextTick(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	store, _ := worker.OpenInstances(context.Background(), js, srv.Topology)
	kp, _ := nkeys.CreateCurveKeys()
	pub, _ := kp.PublicKey()
	secret, _ := jobs.Seal([]byte("s"), pub)
	if _, err := store.Put(context.Background(), worker.Instance{ID: "acme", TenantID: "6e7b768e-07e2-4810-8459-485f84f8f204", ClientID: "1c4a6a0b-5f6d-4bb8-9f1e-2f7f0f6e4d11",
		ClientSecret: secret, SyncInterval: worker.Duration(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	next, err := worker.NewSchedules(js, srv.Topology).Next(context.Background(), "default", "acme")
	if err != nil {
		t.Fatal(err)
	}
	if until := time.Until(next); until < 59*time.Minute || until > time.Hour {
		t.Errorf("next tick in %s, want about an hour", until)
	}
}

// Instance records stored before pools were part of their keys (under the
// bare id) move to <pool>.<id> when setup runs, with their sync state.
func TestSetupMigratesLegacyInstances(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	kp, _ := nkeys.CreateCurveKeys()
	pub, _ := kp.PublicKey()
	secret, _ := jobs.Seal([]byte("s"), pub)
	legacy, _ := json.Marshal(worker.Instance{ID: "acme", Pool: "site-a", TenantID: "6e7b768e-07e2-4810-8459-485f84f8f204",
		ClientID: "1c4a6a0b-5f6d-4bb8-9f1e-2f7f0f6e4d11", ClientSecret: secret})
	ikv, _ := js.KeyValue(ctx, "m365_instances")
	skv, _ := js.KeyValue(ctx, "m365_state")
	if _, err := ikv.Put(ctx, "acme", legacy); err != nil {
		t.Fatal(err)
	}
	if _, err := skv.Put(ctx, "sync.acme", []byte(`{"user_delta_link":"https://graph.microsoft.com/v1.0/users/delta?$deltatoken=x"}`)); err != nil {
		t.Fatal(err)
	}
	if err := worker.Setup(ctx, js, srv.Topology); err != nil {
		t.Fatal(err)
	}
	if _, err := ikv.Get(ctx, "acme"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("the legacy record is still there: %v", err)
	}
	store, _ := worker.OpenInstances(ctx, js, srv.Topology)
	in, err := store.Lookup(ctx, "site-a", "acme")
	if err != nil || in.ClientID != "1c4a6a0b-5f6d-4bb8-9f1e-2f7f0f6e4d11" {
		t.Fatalf("migrated instance: %+v %v", in, err)
	}
	if _, err := skv.Get(ctx, "sync.site-a.acme"); err != nil {
		t.Errorf("the sync state did not move: %v", err)
	}
}

// A worker watches its own pool's instances only, and hears of a removal
// (so its Graph pool can forget the instance's client and secret).
func TestWorkerHearsOfItsPoolsInstances(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	var mu sync.Mutex
	seen := map[string][]bool{} // id → present at each change
	startWorker(t, srv, worker.Config{OnInstanceChange: func(id string, in *worker.Instance) {
		mu.Lock()
		seen[id] = append(seen[id], in != nil)
		mu.Unlock()
	}}, worker.Registry{})
	store, _ := worker.OpenInstances(context.Background(), js, srv.Topology)
	for _, in := range []worker.Instance{{ID: "acme"}, {ID: "elsewhere", Pool: "site-a"}} {
		in.TenantID, in.ClientID, in.ClientSecret = "6e7b768e-07e2-4810-8459-485f84f8f204", "1c4a6a0b-5f6d-4bb8-9f1e-2f7f0f6e4d11", sealedForTest(t)
		if _, err := store.Put(context.Background(), in); err != nil {
			t.Fatal(err)
		}
	}
	// The worker starts watching in its own time: it hears of acme (as an
	// initial value or a change) before acme is removed.
	workertest.Eventually(t, 30*time.Second, "acme", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen["acme"]) == 1
	})
	if err := store.Delete(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	workertest.Eventually(t, 30*time.Second, "the removal", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen["acme"]) == 2 && seen["acme"][0] && !seen["acme"][1]
	})
	mu.Lock()
	defer mu.Unlock()
	if len(seen["elsewhere"]) != 0 {
		t.Errorf("pool default's worker saw site-a's instance: %v", seen)
	}
}

// An instance added, or whose credentials or tenant change, is synced at
// once (full when the tenant changed); an unchanged save is not.
func TestApplyAsksForASyncAtOnce(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	store, _ := worker.OpenInstances(ctx, js, srv.Topology)
	in := worker.Instance{ID: "acme", TenantID: "6e7b768e-07e2-4810-8459-485f84f8f204", ClientID: "1c4a6a0b-5f6d-4bb8-9f1e-2f7f0f6e4d11", ClientSecret: sealedForTest(t)}
	full := func(id string) bool {
		for _, m := range workertest.Messages(t, js, "M365_JOBS", "m365.jobs.default.acme.sync") {
			var j jobs.Job
			_ = json.Unmarshal(m.Data(), &j)
			if j.ID == id {
				return strings.Contains(string(j.Params), `"full":true`)
			}
		}
		t.Fatalf("no sync job %s", id)
		return false
	}
	saved, id, err := store.Apply(ctx, in)
	if err != nil || id == "" || !full(id) {
		t.Fatalf("added: %q %v", id, err)
	}
	if _, id, _ := store.Apply(ctx, saved); id != "" {
		t.Errorf("an unchanged save asked for sync %s", id)
	}
	saved.ClientSecret = sealedForTest(t)
	if _, id, _ := store.Apply(ctx, saved); id == "" || full(id) {
		t.Errorf("a new secret: sync %q (want an incremental one)", id)
	}
	saved.TenantID = "00000000-0000-0000-0000-000000000009"
	if _, id, _ := store.Apply(ctx, saved); id == "" || !full(id) {
		t.Errorf("a new tenant: sync %q (want a full one)", id)
	}
}

// A sync asked for right after an instance changed (Instances.Apply: new
// credentials, tenant or cloud) runs on the change, not on the worker's
// watched copy from before it.
func TestSyncAskedAfterAChangeSeesIt(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	seen := make(chan string, 1)
	reg := worker.Registry{}
	reg[jobs.ActionSync] = worker.Handler{Exclusive: true, Func: func(ctx context.Context, j *worker.Job) (any, error) {
		if j.InstanceConfig != nil {
			seen <- j.InstanceConfig.TenantID
		}
		return &jobs.SyncReport{Outcome: jobs.OutcomeSucceeded}, nil
	}}
	store, err := worker.OpenInstances(ctx, js, srv.Topology)
	if err != nil {
		t.Fatal(err)
	}
	in := worker.Instance{ID: "acme", TenantID: "tenant-0.example.com", ClientID: "1c4a6a0b-5f6d-4bb8-9f1e-2f7f0f6e4d11", ClientSecret: sealedForTest(t)}
	if _, err := store.Put(ctx, in); err != nil {
		t.Fatal(err)
	}
	stateKV, err := js.KeyValue(ctx, "m365_state")
	if err != nil {
		t.Fatal(err)
	}
	startWorker(t, srv, worker.Config{}, reg)
	for i := 1; i <= 30; i++ {
		in.TenantID = fmt.Sprintf("tenant-%d.example.com", i)
		if _, _, err := store.Apply(ctx, in); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-seen:
			if got != in.TenantID {
				t.Fatalf("change %d: the sync asked for after it ran on tenant %s, not %s", i, got, in.TenantID)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("change %d: no sync ran", i)
		}
		// The round's lock released, so that the next sync does not wait
		// for it.
		workertest.Eventually(t, 60*time.Second, "the round's lock released", func() bool {
			_, err := stateKV.Get(ctx, "lock.default.acme.sync")
			return errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)
		})
	}
}

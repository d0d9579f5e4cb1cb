package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/graphsim/graphsimtest"
	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// env is a JetStream server, a Graph simulator, and workers with the sync
// handler, the way cmd wires them.
type env struct {
	t       testing.TB
	srv     *workertest.Server
	js      jetstream.JetStream
	sim     *graphsim.Server
	poolKey nkeys.KeyPair
	store   *state.Store
	stops   []func()
	reg     worker.Registry
	// consistencyWait and logger configure the next startWorker.
	consistencyWait time.Duration
	logger          *slog.Logger
	graphConfig     graphclient.PoolConfig
	roundTimeout    time.Duration
	notify          handlers.NotifyConfig
	groupSegments   int              // SyncConfig.GroupSegmentsFrom
	syncer          *handlers.Syncer // the last startWorker's
}

func newEnv(t testing.TB, o graphsim.Options) *env {
	return newEnvOn(t, graphsimtest.Start(t, o))
}

// newEnvOn is an environment of its own (JetStream, state, pool key) on a
// simulator another environment may share.
func newEnvOn(t testing.TB, sim *graphsim.Server) *env {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	kp, _ := nkeys.CreateCurveKeys()
	store, err := worker.OpenState(context.Background(), js, srv.Topology)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, js: js, sim: sim, poolKey: kp, store: store}
	t.Cleanup(func() {
		for _, s := range e.stops {
			s()
		}
	})
	return e
}

func (e *env) startWorker(cfg worker.Config) *worker.Worker {
	_, js := e.srv.Connect(e.t)
	ctx, cancel := context.WithCancel(context.Background())
	// As the binary wires it: one Graph pool per worker for both kinds of
	// job, sharing each tenant's budget with the other live workers.
	gc := e.graphConfig
	gc.Workers = worker.WatchLiveWorkers(ctx, js, e.srv.Topology, "default")
	gc.AllowEndpointOverrides = true // the instances point at the simulator
	graph := graphclient.NewPool(gc)
	syncer, err := handlers.NewSyncer(context.Background(), js, handlers.SyncConfig{Topology: e.srv.Topology, Graph: graph, RoundTimeout: e.roundTimeout, Notify: e.notify, GroupSegmentsFrom: e.groupSegments})
	if err != nil {
		e.t.Fatal(err)
	}
	reg := worker.Registry{}
	syncer.Register(reg)
	e.syncer = syncer
	actions, err := handlers.NewActions(context.Background(), js, handlers.ActionsConfig{Topology: e.srv.Topology, Graph: graph, ConsistencyWait: e.consistencyWait, Logger: e.logger})
	if err != nil {
		e.t.Fatal(err)
	}
	actions.Register(reg)
	e.reg = reg
	cfg.PoolKey = e.poolKey
	cfg.Logger = e.logger
	if cfg.OnInstanceRemoved == nil && e.notify.BaseURL != "" {
		// As the binary does: a removed instance's subscriptions go with it.
		cfg.OnInstanceRemoved = func(prev *worker.Instance) {
			if err := syncer.InstanceRemoved(context.Background(), "default", prev, worker.OpenWith([]nkeys.KeyPair{e.poolKey})); err != nil {
				e.t.Logf("unsubscribe %s: %v", prev.ID, err)
			}
		}
	}
	cfg.ManageConsumer = true // the test is the operator too
	if cfg.PollWait == 0 {
		cfg.PollWait = 200 * time.Millisecond
	}
	w, err := worker.New(context.Background(), js, e.srv.Topology, cfg, reg)
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	e.stops = append(e.stops, func() { cancel(); <-done })
	return w
}

// addInstance configures a simulator tenant as an instance.
func (e *env) addInstance(id string, tenant int, interval time.Duration) worker.Instance {
	cred := e.sim.Credentials()[tenant]
	pub, _ := e.poolKey.PublicKey()
	secret, err := jobs.SealFor([]byte(cred.ClientSecret), pub, jobs.InstanceBinding(id, worker.FieldClientSecret, cred.TenantID, cred.ClientID))
	if err != nil {
		e.t.Fatal(err)
	}
	store, err := worker.OpenInstances(context.Background(), e.js, e.srv.Topology)
	if err != nil {
		e.t.Fatal(err)
	}
	in, err := store.Put(context.Background(), worker.Instance{ID: id, TenantID: cred.TenantID, ClientID: cred.ClientID, ClientSecret: secret,
		Authority: cred.Authority, GraphRoot: cred.GraphRoot, CAPEM: string(e.sim.CAPEM()), SyncInterval: worker.Duration(interval)})
	if err != nil {
		e.t.Fatal(err)
	}
	return in
}

func (e *env) reports(instance string) []jobs.SyncReport {
	return workertest.Decode[jobs.SyncReport](e.t, workertest.Messages(e.t, e.js, "M365_RESULTS", "m365.results."+instance+".syncs"))
}

// syncNow requests a sync and waits for its report.
func (e *env) syncNow(instance string, full bool) jobs.SyncReport {
	e.t.Helper()
	id, err := worker.RequestSync(context.Background(), e.js, jobs.Subjects{}, "default", instance, full)
	if err != nil {
		e.t.Fatal(err)
	}
	var rep jobs.SyncReport
	workertest.Eventually(e.t, 120*time.Second, "sync report "+id, func() bool {
		for _, r := range e.reports(instance) {
			if r.JobID == id {
				rep = r
				return true
			}
		}
		return false
	})
	if rep.Outcome != jobs.OutcomeSucceeded {
		e.t.Fatalf("sync %s: %+v %+v", id, rep, rep.Error)
	}
	return rep
}

// replica is what a consumer of the asset deltas rebuilds.
type replica struct {
	users    map[string]jobs.UserAsset
	groups   map[string]jobs.GroupAsset
	licenses map[string]jobs.LicenseAsset
}

func (e *env) rebuild(instance string) *replica {
	r := &replica{users: map[string]jobs.UserAsset{}, groups: map[string]jobs.GroupAsset{}, licenses: map[string]jobs.LicenseAsset{}}
	for _, typ := range []string{jobs.AssetLicense, jobs.AssetUser, jobs.AssetGroup} {
		for _, d := range workertest.Decode[jobs.AssetDelta](e.t, workertest.Messages(e.t, e.js, "M365_RESULTS", "m365.results."+instance+".assets."+typ)) {
			for _, ch := range d.Changes {
				switch {
				case ch.Op == jobs.OpMembers:
					var more jobs.GroupMembers
					_ = json.Unmarshal(ch.Asset, &more)
					g := r.groups[ch.ID]
					g.Members = append(g.Members, more.Members...)
					r.groups[ch.ID] = g
				case ch.Op == jobs.OpDelete:
					delete(r.users, ch.ID)
					delete(r.groups, ch.ID)
					delete(r.licenses, ch.ID)
				case typ == jobs.AssetUser:
					var a jobs.UserAsset
					_ = json.Unmarshal(ch.Asset, &a)
					r.users[ch.ID] = a
				case typ == jobs.AssetGroup:
					var a jobs.GroupAsset
					_ = json.Unmarshal(ch.Asset, &a)
					r.groups[ch.ID] = a
				default:
					var a jobs.LicenseAsset
					_ = json.Unmarshal(ch.Asset, &a)
					r.licenses[ch.ID] = a
				}
			}
		}
	}
	return r
}

func (e *env) checkAgainstTruth(instance string, tenant int) {
	e.t.Helper()
	snap, err := e.sim.Export(e.sim.Credentials()[tenant].TenantID)
	if err != nil {
		e.t.Fatal(err)
	}
	e.checkRoundOrder(instance)
	r := e.rebuild(instance)
	if len(r.users) != len(snap.Users) || len(r.groups) != len(snap.Groups) || len(r.licenses) != len(snap.SKUs) {
		e.t.Fatalf("replica: %d users, %d groups, %d licences; truth %d, %d, %d", len(r.users), len(r.groups), len(r.licenses), len(snap.Users), len(snap.Groups), len(snap.SKUs))
	}
	for _, su := range snap.Users {
		u, ok := r.users[su.ID]
		if !ok || u.UserPrincipalName != su.UserPrincipalName || u.AccountEnabled != su.AccountEnabled || u.DisplayName != su.DisplayName ||
			str(u.JobTitle) != str(su.JobTitle) || len(u.AssignedLicenses) != len(su.AssignedLicenses) {
			e.t.Fatalf("user %s: replica %+v, truth %+v", su.ID, u, su)
		}
		for i, l := range su.AssignedLicenses {
			if u.AssignedLicenses[i].SkuID != l.SkuID || u.AssignedLicenses[i].SkuPartNumber != l.SkuPartNumber || u.AssignedLicenses[i].SkuPartNumber == "" {
				e.t.Fatalf("user %s licence %d: %+v, truth %+v", su.ID, i, u.AssignedLicenses[i], l)
			}
		}
	}
	for _, sg := range snap.Groups {
		g, ok := r.groups[sg.ID]
		if !ok || g.DisplayName != sg.DisplayName || str(g.Description) != str(sg.Description) || strings.Join(g.Members, ",") != strings.Join(sg.Members, ",") {
			e.t.Fatalf("group %s: replica has %d members, truth %d (%v)", sg.ID, len(g.Members), len(sg.Members), ok)
		}
	}
	for _, s := range snap.SKUs {
		l, ok := r.licenses[s.SkuID]
		if !ok || l.ConsumedUnits != s.Consumed || l.PrepaidUnits.Enabled != s.Enabled || l.AvailableUnits != s.Enabled-s.Consumed {
			e.t.Fatalf("licence %s: %+v, truth %+v", s.SkuPartNumber, l, s)
		}
	}
	// Indicators equal the counts of the ground truth.
	inds := workertest.Decode[jobs.Indicators](e.t, workertest.Messages(e.t, e.js, "M365_RESULTS", "m365.results."+instance+".indicators"))
	last := inds[len(inds)-1]
	want := jobs.Indicators{UsersTotal: len(snap.Users), GroupsTotal: len(snap.Groups)}
	for _, su := range snap.Users {
		if su.AccountEnabled {
			want.UsersEnabled++
		}
		if len(su.AssignedLicenses) > 0 {
			want.UsersLicensed++
		}
	}
	for _, s := range snap.SKUs {
		want.LicensesTotal += s.Enabled
		want.LicensesConsumed += s.Consumed
	}
	if last.UsersTotal != want.UsersTotal || last.UsersEnabled != want.UsersEnabled || last.UsersLicensed != want.UsersLicensed ||
		last.GroupsTotal != want.GroupsTotal || last.LicensesTotal != want.LicensesTotal || last.LicensesConsumed != want.LicensesConsumed {
		e.t.Fatalf("indicators %+v, truth %+v", last, want)
	}
}

// checkRoundOrder reads everything the instance's rounds published, in
// stream order, and checks the contract's order within each sync id:
// licences, then users, then groups (each type's batches numbered from 1,
// the last marked), then the indicators, then the report.
func (e *env) checkRoundOrder(instance string) {
	e.t.Helper()
	rank := map[string]int{jobs.AssetLicense: 1, jobs.AssetUser: 2, jobs.AssetGroup: 3}
	at := map[string]int{}      // sync id → rank reached
	batch := map[string]int{}   // sync id + type → last batch number
	closed := map[string]bool{} // sync id + type → last batch seen
	for _, m := range workertest.Messages(e.t, e.js, "M365_RESULTS", "m365.results."+instance+".>") {
		subj := m.Subject()
		switch {
		case strings.Contains(subj, ".assets."):
			var d jobs.AssetDelta
			_ = json.Unmarshal(m.Data(), &d)
			if strings.HasPrefix(d.SyncID, "action:") {
				continue // post-action refreshes stand alone
			}
			k := d.SyncID + "/" + d.Type
			if rank[d.Type] < at[d.SyncID] || closed[k] || d.Batch != batch[k]+1 {
				e.t.Fatalf("sync %s: %s batch %d (last %v) after rank %d, batch %d, closed %v", d.SyncID, d.Type, d.Batch, d.Last, at[d.SyncID], batch[k], closed[k])
			}
			at[d.SyncID], batch[k], closed[k] = rank[d.Type], d.Batch, d.Last
		case strings.HasSuffix(subj, ".indicators"):
			var ind jobs.Indicators
			_ = json.Unmarshal(m.Data(), &ind)
			for _, typ := range []string{jobs.AssetLicense, jobs.AssetUser, jobs.AssetGroup} {
				if !closed[ind.SyncID+"/"+typ] {
					e.t.Fatalf("sync %s: indicators before the last %s batch", ind.SyncID, typ)
				}
			}
			at[ind.SyncID] = 4
		case strings.HasSuffix(subj, ".syncs"):
			var rep jobs.SyncReport
			_ = json.Unmarshal(m.Data(), &rep)
			if rep.Outcome == jobs.OutcomeSucceeded && at[rep.SyncID] != 4 {
				e.t.Fatalf("sync %s: report before the indicators", rep.SyncID)
			}
		}
	}
}

func (e *env) rebuildFirstUser(instance string) string {
	ids := make([]string, 0)
	for id := range e.rebuild(instance).users {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids[0]
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func TestSyncRebuildsGroundTruth(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 600, Groups: 40, NoThrottling: true, DeltaDuplicateRate: 0.01})
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	rep := e.syncNow("acme", false)
	if rep.Mode != jobs.ModeFull || rep.Counts[jobs.AssetUser].Upserts != 600 || rep.GraphRequests == 0 || rep.ResourceUnits == 0 {
		t.Fatalf("first round: %+v", rep)
	}
	e.checkAgainstTruth("acme", 0)
	tenant := e.sim.Credentials()[0].TenantID
	for round := 1; round <= 4; round++ {
		_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error { a.RandomChanges(60, uint64(round)); return nil })
		rep := e.syncNow("acme", false)
		if rep.Mode != jobs.ModeIncremental {
			t.Fatalf("round %d mode %s", round, rep.Mode)
		}
		e.checkAgainstTruth("acme", 0)
	}
	// A forced reset (410): the round turns full and deletes what it no
	// longer sees.
	var gone string
	first := e.rebuildFirstUser("acme")
	_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error {
		a.ResetDelta()
		u := a.User(first)
		gone = u.ID
		a.DeleteUser(u)
		return a.Purge(u.ID)
	})
	rep = e.syncNow("acme", false)
	if rep.Mode != jobs.ModeFull {
		t.Fatalf("after a reset: mode %s", rep.Mode)
	}
	e.checkAgainstTruth("acme", 0)
	missing := false
	for _, d := range workertest.Decode[jobs.AssetDelta](t, workertest.Messages(t, e.js, "M365_RESULTS", "m365.results.acme.assets.m365_user")) {
		for _, ch := range d.Changes {
			if ch.ID == gone && ch.Op == jobs.OpDelete && ch.Reason == jobs.ReasonMissingAfterFullSync && d.SyncID == rep.SyncID {
				missing = true
			}
		}
	}
	if !missing {
		t.Errorf("the full round did not delete %s with reason missing_after_full_sync", gone)
	}
	// Quiet round: nothing to publish.
	rep = e.syncNow("acme", false)
	if rep.Counts[jobs.AssetUser].Upserts+rep.Counts[jobs.AssetGroup].Upserts+rep.Counts[jobs.AssetUser].Deletes != 0 {
		t.Errorf("quiet round published %+v", rep.Counts)
	}
}

func TestSyncScheduleAndTwoWorkers(t *testing.T) {
	e := newEnv(t, graphsim.Options{Tenants: 3, Users: 60, Groups: 6, NoThrottling: true})
	e.startWorker(worker.Config{ID: "w1"})
	e.startWorker(worker.Config{ID: "w2"})
	for i, id := range []string{"alpha", "beta", "gamma"} {
		e.addInstance(id, i, 2*time.Second)
	}
	// Every instance syncs on its schedule, several times.
	workertest.Eventually(t, 120*time.Second, "three scheduled rounds per instance", func() bool {
		for _, id := range []string{"alpha", "beta", "gamma"} {
			ok := 0
			for _, r := range e.reports(id) {
				if r.Outcome == jobs.OutcomeSucceeded && strings.HasPrefix(r.JobID, "scheduled-sync-"+id+"@") {
					ok++
				}
			}
			if ok < 3 {
				return false
			}
		}
		return true
	})
	for i, id := range []string{"alpha", "beta", "gamma"} {
		e.checkAgainstTruth(id, i)
		// Never two rounds of one instance at once.
		reps := e.reports(id)
		sort.Slice(reps, func(a, b int) bool { return reps[a].StartedAt.Before(reps[b].StartedAt) })
		for k := 1; k < len(reps); k++ {
			if reps[k-1].Outcome == jobs.OutcomeSucceeded && reps[k].Outcome == jobs.OutcomeSucceeded && reps[k].StartedAt.Before(reps[k-1].FinishedAt) {
				t.Errorf("%s: rounds overlap: %v–%v and %v", id, reps[k-1].StartedAt, reps[k-1].FinishedAt, reps[k].StartedAt)
			}
		}
	}
}

func TestSyncBadCredentials(t *testing.T) {
	e := newEnv(t, graphsim.Options{Tenants: 2, Users: 30, Groups: 3, NoThrottling: true})
	e.startWorker(worker.Config{})
	in := e.addInstance("broken", 0, time.Hour)
	pub, _ := e.poolKey.PublicKey()
	in.ClientSecret, _ = jobs.SealFor([]byte("wrong-secret"), pub, in.SecretBinding(worker.FieldClientSecret))
	store, _ := worker.OpenInstances(context.Background(), e.js, e.srv.Topology)
	if _, err := store.Put(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	e.addInstance("fine", 1, time.Hour)
	id, _ := worker.RequestSync(context.Background(), e.js, jobs.Subjects{}, "default", "broken", false)
	var rep jobs.SyncReport
	workertest.Eventually(t, 60*time.Second, "the failed report", func() bool {
		for _, r := range e.reports("broken") {
			if r.JobID == id {
				rep = r // not the first: adding the instance asked for a round (with the good secret)
				return true
			}
		}
		return false
	})
	if rep.Outcome != jobs.OutcomeFailed || rep.Error == nil || rep.Error.Code != "auth_failed" || !strings.Contains(rep.Error.Message, "AADSTS7000215") {
		t.Fatalf("report %+v %+v", rep, rep.Error)
	}
	if strings.Contains(rep.Error.Message, "wrong-secret") {
		t.Fatal("the report shows the secret")
	}
	// The instance is marked in state.
	meta, err := handlers.ReadSyncMeta(context.Background(), e.store.For("default", "broken"))
	if err != nil || !meta.AuthFailed || !strings.Contains(meta.AuthError, "AADSTS7000215") {
		t.Errorf("sync state of the broken instance: %+v %v", meta, err)
	}
	e.syncNow("fine", false) // other tenants are not held up
}

func TestSyncUnderFaults(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 400, Groups: 30, NoThrottling: true, DeltaPageSize: 50,
		Faults: graphsim.Faults{Rate500: 0.03, Rate503: 0.03, Rate504: 0.02, RetryAfter: 200 * time.Millisecond, DropRate: 0.02}})
	e.startWorker(worker.Config{RetryBackoff: 100 * time.Millisecond})
	e.addInstance("acme", 0, time.Hour)
	tenant := e.sim.Credentials()[0].TenantID
	e.syncNow("acme", false)
	e.checkAgainstTruth("acme", 0)
	for round := 1; round <= 3; round++ {
		_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error {
			a.RandomChanges(40, uint64(round+10))
			a.ThrottleNextWith(5, 300*time.Millisecond, false) // a 429 storm
			return nil
		})
		e.syncNow("acme", false)
		e.checkAgainstTruth("acme", 0)
	}
}

func TestSyncWorkerKilledMidRound(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 1500, Groups: 40, NoThrottling: true, DeltaPageSize: 50,
		Latency: graphsim.Latency{Read: 20 * time.Millisecond}})
	// Worker A: its connection is cut while the first round runs.
	_, jsA := e.srv.Connect(t)
	ncA := jsA.Conn()
	syncerA, err := handlers.NewSyncer(context.Background(), jsA, handlers.SyncConfig{Topology: e.srv.Topology, Graph: graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true})})
	if err != nil {
		t.Fatal(err)
	}
	regA := worker.Registry{}
	syncerA.Register(regA)
	cfg := worker.Config{ID: "A", ManageConsumer: true, AckWait: 2 * time.Second, Heartbeat: 500 * time.Millisecond, SyncLockTTL: 2 * time.Second, PoolKey: e.poolKey, PollWait: 200 * time.Millisecond}
	wA, err := worker.New(context.Background(), jsA, e.srv.Topology, cfg, regA)
	if err != nil {
		t.Fatal(err)
	}
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	go func() { _ = wA.Run(ctxA) }()
	e.addInstance("acme", 0, time.Hour)
	id, _ := worker.RequestSync(context.Background(), e.js, jobs.Subjects{}, "default", "acme", false)
	// Wait until A has published some user batches, then kill it.
	workertest.Eventually(t, 60*time.Second, "A's first batches", func() bool {
		return len(workertest.Messages(t, e.js, "M365_RESULTS", "m365.results.acme.assets.m365_user")) >= 2
	})
	ncA.Close()
	cfg.ID = "B"
	e.startWorker(cfg)
	workertest.Eventually(t, 120*time.Second, "the round's report", func() bool {
		for _, r := range e.reports("acme") {
			if r.JobID == id && r.Outcome == jobs.OutcomeSucceeded {
				return true
			}
		}
		return false
	})
	e.checkAgainstTruth("acme", 0)
	// A's run stays incomplete (no last batch); B's rerun has its own sync
	// id and completes. What both published is the same record (an upsert
	// a consumer applies twice to the same effect), at most one batch of it:
	// the one stored before A recorded its state.
	seen := map[string]string{}
	complete := map[string]bool{}
	dups := 0
	for _, d := range workertest.Decode[jobs.AssetDelta](t, workertest.Messages(t, e.js, "M365_RESULTS", "m365.results.acme.assets.m365_user")) {
		if d.Last {
			complete[d.SyncID] = true
		}
		for _, ch := range d.Changes {
			if prev, ok := seen[ch.ID]; ok {
				if prev != string(ch.Asset) {
					t.Fatalf("user %s published with two different records", ch.ID)
				}
				dups++
			}
			seen[ch.ID] = string(ch.Asset)
		}
	}
	if complete[id] || !complete[id+"~2"] && !complete[id+"~3"] {
		t.Errorf("complete syncs %v: want only the rerun", complete)
	}
	if len(seen) != 1500 || dups > 200 {
		t.Errorf("%d users published, %d twice", len(seen), dups)
	}
}

// A running round shows its progress in the state bucket (what `status` and
// the run status line print); it is gone once the round ends, and the sync
// state then holds the round's duration, counts and Graph figures.
func TestSyncProgressAndLastRound(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 3000, Groups: 100, Latency: graphsim.RealisticLatency, NoThrottling: true})
	e.startWorker(worker.Config{ID: "w-progress"})
	e.addInstance("acme", 0, time.Hour)
	id, err := worker.RequestSync(context.Background(), e.js, jobs.Subjects{}, "default", "acme", false)
	if err != nil {
		t.Fatal(err)
	}
	var seen handlers.SyncProgress
	workertest.Eventually(t, 60*time.Second, "the round's progress record", func() bool {
		ps, err := handlers.ReadSyncProgress(context.Background(), e.store)
		if err != nil {
			return false
		}
		p, ok := ps["acme"]
		seen = p
		return ok
	})
	if seen.SyncID != id || seen.Mode != jobs.ModeFull || seen.Worker != "w-progress" || seen.StartedAt.IsZero() {
		t.Errorf("progress record: %+v", seen)
	}
	workertest.Eventually(t, 120*time.Second, "the sync report", func() bool { return len(e.reports("acme")) == 1 })
	ps, err := handlers.ReadSyncProgress(context.Background(), e.store)
	if err != nil || len(ps) != 0 {
		t.Errorf("progress after the round: %v %+v", err, ps)
	}
	m, err := handlers.ReadSyncMeta(context.Background(), e.store.For("default", "acme"))
	if err != nil || m.LastDuration <= 0 || m.LastCounts[jobs.AssetUser].Upserts != 3000 || m.LastRequests == 0 || m.LastSyncID != id {
		t.Errorf("sync state after the round: %v %+v", err, m)
	}
}

// Every scheduled tick carries the same envelope; each round's asset
// batches must still reach the consumer (their message ids name the tick,
// not the envelope, or the results stream drops a later tick's batches as
// duplicates of an earlier one's for 30 minutes).
func TestEveryScheduledRoundPublishesItsChanges(t *testing.T) {
	e := newEnv(t, graphsim.Options{Tenants: 1, Users: 10, Groups: 2, Seed: 11})
	e.addInstance("acme", 0, time.Hour)
	e.startWorker(worker.Config{})
	e.syncNow("acme", true)
	if err := worker.NewSchedules(e.js, e.srv.Topology).Set(context.Background(), worker.Instance{ID: "acme", Pool: "default", SyncInterval: worker.Duration(time.Second)}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		var id string
		_ = e.sim.Mutate(e.sim.Credentials()[0].TenantID, func(a *graphsim.Admin) error {
			id = a.CreateUser(fmt.Sprintf("ticked-%d", i), "Ticked").ID
			return nil
		})
		workertest.Eventually(t, 30*time.Second, fmt.Sprintf("user %d, by a scheduled round", i), func() bool { _, ok := e.rebuild("acme").users[id]; return ok })
	}
}

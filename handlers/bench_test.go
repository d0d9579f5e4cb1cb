package handlers_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	msgraphcore "github.com/microsoftgraph/msgraph-sdk-go-core"
	"github.com/microsoftgraph/msgraph-sdk-go/groups"
	"github.com/microsoftgraph/msgraph-sdk-go/models"
	"github.com/microsoftgraph/msgraph-sdk-go/users"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphclient/graphsim"
	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// BenchmarkSyncLargeTenant measures, against a 100,000-user / 10,000-group
// tenant with the simulator's realistic latency (GRAPH.md §12) and an L-size
// throttling budget, in one run:
//
//   - our full first round (the whole sync job: read, publish, state);
//
//   - a plain sequential delta walk through the SDK's page iterator (users,
//     then groups with members), reading only;
//
//   - an incremental round after 0.5 % of the objects changed;
//
//   - the process's peak RSS through the full round (the process also holds
//     the simulator with its 100k-user tenant and JetStream; see
//     BenchmarkWorkerRSS for the worker alone).
//
//     go test ./handlers -run '^$' -bench SyncLargeTenant -benchtime 1x -timeout 30m
func BenchmarkSyncLargeTenant(b *testing.B) {
	nUsers := 100000
	if v, err := strconv.Atoi(os.Getenv("BENCH_USERS")); err == nil && v > 0 {
		nUsers = v // a smaller tenant for profiling
	}
	for i := 0; i < b.N; i++ {
		e := newEnv(b, graphsim.Options{Users: nUsers, Groups: nUsers / 10, Latency: graphsim.RealisticLatency})
		e.startWorker(worker.Config{AckWait: 5 * time.Minute})
		e.addInstance("big", 0, 24*time.Hour)

		t0 := time.Now()
		rep := e.syncNow("big", false)
		full := time.Since(t0)
		rssAfterFull := peakRSS()
		if rep.Mode != jobs.ModeFull || rep.Counts[jobs.AssetUser].Upserts < nUsers {
			b.Fatalf("first round: %+v", rep)
		}

		base := sequentialSDKWalk(b, e, nUsers)

		tenant := e.sim.Credentials()[0].TenantID
		_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error { a.RandomChanges(nUsers*55/10000, 99); return nil })
		t1 := time.Now()
		inc := e.syncNow("big", false)
		incr := time.Since(t1)
		if inc.Mode != jobs.ModeIncremental {
			b.Fatalf("second round: %+v", inc)
		}
		b.ReportMetric(full.Seconds(), "full-s")
		b.ReportMetric(base.Seconds(), "sdk-walk-s")
		b.ReportMetric(base.Seconds()/full.Seconds(), "speedup-x")
		b.ReportMetric(incr.Seconds(), "incremental-s")
		b.ReportMetric(100*incr.Seconds()/full.Seconds(), "incremental-%-of-full")
		b.ReportMetric(float64(rssAfterFull)/(1<<20), "peak-rss-through-full-MB")
		b.ReportMetric(float64(rep.GraphRequests), "full-requests")
		b.ReportMetric(float64(rep.Throttled), "full-throttled")
	}
}

// sequentialSDKWalk is the way most integrations read a tenant: one delta
// chain after the other through the SDK's page iterator.
func sequentialSDKWalk(b *testing.B, e *env, nUsers int) time.Duration {
	cred := e.sim.Credentials()[0]
	c, err := graphclient.NewPool(graphclient.PoolConfig{}).Client(graphclient.Config{Instance: "walk", TenantID: cred.TenantID, ClientID: cred.ClientID,
		ClientSecret: cred.ClientSecret, Authority: cred.Authority, GraphRoot: cred.GraphRoot, CAPEM: e.sim.CAPEM(), Users: nUsers})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	_, _ = c.SubscribedSKUs(ctx) // token
	t0 := time.Now()
	ur, err := c.Graph.Users().Delta().GetAsDeltaGetResponse(ctx, &users.DeltaRequestBuilderGetRequestConfiguration{QueryParameters: &users.DeltaRequestBuilderGetQueryParameters{Select: graphclient.UserSelect}})
	if err != nil {
		b.Fatal(err)
	}
	it, err := msgraphcore.NewPageIterator[models.Userable](ur, c.Graph.GetAdapter(), users.CreateDeltaGetResponseFromDiscriminatorValue)
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	if err := it.Iterate(ctx, func(models.Userable) bool { n++; return true }); err != nil {
		b.Fatal(err)
	}
	gr, err := c.Graph.Groups().Delta().GetAsDeltaGetResponse(ctx, &groups.DeltaRequestBuilderGetRequestConfiguration{QueryParameters: &groups.DeltaRequestBuilderGetQueryParameters{Select: append(graphclient.GroupSelect, "members")}})
	if err != nil {
		b.Fatal(err)
	}
	git, err := msgraphcore.NewPageIterator[models.Groupable](gr, c.Graph.GetAdapter(), groups.CreateDeltaGetResponseFromDiscriminatorValue)
	if err != nil {
		b.Fatal(err)
	}
	if err := git.Iterate(ctx, func(models.Groupable) bool { n++; return true }); err != nil {
		b.Fatal(err)
	}
	if n < nUsers+nUsers/10 {
		b.Fatalf("the SDK walk saw %d objects", n)
	}
	return time.Since(t0)
}

// peakRSS reads the process's high-water resident set (Linux).
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkWorkerRSS measures the worker's own peak RSS during a full first
// round of a 100,000-user / 10,000-group tenant: the simulator runs in
// another process (the graphsim subcommand), JetStream in this one.
//
//	go test ./handlers -run '^$' -bench WorkerRSS -benchtime 1x -timeout 30m
func BenchmarkWorkerRSS(b *testing.B) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "m365-worker")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/m365-worker").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	ca, creds := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "creds.json")
	cmd := exec.Command(bin, "graphsim", "--listen", "127.0.0.1:0", "--users", "100000", "--groups", "10000", "--latency", "realistic",
		"--ca-out", ca, "--credentials-out", creds)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	for sc.Scan() && !strings.Contains(sc.Text(), "graphsim listening on") {
	}
	go func() {
		for sc.Scan() {
		}
	}()
	var tenants []graphsim.Credential
	raw, _ := os.ReadFile(creds)
	if err := json.Unmarshal(raw, &tenants); err != nil || len(tenants) == 0 {
		b.Fatalf("credentials: %v", err)
	}
	caPEM, _ := os.ReadFile(ca)
	for i := 0; i < b.N; i++ {
		srv := workertest.Start(b)
		_, js := srv.Connect(b)
		kp, _ := nkeys.CreateCurveKeys()
		pub, _ := kp.PublicKey()
		secret, _ := jobs.Seal([]byte(tenants[0].ClientSecret), pub)
		store, _ := worker.OpenInstances(context.Background(), js, srv.Topology)
		if _, err := store.Put(context.Background(), worker.Instance{ID: "big", TenantID: tenants[0].TenantID, ClientID: tenants[0].ClientID, ClientSecret: secret,
			Authority: tenants[0].Authority, GraphRoot: tenants[0].GraphRoot, CAPEM: string(caPEM), SyncInterval: worker.Duration(24 * time.Hour)}); err != nil {
			b.Fatal(err)
		}
		syncer, err := handlers.NewSyncer(context.Background(), js, handlers.SyncConfig{Topology: srv.Topology, Graph: graphclient.NewPool(graphclient.PoolConfig{})})
		if err != nil {
			b.Fatal(err)
		}
		reg := worker.Registry{}
		syncer.Register(reg)
		w, err := worker.New(context.Background(), js, srv.Topology, worker.Config{PoolKey: kp, AckWait: 5 * time.Minute, PollWait: 200 * time.Millisecond}, reg)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { _ = w.Run(ctx) }()
		runtime.GC()
		before := peakRSS()
		t0 := time.Now()
		id, _ := worker.RequestSync(context.Background(), js, jobs.Subjects{}, "default", "big", false)
		res, err := worker.WaitResult(context.Background(), js, srv.Topology, "big", jobs.ActionSync, id)
		if err != nil || res.Status != jobs.StatusSucceeded {
			b.Fatalf("full round: %+v %v", res, err)
		}
		b.ReportMetric(time.Since(t0).Seconds(), "full-s")
		b.ReportMetric(float64(before)/(1<<20), "rss-before-MB")
		b.ReportMetric(float64(peakRSS())/(1<<20), "peak-rss-MB")
		cancel()
	}
}

// BenchmarkActionsWriteBudget drives mixed actions (update, disable, enable,
// assign and remove a licence, add and remove a group member) at one
// 1,000-user tenant with the simulator's realistic latency and throttling,
// through one worker and through three sharing the tenant's budget.
//
// The write budget is 3,000 writes / 150 s per (app, tenant), a bucket that
// starts full: 2,000 writes fit in it, so the first 3,000 actions drain it
// (our pacer bursts to 90 % of it) and the measured window is the next
// 2,000 actions, in which the budget's rate (20 writes/s) is what binds.
// Reported: writes admitted by the simulator per second in that window as a
// share of the budget's rate, and throttled responses over the whole run.
//
//	go test ./handlers -run '^$' -bench ActionsWriteBudget -benchtime 1x -timeout 30m
func BenchmarkActionsWriteBudget(b *testing.B) {
	for _, workers := range []int{1, 3} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchActions(b, workers, 3000, 2000)
			}
		})
	}
}

func benchActions(b *testing.B, workers, warmup, measured int) {
	e := newEnv(b, graphsim.Options{Users: 1000, Groups: 60, Latency: graphsim.RealisticLatency, Seed: 7})
	for w := 0; w < workers; w++ {
		e.startWorker(worker.Config{ID: fmt.Sprintf("bench-%d", w), AckWait: time.Minute})
	}
	workertest.Eventually(b, 30*time.Second, "all workers live", func() bool {
		n, err := worker.LiveWorkers(context.Background(), e.js, e.srv.Topology, "default")
		return err == nil && n == workers
	})
	time.Sleep(6 * time.Second) // each worker's view of the live count refreshes every 5 s
	e.addInstance("acme", 0, 24*time.Hour)
	tenant := e.sim.Credentials()[0].TenantID
	snap, _ := e.sim.Export(tenant)
	var targets []string
	for _, u := range snap.Users {
		if u.UsageLocation != nil && u.UserType == "Member" {
			targets = append(targets, u.ID)
		}
	}
	var groups []string
	for _, g := range snap.Groups {
		if len(g.GroupTypes) == 0 || (len(g.GroupTypes) == 1 && g.GroupTypes[0] == "Unified") {
			groups = append(groups, g.ID)
		}
	}

	// Results are counted as they arrive; the simulator's write count is
	// read when the warm-up ends and when the measured actions end.
	total := warmup + measured
	var mu sync.Mutex
	var got int
	var tStart, tEnd time.Time
	var wStart, wEnd int64
	finished := make(chan struct{})
	nc, _ := e.srv.Connect(b)
	sub, err := nc.Subscribe("m365.results.acme.actions", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		got++
		switch got {
		case warmup:
			tStart, wStart = time.Now(), e.sim.Writes.Load()
		case total:
			tEnd, wEnd = time.Now(), e.sim.Writes.Load()
			close(finished)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	req0, thr0 := e.sim.Requests.Load(), e.sim.Throttled.Load()
	b.ResetTimer()
	for i := 0; i < total; i++ {
		u := targets[i%len(targets)]
		g := groups[i%len(groups)]
		var action string
		var params any
		switch i % 7 {
		case 0:
			action, params = jobs.ActionUpdateUser, jobs.UpdateUserParams{UserRef: jobs.UserRef{User: u}, JobTitle: ptr(fmt.Sprintf("bench %d", i))}
		case 1:
			action, params = jobs.ActionDisableUser, jobs.DisableUserParams{UserRef: jobs.UserRef{User: u}}
		case 2:
			action, params = jobs.ActionEnableUser, jobs.EnableUserParams{UserRef: jobs.UserRef{User: u}}
		case 3:
			action, params = jobs.ActionAssignLicense, jobs.AssignLicenseParams{UserRef: jobs.UserRef{User: u}, SKU: "FLOW_FREE"}
		case 4:
			action, params = jobs.ActionRemoveLicense, jobs.RemoveLicenseParams{UserRef: jobs.UserRef{User: u}, SKU: "FLOW_FREE"}
		case 5:
			action, params = jobs.ActionAddGroupMember, jobs.AddGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: g}, Member: u}}
		case 6:
			action, params = jobs.ActionRemoveGroupMember, jobs.RemoveGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: g}, Member: u}}
		}
		raw, _ := json.Marshal(params)
		j := &jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: fmt.Sprintf("bench-%d", i), Instance: "acme", Action: jobs.FullAction(action), Params: raw}
		body, _ := json.Marshal(j)
		if _, err := e.js.PublishAsync(jobs.Subjects{}.JobSubject("default", j), body, jetstream.WithMsgID(j.ID)); err != nil {
			b.Fatal(err)
		}
	}
	<-e.js.PublishAsyncComplete()
	select {
	case <-finished:
	case <-time.After(20 * time.Minute):
		b.Fatalf("%d of %d results after 20 minutes", got, total)
	}
	b.StopTimer()
	res := workertest.Decode[jobs.ActionResult](b, workertest.Messages(b, e.js, "M365_RESULTS", "m365.results.acme.actions"))
	failedN := 0
	for _, r := range res {
		if r.Status != jobs.StatusSucceeded {
			failedN++
			if failedN <= 3 {
				b.Logf("failed: %s %s %+v", r.Action, r.JobID, r.Error)
			}
		}
	}
	window := tEnd.Sub(tStart).Seconds()
	writes := float64(wEnd - wStart)
	budgetRate := 3000.0 / 150
	requests, throttled := e.sim.Requests.Load()-req0, e.sim.Throttled.Load()-thr0
	b.ReportMetric(writes/window, "writes/s")
	b.ReportMetric(100*writes/window/budgetRate, "%-of-write-budget")
	b.ReportMetric(float64(requests), "graph-requests")
	b.ReportMetric(100*float64(throttled)/float64(max(requests, 1)), "%-throttled")
	b.ReportMetric(float64(failedN), "failed-jobs")
	b.ReportMetric(window, "window-s")
	b.Logf("latency profile: GRAPH.md §12 (realistic); %d workers; measured window %.1f s: %d writes; whole run: %d requests, %d throttled, %d of %d jobs failed",
		workers, window, wEnd-wStart, requests, throttled, failedN, total)
}

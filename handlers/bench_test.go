package handlers_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	msgraphcore "github.com/microsoftgraph/msgraph-sdk-go-core"
	"github.com/microsoftgraph/msgraph-sdk-go/groups"
	"github.com/microsoftgraph/msgraph-sdk-go/models"
	"github.com/microsoftgraph/msgraph-sdk-go/users"
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

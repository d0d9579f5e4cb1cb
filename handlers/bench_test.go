package handlers_test

import (
	"context"
	"os"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/internal/bench"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
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
//     the simulator with its 100k-user tenant and JetStream; `m365-worker
//     bench sync` and internal/bench measure the worker process alone).
//
// Everything runs in this process, so -cpuprofile and -memprofile cover
// the worker, JetStream and the simulator together.
//
//	go test ./handlers -run '^$' -bench SyncLargeTenant -benchtime 1x -timeout 30m
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
		rssAfterFull, _ := bench.PeakRSS(0)
		if rep.Mode != jobs.ModeFull || rep.Counts[jobs.AssetUser].Upserts < nUsers {
			b.Fatalf("first round: %+v", rep)
		}

		base := time.Duration(0)
		if os.Getenv("BENCH_SKIP_WALK") == "" { // set it to profile our round alone
			cred := e.sim.Credentials()[0]
			var err error
			if base, err = bench.SDKWalk(context.Background(), cred, e.sim.CAPEM(), nUsers, nUsers/10); err != nil {
				b.Fatal(err)
			}
		}

		tenant := e.sim.Credentials()[0].TenantID
		_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error { a.RandomChanges(nUsers*55/10000, 99); return nil })
		if f := os.Getenv("BENCH_INCREMENTAL_CPUPROFILE"); f != "" { // profile the incremental round alone
			out, err := os.Create(f)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.StartCPUProfile(out); err != nil {
				b.Fatal(err)
			}
			defer pprof.StopCPUProfile()
		}
		t1 := time.Now()
		inc := e.syncNow("big", false)
		incr := time.Since(t1)
		pprof.StopCPUProfile()
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

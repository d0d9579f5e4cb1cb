package bench_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/internal/bench"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "m365-bench-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "m365-worker")
	if out, err := exec.Command("go", "build", "-o", binary, "../../cmd/m365-worker").CombinedOutput(); err != nil {
		panic("build m365-worker: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// The benchmarks at a small scale: they run end to end and what they report
// is consistent (not how fast: that is for the benchmarks below).
func TestBenchmarksRunSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s, err := bench.RunSync(ctx, bench.SyncOptions{Binary: binary, Users: 1500, Groups: 150, NoLatency: true, ChangedPercent: 2})
	if err != nil {
		t.Fatal(err)
	}
	if s.Full <= 0 || s.SDKWalk <= 0 || s.Incremental <= 0 || s.Changes != 33 || s.WorkerPeakRSS < 1<<20 || s.FullRequests == 0 {
		t.Errorf("sync benchmark: %+v", s)
	}
	a, err := bench.RunActions(ctx, bench.ActionsOptions{Binary: binary, Workers: 2, MaxWarmup: 40, Actions: 100})
	if err != nil {
		t.Fatal(err)
	}
	if a.Warmup != 40 || a.Jobs < 140 || a.Failed != 0 || a.Writes == 0 || a.Window <= 0 || a.Requests == 0 || a.Throttled != 0 {
		t.Errorf("actions benchmark: %+v", a)
	}
}

// BenchmarkSync: a full first round of a 100,000-user / 10,000-group tenant
// with realistic latency and an L budget, side by side with the SDK's
// page-iterator walk; an incremental round after 0.5 % changed; the worker
// process's peak RSS.
//
//	go test ./internal/bench -run '^$' -bench Sync -benchtime 1x -timeout 30m
//	(or: m365-worker bench sync)
func BenchmarkSync(b *testing.B) {
	for i := 0; i < b.N; i++ {
		r, err := bench.RunSync(context.Background(), bench.SyncOptions{Binary: binary, Users: 100000, Groups: 10000})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(r.Full.Seconds(), "full-s")
		b.ReportMetric(r.SDKWalk.Seconds(), "sdk-walk-s")
		b.ReportMetric(r.Speedup, "speedup-x")
		b.ReportMetric(r.Incremental.Seconds(), "incremental-s")
		b.ReportMetric(r.IncrementalPct, "incremental-%-of-full")
		b.ReportMetric(float64(r.WorkerPeakRSS)/(1<<20), "worker-peak-rss-MB")
		b.ReportMetric(float64(r.FullThrottled), "full-throttled")
	}
}

// BenchmarkActions: 2,000 mixed actions once the warm-up has drained the
// tenant's write bucket, with one worker and with three.
//
//	go test ./internal/bench -run '^$' -bench Actions -benchtime 1x -timeout 30m
//	(or: m365-worker bench actions --workers 3)
func BenchmarkActions(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(map[int]string{1: "workers=1", 3: "workers=3"}[n], func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				r, err := bench.RunActions(context.Background(), bench.ActionsOptions{Binary: binary, Workers: n})
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(r.BudgetPercent, "%-of-write-budget")
				b.ReportMetric(r.ThrottledPercent, "%-throttled")
				b.ReportMetric(r.BucketStart, "bucket-at-start")
				b.ReportMetric(r.BucketEnd, "bucket-at-end")
				b.ReportMetric(float64(r.Failed), "failed-jobs")
			}
		})
	}
}

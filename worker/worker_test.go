package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

type running struct {
	w      *worker.Worker
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("worker run: %v", r.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("worker did not stop")
	}
}

func startWorker(t *testing.T, srv *workertest.Server, cfg worker.Config, reg worker.Registry) *running {
	t.Helper()
	nc, js := srv.Connect(t)
	if cfg.PollWait == 0 {
		cfg.PollWait = 200 * time.Millisecond
	}
	cfg.ManageConsumer = true // the test is the operator too
	w, err := worker.New(context.Background(), js, srv.Topology, cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{w: w, nc: nc, cancel: cancel, done: make(chan struct{})}
	go func() { r.err = w.Run(ctx); close(r.done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(60 * time.Second):
		}
	})
	return r
}

func results(t *testing.T, js jetstream.JetStream, instance string) []jobs.ActionResult {
	return workertest.Decode[jobs.ActionResult](t, workertest.Messages(t, js, "M365_RESULTS", jobs.Subjects{}.Results(instance, jobs.ResultActions)))
}

func failures(t *testing.T, js jetstream.JetStream, instance string) []jobs.FailureRecord {
	return workertest.Decode[jobs.FailureRecord](t, workertest.Messages(t, js, "M365_FAILURES", jobs.Subjects{}.Failures(instance)))
}

func consumerIdle(t *testing.T, js jetstream.JetStream) func() bool {
	return func() bool {
		c, err := js.Consumer(context.Background(), "M365_JOBS", "m365_pool_default")
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	}
}

// disableJob disables a user of its own, so jobs do not queue on one target.
func disableJob(id string) *jobs.Job {
	return &jobs.Job{ID: id, Instance: "acme", Action: jobs.ActionDisableUser, Params: json.RawMessage(`{"user":"u-` + id + `@contoso.com"}`)}
}

// countingRegistry handles disable_user by counting calls per job id.
func countingRegistry(calls *sync.Map, total *atomic.Int64) worker.Registry {
	reg := worker.Registry{}
	worker.Register(reg, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		n, _ := calls.LoadOrStore(j.ID, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		total.Add(1)
		return map[string]string{"user_id": p.User}, nil
	})
	return reg
}

func TestJobHandledOnceAndAcked(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	var calls sync.Map
	var total atomic.Int64
	startWorker(t, srv, worker.Config{}, countingRegistry(&calls, &total))

	workertest.PublishJob(t, js, "default", disableJob("job-1"))
	workertest.Eventually(t, 30*time.Second, "the result", func() bool { return len(results(t, js, "acme")) == 1 })
	workertest.Eventually(t, 30*time.Second, "the job to be acked", consumerIdle(t, js))

	res := results(t, js, "acme")
	if len(res) != 1 || res[0].JobID != "job-1" || res[0].Status != jobs.StatusSucceeded || res[0].Attempts != 1 {
		t.Fatalf("results: %+v", res)
	}
	if string(res[0].Output) != `{"user_id":"u-job-1@contoso.com"}` {
		t.Errorf("output %s", res[0].Output)
	}
	if total.Load() != 1 {
		t.Errorf("handler ran %d times", total.Load())
	}
	if f := failures(t, js, "acme"); len(f) != 0 {
		t.Errorf("failure records for a successful job: %+v", f)
	}
}

func TestDuplicateJobRunsOnce(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	var calls sync.Map
	var total atomic.Int64
	r := startWorker(t, srv, worker.Config{}, countingRegistry(&calls, &total))

	// A publisher's retry after a lost ack stores the job twice (jobs carry
	// no Nats-Msg-Id): the job ledger runs it once.
	a1 := workertest.PublishJob(t, js, "default", disableJob("dup-1"))
	a2 := workertest.PublishJob(t, js, "default", disableJob("dup-1"))
	if a1.Duplicate || a2.Duplicate || a1.Sequence == a2.Sequence {
		t.Fatalf("both copies should be stored: %+v %+v", a1, a2)
	}
	workertest.Eventually(t, 30*time.Second, "the duplicate to be acked", func() bool { return r.w.Stats().Skipped.Load() == 1 })
	workertest.Eventually(t, 30*time.Second, "the consumer to be idle", consumerIdle(t, js))

	// Once more, much later (a replayed or republished copy).
	workertest.PublishJob(t, js, "default", disableJob("dup-1"))
	workertest.Eventually(t, 30*time.Second, "the second duplicate to be acked", func() bool { return r.w.Stats().Skipped.Load() == 2 })
	workertest.Eventually(t, 30*time.Second, "the consumer to be idle", consumerIdle(t, js))
	if total.Load() != 1 {
		t.Errorf("handler ran %d times, want 1", total.Load())
	}
	if n := len(results(t, js, "acme")); n != 1 {
		t.Errorf("%d results, want 1", n)
	}
}

// TestJobIDsAreScopedToTheirInstance: a job id belongs to its instance. A
// publisher allowed on one instance's subjects cannot pre-claim another
// instance's job id (the stream's dedup window is one for all instances, so
// jobs are deduplicated by the per-instance ledger instead), and two
// instances' jobs that happen to share an id both run.
func TestJobIDsAreScopedToTheirInstance(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	var calls sync.Map
	var total atomic.Int64
	startWorker(t, srv, worker.Config{}, countingRegistry(&calls, &total))

	// The pre-claim: a job on evil's subject carrying, as its message id,
	// the id Tevyra is about to use for acme's job.
	evil := disableJob("job-42")
	evil.Instance = "evil"
	evil.SchemaVersion = jobs.SchemaVersion
	b, _ := json.Marshal(evil)
	if _, err := js.Publish(context.Background(), jobs.Subjects{}.JobSubject("default", evil), b, jetstream.WithMsgID("job-42")); err != nil {
		t.Fatal(err)
	}
	// Tevyra publishes acme's job the contract's way.
	if _, err := worker.Submit(context.Background(), js, jobs.Subjects{}, "default", disableJob("job-42")); err != nil {
		t.Fatal(err)
	}
	// A third instance happens to use the same id.
	other := disableJob("job-42")
	other.Instance = "globex"
	if _, err := worker.Submit(context.Background(), js, jobs.Subjects{}, "default", other); err != nil {
		t.Fatal(err)
	}
	for _, inst := range []string{"acme", "evil", "globex"} {
		workertest.Eventually(t, 30*time.Second, inst+"'s result for job-42", func() bool {
			rs := results(t, js, inst)
			return len(rs) == 1 && rs[0].JobID == "job-42" && rs[0].Instance == inst
		})
	}
	if total.Load() != 3 {
		t.Errorf("handler ran %d times, want 3 (once per instance)", total.Load())
	}
}

func TestBadJobsFailOnceWithoutRedelivery(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	var calls sync.Map
	var total atomic.Int64
	r := startWorker(t, srv, worker.Config{AckWait: 2 * time.Second, Heartbeat: 500 * time.Millisecond}, countingRegistry(&calls, &total))

	ctx := context.Background()
	pub := func(subject, msgID, data string) {
		t.Helper()
		if _, err := js.Publish(ctx, subject, []byte(data), jetstream.WithMsgID(msgID)); err != nil {
			t.Fatal(err)
		}
	}
	pub("m365.jobs.default.acme.action.disable_user", "bad-json", `{"schema_version":1,"id":`)
	pub("m365.jobs.default.acme.action.launch_rocket", "bad-action", `{"schema_version":1,"id":"bad-action","instance":"acme","action":"microsoft-365.launch_rocket","params":{}}`)
	pub("m365.jobs.default.acme.action.disable_user", "bad-params", `{"schema_version":1,"id":"bad-params","instance":"acme","action":"microsoft-365.disable_user","params":{"user":"not a upn","colour":"red"}}`)
	pub("m365.jobs.default.other.action.disable_user", "bad-subject", `{"schema_version":1,"id":"bad-subject","instance":"acme","action":"microsoft-365.disable_user","params":{"user":"a@b.com"}}`)
	pub("m365.jobs.default.acme.action.create_group", "no-handler", `{"schema_version":1,"id":"no-handler","instance":"acme","action":"microsoft-365.create_group","params":{"display_name":"F","mail_nickname":"f","group_type":"security"}}`)

	workertest.Eventually(t, 30*time.Second, "five failures", func() bool { return r.w.Stats().Failed.Load() == 5 })
	workertest.Eventually(t, 30*time.Second, "the consumer to be idle", consumerIdle(t, js))

	want := map[string]string{"bad-json": jobs.CodeMalformedJob, "bad-action": jobs.CodeUnknownAction, "bad-params": jobs.CodeInvalidParams, "no-handler": jobs.CodeNotImplemented}
	res := results(t, js, "acme")
	if len(res) != 4 {
		t.Fatalf("%d results for acme, want 4: %+v", len(res), res)
	}
	for _, rr := range res {
		if rr.Status != jobs.StatusFailed || rr.Error == nil || rr.Error.Code != want[rr.JobID] || rr.Error.Message == "" {
			t.Errorf("result %s: %+v %+v, want code %s", rr.JobID, rr, rr.Error, want[rr.JobID])
		}
	}
	for _, rr := range res {
		if rr.JobID == "bad-params" && (len(rr.Error.Fields) != 2) {
			t.Errorf("bad-params fields: %+v", rr.Error.Fields)
		}
	}
	fr := failures(t, js, "acme")
	if len(fr) != 4 {
		t.Fatalf("%d failure records for acme, want 4", len(fr))
	}
	for _, f := range fr {
		if f.Error.Code != want[f.JobID] || f.StreamSeq == 0 || f.Stream != "M365_JOBS" || f.Deliveries != 1 {
			t.Errorf("failure record %+v", f)
		}
	}
	// The envelope naming another instance than its subject: reported
	// under the subject's instance.
	other := results(t, js, "other")
	if len(other) != 1 || other[0].Error.Code != jobs.CodeInvalidJob || len(failures(t, js, "other")) != 1 {
		t.Errorf("subject mismatch: %+v", other)
	}

	// Longer than two ack waits later, nothing was redelivered.
	c, _ := js.Consumer(ctx, "M365_JOBS", "m365_pool_default")
	waitFor := time.Now().Add(5 * time.Second)
	workertest.Eventually(t, 30*time.Second, "two ack waits to pass", func() bool { return time.Now().After(waitFor) })
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumRedelivered != 0 || info.NumAckPending != 0 || r.w.Stats().Failed.Load() != 5 {
		t.Errorf("redelivered %d, ack pending %d, failures %d", info.NumRedelivered, info.NumAckPending, r.w.Stats().Failed.Load())
	}
	if total.Load() != 0 {
		t.Errorf("handler ran %d times on bad jobs", total.Load())
	}
}

func TestDeadWorkerJobRedeliveredOnce(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	cfg := worker.Config{AckWait: 2 * time.Second, Heartbeat: 500 * time.Millisecond, TargetLockTTL: 2 * time.Second}

	started := make(chan struct{})
	release := make(chan struct{})
	var aRuns atomic.Int64
	regA := worker.Registry{}
	worker.Register(regA, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		if aRuns.Add(1) == 1 {
			close(started)
		}
		<-release
		return "from A", nil
	})
	a := startWorker(t, srv, cfg, regA)
	workertest.PublishJob(t, js, "default", disableJob("crash-1"))
	<-started
	// Worker A dies mid-job: its connection goes away without settling.
	a.nc.Close()

	var bRuns atomic.Int64
	regB := worker.Registry{}
	worker.Register(regB, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		bRuns.Add(1)
		return "from B", nil
	})
	startWorker(t, srv, cfg, regB)
	workertest.Eventually(t, 60*time.Second, "B to handle the redelivered job", func() bool { return len(results(t, js, "acme")) == 1 })
	close(release) // A's handler finishes; its settlement cannot reach the server.
	workertest.Eventually(t, 30*time.Second, "the consumer to be idle", consumerIdle(t, js))

	res := results(t, js, "acme")
	if len(res) != 1 || string(res[0].Output) != `"from B"` || res[0].Attempts != 2 {
		t.Fatalf("results: %+v", res)
	}
	if bRuns.Load() != 1 {
		t.Errorf("B ran %d times", bRuns.Load())
	}
}

func TestThreeWorkersShareABurst(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	var calls sync.Map
	var total atomic.Int64
	var ws []*running
	for i := 0; i < 3; i++ {
		ws = append(ws, startWorker(t, srv, worker.Config{ID: fmt.Sprintf("w%d", i), Concurrency: 16}, countingRegistry(&calls, &total)))
	}
	const n = 1000
	for i := 0; i < n; i++ {
		j := disableJob(fmt.Sprintf("burst-%04d", i))
		j.SchemaVersion = jobs.SchemaVersion
		b, _ := json.Marshal(j)
		if _, err := js.PublishAsync("m365.jobs.default.acme.action.disable_user", b, jetstream.WithMsgID(j.ID)); err != nil {
			t.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
	workertest.Eventually(t, 120*time.Second, "all results", func() bool {
		var h int64
		for _, w := range ws {
			h += w.w.Stats().Handled.Load()
		}
		return h == n
	})
	workertest.Eventually(t, 30*time.Second, "the consumer to be idle", consumerIdle(t, js))
	if total.Load() != n {
		t.Errorf("handler ran %d times for %d jobs", total.Load(), n)
	}
	calls.Range(func(k, v any) bool {
		if v.(*atomic.Int64).Load() != 1 {
			t.Errorf("job %v handled %d times", k, v.(*atomic.Int64).Load())
		}
		return true
	})
	res := results(t, js, "acme")
	ids := map[string]bool{}
	for _, r := range res {
		ids[r.JobID] = true
	}
	if len(res) != n || len(ids) != n {
		t.Errorf("%d results, %d distinct job ids, want %d", len(res), len(ids), n)
	}
	for i, w := range ws {
		if w.w.Stats().Handled.Load() == 0 {
			t.Errorf("worker %d handled nothing", i)
		}
	}
	if live, err := worker.LiveWorkers(context.Background(), js, srv.Topology, "default"); err != nil || live != 3 {
		t.Errorf("live workers %d (%v), want 3", live, err)
	}
}

func TestRetryAfterDoesNotUseAttempts(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	const delay = time.Second
	var mu sync.Mutex
	var seen []time.Time
	var attempts []int
	reg := worker.Registry{}
	worker.Register(reg, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, time.Now())
		attempts = append(attempts, j.Attempt)
		if len(seen) <= 3 {
			return nil, worker.RetryAfter(delay, errors.New("throttled by Graph"))
		}
		return "ok", nil
	})
	startWorker(t, srv, worker.Config{MaxAttempts: 2}, reg)
	workertest.PublishJob(t, js, "default", disableJob("snooze-1"))
	workertest.Eventually(t, 60*time.Second, "the result", func() bool { return len(results(t, js, "acme")) == 1 })

	res := results(t, js, "acme")[0]
	if res.Status != jobs.StatusSucceeded || res.Attempts != 1 {
		t.Fatalf("result after three throttled deliveries with MaxAttempts 2: %+v %+v", res, res.Error)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(seen); i++ {
		if gap := seen[i].Sub(seen[i-1]); gap < delay {
			t.Errorf("delivery %d came %s after the previous one, sooner than %s", i+1, gap, delay)
		}
	}
	for i, a := range attempts {
		if a != 1 {
			t.Errorf("delivery %d saw attempt %d, want 1", i+1, a)
		}
	}
}

func TestRetryableErrorsUseAttempts(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	var runs atomic.Int64
	reg := worker.Registry{}
	worker.Register(reg, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		runs.Add(1)
		return nil, errors.New("graph unavailable")
	})
	startWorker(t, srv, worker.Config{MaxAttempts: 3, RetryBackoff: 100 * time.Millisecond}, reg)
	workertest.PublishJob(t, js, "default", disableJob("flaky-1"))
	workertest.Eventually(t, 60*time.Second, "the failure record", func() bool { return len(failures(t, js, "acme")) == 1 })
	res := results(t, js, "acme")
	if len(res) != 1 || res[0].Error == nil || res[0].Error.Code != jobs.CodeAttemptsExhausted || res[0].Attempts != 3 || runs.Load() != 3 {
		t.Fatalf("runs %d, results %+v", runs.Load(), res)
	}
}

func TestGracefulShutdownLosesNothing(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	var calls sync.Map
	var total atomic.Int64
	reg := worker.Registry{}
	worker.Register(reg, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		n, _ := calls.LoadOrStore(j.ID, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		total.Add(1)
		select { // some work
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return "ok", nil
	})
	const n = 300
	for i := 0; i < n; i++ {
		workertest.PublishJob(t, js, "default", disableJob(fmt.Sprintf("drain-%03d", i)))
	}
	// One tenant, jobs that do not wait on Graph: no share (the fairness
	// tests cover it), so that the drain is bound by the shutdown alone.
	first := startWorker(t, srv, worker.Config{ID: "first", Concurrency: 8, InstanceShare: 8}, reg)
	workertest.Eventually(t, 60*time.Second, "the first worker to be busy", func() bool { return first.w.Stats().Handled.Load() >= 50 })
	t0 := time.Now()
	first.stop(t) // SIGTERM mid-burst
	t.Logf("stop took %s", time.Since(t0))
	if first.w.InFlight() != 0 {
		t.Fatalf("%d jobs still in flight after Run returned", first.w.InFlight())
	}
	if c, err := js.Consumer(context.Background(), "M365_JOBS", "m365_pool_default"); err == nil {
		info, _ := c.Info(context.Background())
		t.Logf("after stop: ack pending %d, pending %d, waiting %d, snoozed %d", info.NumAckPending, info.NumPending, info.NumWaiting, first.w.Stats().Snoozed.Load())
	}
	handledByFirst := first.w.Stats().Handled.Load()
	if handledByFirst >= n {
		t.Fatalf("the burst was over before the shutdown (%d handled)", handledByFirst)
	}
	second := startWorker(t, srv, worker.Config{ID: "second", Concurrency: 8, InstanceShare: 8}, reg)
	workertest.Eventually(t, 120*time.Second, "every job's result", func() bool { return len(results(t, js, "acme")) == n })
	workertest.Eventually(t, 30*time.Second, "the consumer to be idle", consumerIdle(t, js))
	if second.w.Stats().Handled.Load() == 0 {
		t.Error("the second worker handled nothing")
	}
	ids := map[string]int{}
	for _, r := range results(t, js, "acme") {
		ids[r.JobID]++
		if r.Status != jobs.StatusSucceeded {
			t.Errorf("job %s: %s %+v", r.JobID, r.Status, r.Error)
		}
	}
	if len(ids) != n {
		t.Errorf("%d distinct results, want %d", len(ids), n)
	}
}

func TestConcurrentSyncsRefusedAcrossWorkers(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	var mu sync.Mutex
	running := map[string]int{}
	maxRunning := map[string]int{}
	var rounds atomic.Int64
	reg := worker.Registry{}
	reg[jobs.ActionSync] = worker.Handler{Exclusive: true, Func: func(ctx context.Context, j *worker.Job) (any, error) {
		mu.Lock()
		running[j.Instance]++
		maxRunning[j.Instance] = max(maxRunning[j.Instance], running[j.Instance])
		mu.Unlock()
		select {
		case <-time.After(300 * time.Millisecond):
		case <-ctx.Done():
		}
		mu.Lock()
		running[j.Instance]--
		mu.Unlock()
		rounds.Add(1)
		return &jobs.SyncReport{Mode: jobs.ModeFull}, nil
	}}
	cfg := worker.Config{SyncLockTTL: 3 * time.Second, Concurrency: 4}
	startWorker(t, srv, cfg, reg)
	startWorker(t, srv, cfg, reg)
	const perInstance = 4
	for _, inst := range []string{"acme", "globex"} {
		for i := 0; i < perInstance; i++ {
			workertest.PublishJob(t, js, "default", &jobs.Job{ID: fmt.Sprintf("sync-%s-%d", inst, i), Instance: inst, Action: jobs.ActionSync})
		}
	}
	workertest.Eventually(t, 120*time.Second, "every sync round", func() bool { return rounds.Load() == 2*perInstance })
	mu.Lock()
	defer mu.Unlock()
	for inst, m := range maxRunning {
		if m != 1 {
			t.Errorf("instance %s had %d syncs at once", inst, m)
		}
	}
	reports := workertest.Decode[jobs.SyncReport](t, workertest.Messages(t, js, "M365_RESULTS", "m365.results.acme.syncs"))
	if len(reports) != perInstance {
		t.Fatalf("%d sync reports for acme, want %d", len(reports), perInstance)
	}
	for _, r := range reports {
		if r.Outcome != jobs.OutcomeSucceeded || r.Mode != jobs.ModeFull {
			t.Errorf("report %+v", r)
		}
	}
}

// Jobs of one target run one at a time and in publication order even when
// three workers fetch them at once, and an earlier job given back (here: a
// RetryAfter) holds the later ones of its target until it is done.
func TestSameTargetOrderAcrossWorkers(t *testing.T) {
	sameTargetOrderAcrossWorkers(t, "default")
}

// A site pool's jobs are read from its own stream (sourced from the jobs
// stream), for its consumer and for the order check alike.
func TestSameTargetOrderInASitePool(t *testing.T) {
	sameTargetOrderAcrossWorkers(t, "site-x")
}

func sameTargetOrderAcrossWorkers(t *testing.T, pool string) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	if pool != "default" {
		srv.Topology.SitePools = []string{pool}
		if err := worker.SetupWith(context.Background(), js, srv.Topology, worker.SetupOptions{SitePools: []string{pool}}); err != nil {
			t.Fatal(err)
		}
	}
	const targets, perTarget = 4, 40
	var mu sync.Mutex
	order := map[string][]int{}
	busyTarget := map[string]bool{}
	var overlaps atomic.Int64
	var delayed atomic.Bool
	reg := worker.Registry{}
	worker.Register(reg, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		var n int
		fmt.Sscanf(j.ID[len(j.ID)-3:], "%d", &n)
		if n == 10 && delayed.CompareAndSwap(false, true) {
			return nil, worker.RetryAfter(300*time.Millisecond, errors.New("not yet"))
		}
		mu.Lock()
		if busyTarget[p.User] {
			overlaps.Add(1)
		}
		busyTarget[p.User] = true
		order[p.User] = append(order[p.User], n)
		mu.Unlock()
		time.Sleep(time.Duration(n%3) * time.Millisecond) // let other workers fetch the next ones meanwhile
		mu.Lock()
		busyTarget[p.User] = false
		mu.Unlock()
		return "ok", nil
	})
	var ws []*running
	for i := 0; i < 3; i++ {
		ws = append(ws, startWorker(t, srv, worker.Config{ID: fmt.Sprintf("w%d", i), Pool: pool, Concurrency: 8}, reg))
	}
	for n := 0; n < perTarget; n++ {
		for k := 0; k < targets; k++ {
			j := &jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: fmt.Sprintf("t%d-%03d", k, n), Instance: "acme", Action: jobs.ActionDisableUser,
				Params: json.RawMessage(fmt.Sprintf(`{"user":"target%d@contoso.com"}`, k))}
			b, _ := json.Marshal(j)
			if _, err := js.PublishAsync("m365.jobs."+pool+".acme.action.disable_user", b); err != nil {
				t.Fatal(err)
			}
		}
	}
	<-js.PublishAsyncComplete()
	workertest.Eventually(t, 120*time.Second, "all results", func() bool { return len(results(t, js, "acme")) == targets*perTarget })
	mu.Lock()
	defer mu.Unlock()
	if overlaps.Load() != 0 {
		t.Errorf("%d jobs started while another job of their target was running", overlaps.Load())
	}
	for k := 0; k < targets; k++ {
		got := order[fmt.Sprintf("target%d@contoso.com", k)]
		if len(got) != perTarget {
			t.Errorf("target%d: %d jobs ran, want %d", k, len(got), perTarget)
		}
		for i := 1; i < len(got); i++ {
			if got[i] <= got[i-1] {
				t.Errorf("target%d ran job %d after job %d: order %v", k, got[i], got[i-1], got)
				break
			}
		}
	}
	busy := 0
	for _, w := range ws {
		if w.w.Stats().Handled.Load() > 0 {
			busy++
		}
	}
	if busy < 2 {
		t.Errorf("only %d of 3 workers handled jobs", busy)
	}
	for i, w := range ws {
		t.Logf("worker %d: handled %d, given back %d", i, w.w.Stats().Handled.Load(), w.w.Stats().Snoozed.Load())
	}
}

// A site pool's scheduled ticks reach its own stream: they carry a TTL and
// roll each other up, which the sourced stream allows too.
func TestSitePoolRunsItsScheduledTicks(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	srv.Topology.SitePools = []string{"site-x"}
	if err := worker.SetupWith(context.Background(), js, srv.Topology, worker.SetupOptions{SitePools: []string{"site-x"}}); err != nil {
		t.Fatal(err)
	}
	var ticks atomic.Int64
	reg := worker.Registry{}
	reg[jobs.ActionSync] = worker.Handler{Exclusive: true, Func: func(ctx context.Context, j *worker.Job) (any, error) {
		if j.Pool == "site-x" && strings.HasPrefix(j.ID, "scheduled-sync-acme") {
			ticks.Add(1)
		}
		return jobs.SyncReport{}, nil
	}}
	startWorker(t, srv, worker.Config{Pool: "site-x"}, reg)
	if err := worker.NewSchedules(js, srv.Topology).Set(context.Background(), worker.Instance{ID: "acme", Pool: "site-x", SyncInterval: worker.Duration(time.Second)}); err != nil {
		t.Fatal(err)
	}
	workertest.Eventually(t, 60*time.Second, "two scheduled ticks run by the site pool", func() bool { return ticks.Load() >= 2 })
	st, err := js.Stream(context.Background(), srv.Topology.SiteJobsStream("site-x"))
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(context.Background()); err != nil || info.State.Msgs == 0 {
		t.Errorf("the site pool's stream: %+v %v", info, err)
	}
}

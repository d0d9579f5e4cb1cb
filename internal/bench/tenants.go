package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
)

// TenantsOptions configure the many-tenants benchmark: every instance on
// its schedule, each tick followed from the jobs stream to its sync report.
type TenantsOptions struct {
	Binary string
	// Instances tenants of Users users each (Users/10 groups); Users 0
	// mixes sizes as a pool serving many customers sees them (mixedSizes:
	// most of 20-500 users, one in 400 of 5,000-50,000, and one of 100,000
	// with a group of all of them).
	Instances, Users int
	Workers          int
	// Interval of every instance's schedule; Duration of the measurement,
	// after a warm-up in which every instance's first (full) round runs:
	// at least one interval, until every instance has reported a round
	// and the backlog those rounds left is worked off (at most
	// maxWarmUps intervals).
	Interval, Duration time.Duration
	// NoLatency turns the simulator's realistic latency off.
	NoLatency bool
	// Aligned adds every instance at once, so all their ticks fall in the
	// same second; by default they are added over one interval, as
	// instances added over time tick at times of their own.
	Aligned bool
	// Noisy splits the window: in its second half one tenant publishes
	// 1,000 actions at once and another's Graph throttles every request
	// (and it gets 200 actions). Probe actions to other tenants, every
	// 250 ms through the whole window, are timed in each half.
	Noisy bool
	Log   io.Writer
}

// TenantsResult is the benchmark's outcome.
type TenantsResult struct {
	Instances, Users, Workers int
	// Sizes says how big the tenants are.
	Sizes              string
	Interval, Duration time.Duration
	Latency            string
	// Ticks produced in the window, Reported those with a sync report
	// (Skipped of them closed as skipped), Lost the rest; CountedMissed of
	// the lost are counted in their instance's ticks_missed reports (a
	// tick replaced by the next one before a worker took it).
	Ticks, Reported, Skipped, Lost, CountedMissed int
	// P50, P99, Max: tick (stored in the jobs stream) to its sync report.
	P50, P99, Max time.Duration
	// FirstRounds is how long after the first instance was added every
	// instance had reported its first round (0: not all did within the
	// warm-up); WarmUp how long the warm-up took in all.
	FirstRounds, WarmUp time.Duration
	// Backlog samples of the pool consumer's pending jobs, every 5 s.
	Backlog        []uint64
	SyncsPerSecond float64
	Requests       int64
	Throttled      int64
	WorkerCPU      time.Duration
	WorkerPeakRSS  int64
	// Server: the JetStream server process's memory and the state
	// bucket's size at the end of the window.
	Server ServerMemory
	// With Noisy: the probe actions' latency (publication to result) in
	// the quiet half and in the noisy half, and how many of the noise's
	// actions had a result by the end.
	Quiet, Noisy             *ActionLatency
	BurstDone, ThrottledDone int
}

// RunTenants runs the benchmark.
func RunTenants(ctx context.Context, o TenantsOptions) (*TenantsResult, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	sim := graphsim.Options{Tenants: o.Instances, Users: o.Users, Groups: max(1, o.Users/10), Seed: 31, Latency: graphsim.RealisticLatency}
	sizes := fmt.Sprintf("%d users each", o.Users)
	if o.Users <= 0 {
		sim.Sizes = mixedSizes(o.Instances)
		sizes = describeSizes(sim.Sizes)
	}
	profile := "GRAPH.md §12 (realistic)"
	if o.NoLatency {
		sim.Latency, profile = graphsim.Latency{}, "none"
	}
	e, err := Start(Options{Binary: o.Binary, Sim: sim, Log: o.Log, ServerProcess: true})
	if err != nil {
		return nil, err
	}
	defer e.Close()
	res := &TenantsResult{Instances: o.Instances, Users: o.Users, Sizes: sizes, Workers: o.Workers, Interval: o.Interval, Duration: o.Duration, Latency: profile}
	creds := e.Sim.Credentials()
	if o.Users <= 0 {
		if err := addGiantGroup(e.Sim, creds[0].TenantID, giantGroupMembers); err != nil {
			return nil, err
		}
	}
	if err := e.StartWorkers(ctx, o.Workers, 0); err != nil {
		return nil, err
	}
	tr, stop, err := trackTicks(ctx, e)
	if err != nil {
		return nil, err
	}
	defer stop()
	t0 := time.Now()
	for i := range o.Instances {
		if err := e.AddTenant(ctx, instanceName(i), creds[i], o.Interval); err != nil {
			return nil, err
		}
		if !o.Aligned {
			if err := sleepCtx(ctx, time.Until(t0.Add(o.Interval*time.Duration(i+1)/time.Duration(o.Instances)))); err != nil {
				return nil, err
			}
		}
	}
	fmt.Fprintf(o.Log, "tenants: %d instances scheduled every %s; warming up until every instance's first round is done\n", o.Instances, o.Interval)
	cons, err := e.JS.Consumer(ctx, e.Topo.JobsStream(), e.Topo.ConsumerName(jobs.DefaultPool))
	if err != nil {
		return nil, err
	}
	if err := warmUp(ctx, o, tr, cons, t0, res); err != nil {
		return nil, err
	}
	var noise *noisyRun
	if o.Noisy {
		if noise, err = startNoisyRun(ctx, e, o); err != nil {
			return nil, err
		}
		defer noise.stop()
	}
	from := time.Now()
	req0, thr0 := e.Sim.Requests.Load(), e.Sim.Throttled.Load()
	cpu0 := workersCPU(e)
	for end := from.Add(o.Duration); time.Now().Before(end); {
		if info, err := cons.Info(ctx); err == nil {
			res.Backlog = append(res.Backlog, info.NumPending)
		}
		if err := sleepCtx(ctx, 5*time.Second); err != nil {
			return nil, err
		}
	}
	to := time.Now()
	if noise != nil {
		if err := noise.wait(); err != nil {
			return nil, err
		}
	}
	res.Requests, res.Throttled = e.Sim.Requests.Load()-req0, e.Sim.Throttled.Load()-thr0
	res.WorkerCPU = workersCPU(e) - cpu0
	if res.Server, err = e.ServerMemory(ctx); err != nil {
		return nil, err
	}
	// Ticks of the window get until one more interval to be reported.
	if err := sleepCtx(ctx, o.Interval); err != nil {
		return nil, err
	}
	var lat []time.Duration
	tr.mu.Lock()
	lostOf := map[string]int{}
	for id, t0 := range tr.ticks {
		if t0.Before(from) || t0.After(to) {
			continue
		}
		res.Ticks++
		r, ok := tr.reports[id]
		if !ok {
			res.Lost++
			lostOf[tickInstance(id)]++
			continue
		}
		res.Reported++
		if r.skipped {
			res.Skipped++
		}
		lat = append(lat, r.at.Sub(t0))
	}
	for inst, n := range lostOf {
		res.CountedMissed += min(n, tr.missed[inst])
	}
	tr.mu.Unlock()
	slices.Sort(lat)
	if len(lat) > 0 {
		res.P50, res.P99, res.Max = pct(lat, 50), pct(lat, 99), lat[len(lat)-1]
	}
	res.SyncsPerSecond = float64(res.Reported-res.Skipped) / to.Sub(from).Seconds()
	for _, w := range e.Workers() {
		if rss, err := w.PeakRSS(); err == nil {
			res.WorkerPeakRSS = max(res.WorkerPeakRSS, rss)
		}
	}
	if noise != nil {
		noise.report(res)
	}
	return res, nil
}

// noisyRun is the --noisy part of the window: probes all through it, the
// noise in its second half.
type noisyRun struct {
	clock *actionClock
	stop  func()
	errc  chan error
}

func startNoisyRun(ctx context.Context, e *Env, o TenantsOptions) (*noisyRun, error) {
	n := o.Instances
	if n < 30 {
		return nil, fmt.Errorf("--noisy needs at least 30 instances (%d)", n)
	}
	// The probes act on 20 small tenants; the noise comes from two others.
	var probeIdx []int
	for i := n - 3; len(probeIdx) < 20; i-- {
		probeIdx = append(probeIdx, i)
	}
	probes, err := probeTenants(e, probeIdx, 20)
	if err != nil {
		return nil, err
	}
	noisy, err := probeTenants(e, []int{n - 1, n - 2}, 500)
	if err != nil {
		return nil, err
	}
	clock, stop, err := startActionClock(ctx, e.JS)
	if err != nil {
		return nil, err
	}
	r := &noisyRun{clock: clock, stop: stop, errc: make(chan error, 1)}
	half := o.Duration / 2
	throttledTenant := e.Sim.Credentials()[n-2].TenantID
	go func() {
		err := clock.probe(ctx, e, "quiet", probes, half)
		if err == nil {
			fmt.Fprintf(o.Log, "tenants: noise on: %d actions from %s, %s throttled, with %d actions\n", NoiseBurst, noisy[0].instance, noisy[1].instance, NoiseThrottled)
			err = clock.startNoise(ctx, e, noisy[0], noisy[1], throttledTenant)
		}
		if err == nil {
			err = clock.probe(ctx, e, "noisy", probes, o.Duration-half)
		}
		r.errc <- err
	}()
	return r, nil
}

func (r *noisyRun) wait() error { return <-r.errc }

func (r *noisyRun) report(res *TenantsResult) {
	q, n := r.clock.phase("quiet-"), r.clock.phase("noisy-")
	res.Quiet, res.Noisy = &q, &n
	res.BurstDone, res.ThrottledDone = r.clock.phase("burst-").Done, r.clock.phase("throttled-").Done
}

// describeSizes summarises a tenant mix.
func describeSizes(sizes []graphsim.TenantSize) string {
	small, large, total, biggest := 0, 0, 0, 0
	for _, s := range sizes {
		total += s.Users
		biggest = max(biggest, s.Users)
		if s.Users <= 500 {
			small++
		} else {
			large++
		}
	}
	return fmt.Sprintf("mixed: %d of 20-500 users, %d of 5,000-100,000 (the largest %d users, with a group of %d members); %d users in all",
		small, large, biggest, min(biggest, giantGroupMembers), total)
}

// tickTracker follows ticks in the jobs stream and sync reports.
type tickTracker struct {
	mu      sync.Mutex
	ticks   map[string]time.Time // tick job id → stored at
	reports map[string]tickReport
	missed  map[string]int // instance → ticks counted in ticks_missed reports
	// first is when each instance reported its first round.
	first map[string]time.Time
}

// maxWarmUps bounds the warm-up, in intervals.
const maxWarmUps = 6

// warmUp waits one interval, then until every instance has reported a
// round and the pool's backlog is down to what one interval's ticks
// leave waiting at once (a tenth of the instances), at most maxWarmUps
// intervals: a window that opens on the first rounds' backlog measures
// that backlog, not the pool serving its tenants.
func warmUp(ctx context.Context, o TenantsOptions, tr *tickTracker, cons jetstream.Consumer, t0 time.Time, res *TenantsResult) error {
	if err := sleepCtx(ctx, o.Interval+5*time.Second); err != nil {
		return err
	}
	for limit := t0.Add(maxWarmUps * o.Interval); time.Now().Before(limit); {
		tr.mu.Lock()
		reported, last := len(tr.first), time.Time{}
		for _, at := range tr.first {
			if at.After(last) {
				last = at
			}
		}
		tr.mu.Unlock()
		var backlog uint64
		if info, err := cons.Info(ctx); err == nil {
			backlog = info.NumPending
		}
		if reported == o.Instances && res.FirstRounds == 0 {
			res.FirstRounds = last.Sub(t0)
			fmt.Fprintf(o.Log, "tenants: every instance's first round reported %s after the first was added\n", res.FirstRounds.Round(time.Second))
		}
		if reported == o.Instances && backlog <= uint64(max(10, o.Instances/10)) {
			break
		}
		if err := sleepCtx(ctx, 5*time.Second); err != nil {
			return err
		}
	}
	res.WarmUp = time.Since(t0)
	return nil
}

// tickInstance is the instance of a tick's job id
// (scheduled-sync-<instance>@<seq>).
func tickInstance(id string) string {
	id, _, _ = strings.Cut(strings.TrimPrefix(id, "scheduled-sync-"), "@")
	return id
}

type tickReport struct {
	at      time.Time
	skipped bool
}

func trackTicks(ctx context.Context, e *Env) (*tickTracker, func(), error) {
	tr := &tickTracker{ticks: map[string]time.Time{}, reports: map[string]tickReport{}, missed: map[string]int{}, first: map[string]time.Time{}}
	jc, err := e.JS.OrderedConsumer(ctx, "M365_JOBS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"m365.jobs.*.*.sync"}, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return nil, nil, err
	}
	c1, err := jc.Consume(func(m jetstream.Msg) {
		meta, err := m.Metadata()
		if err != nil || m.Headers().Get("Nats-Scheduler") == "" {
			return
		}
		var j jobs.Job
		if json.Unmarshal(m.Data(), &j) != nil {
			return
		}
		tr.mu.Lock()
		tr.ticks[j.ID+"@"+strconv.FormatUint(meta.Sequence.Stream, 10)] = meta.Timestamp
		tr.mu.Unlock()
	})
	if err != nil {
		return nil, nil, err
	}
	// Reports are read as they are published, not through a consumer on
	// the results stream: a consumer filtered on "m365.results.*.syncs"
	// walks every asset delta stored between two reports (on a stream of
	// more than 64k subjects the server cannot skip them), and at 10,000
	// tenants that walk was 40 % of the server's CPU: the bench's own
	// reading, not the pool's.
	c2, err := e.NC.Subscribe("m365.results.*.syncs", func(m *nats.Msg) {
		var r jobs.SyncReport
		if json.Unmarshal(m.Data, &r) != nil || !strings.Contains(r.JobID, "@") {
			return
		}
		tr.mu.Lock()
		if r.Error != nil && r.Error.Code == jobs.CodeTicksMissed {
			if _, seen := tr.reports[r.JobID]; !seen {
				tr.missed[r.Instance] += r.MissedTicks
			}
		}
		if _, seen := tr.reports[r.JobID]; !seen {
			tr.reports[r.JobID] = tickReport{at: time.Now(), skipped: r.Outcome == jobs.OutcomeSkipped}
		}
		if _, seen := tr.first[r.Instance]; !seen && r.Outcome == jobs.OutcomeSucceeded {
			tr.first[r.Instance] = time.Now()
		}
		tr.mu.Unlock()
	})
	if err != nil {
		c1.Stop()
		return nil, nil, err
	}
	_ = c2.SetPendingLimits(-1, -1)
	return tr, func() { c1.Stop(); _ = c2.Unsubscribe() }, nil
}

// workersCPU is the CPU time the worker processes used so far (Linux).
func workersCPU(e *Env) time.Duration {
	var total time.Duration
	for _, w := range e.Workers() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", w.cmd.Process.Pid))
		if err != nil {
			continue
		}
		// Fields after the command name (which may hold spaces).
		f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
		if len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			s, _ := strconv.ParseInt(f[12], 10, 64)
			total += time.Duration(u+s) * time.Second / 100 // clock ticks (USER_HZ 100)
		}
	}
	return total
}

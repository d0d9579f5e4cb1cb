package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
)

// OverheadOptions configure the overhead benchmark: what the pool costs on
// top of the Graph calls a job makes.
type OverheadOptions struct {
	Binary string
	// Jobs update_user jobs per round over Users users, Rounds measured
	// rounds (after one not counted); Concurrency of the direct calls.
	Jobs, Users, Rounds, Concurrency int
	// Realistic gives the simulator Graph's latency (GRAPH.md §12): what
	// the pool adds is then measured against the waits a job really has.
	// Default none, so that what is measured is the pool's own cost.
	Realistic bool
	Log       io.Writer
}

// OverheadRound is one round: the direct calls and the pool, one after the
// other, on tenants of their own.
type OverheadRound struct {
	DirectPerSec float64 `json:"direct_jobs_per_sec"`
	PoolPerSec   float64 `json:"pool_jobs_per_sec"`
	PoolOfDirect float64 `json:"pool_of_direct"`
}

// OverheadResult compares the pool with the same Graph calls made directly,
// round by round in one run, and with JetStream alone.
type OverheadResult struct {
	Jobs int `json:"jobs_per_round"`
	// Latency names the simulator's latency profile.
	Latency string          `json:"latency_profile"`
	Rounds  []OverheadRound `json:"rounds"`
	// PoolOfDirect is the median of the rounds' ratios; Min and Max their
	// spread.
	PoolOfDirect    float64 `json:"pool_of_direct"`
	PoolOfDirectMin float64 `json:"pool_of_direct_min"`
	PoolOfDirectMax float64 `json:"pool_of_direct_max"`
	// RequestsPerJob: the Graph requests each pool job made.
	RequestsPerJob float64 `json:"graph_requests_per_job"`
	// RoundTripsPerJob: the JetStream round trips each pool job made, in
	// all and by the stage of its path (the worker's own count).
	RoundTripsPerJob float64            `json:"jetstream_round_trips_per_job"`
	RoundTripsStages map[string]float64 `json:"jetstream_round_trips_by_stage"`
	// JetStreamPerSec: as many messages published, consumed and acked on
	// the same server, with no work.
	JetStreamPerSec float64 `json:"jetstream_msgs_per_sec"`
}

// RunOverhead runs the simulator with no throttling and, unless
// o.Realistic, no latency, so that what is measured is the pool's own
// cost. Each round gives the direct calls and the pool a fresh tenant
// each, so that neither spends a budget the other or an earlier round used
// (the client paces every tenant to Graph's budget), and alternates which
// goes first, so that a drift of the machine's load over the run weighs on
// both alike.
func RunOverhead(ctx context.Context, o OverheadOptions) (*OverheadResult, error) {
	rounds := o.Rounds + 1 // the first warms up and is not counted
	so := graphsim.Options{Tenants: 2 * rounds, Users: o.Users, Groups: max(1, o.Users/10), Seed: 41, NoThrottling: true}
	if o.Realistic {
		so.Latency = graphsim.RealisticLatency
	}
	e, err := Start(Options{Binary: o.Binary, Sim: so, Log: o.Log})
	if err != nil {
		return nil, err
	}
	defer e.Close()
	if err := e.StartWorkers(ctx, 1, 0); err != nil {
		return nil, err
	}
	res := &OverheadResult{Jobs: o.Jobs, Latency: "none"}
	if o.Realistic {
		res.Latency = "GRAPH.md §12 (realistic)"
	}
	pool := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true})
	var graphReqs, trips int64
	tripStages := map[string]int64{}
	for r := range rounds {
		pc, dc := e.Sim.Credentials()[2*r], e.Sim.Credentials()[2*r+1]
		direct, err := newDirect(ctx, e, pool, dc, o.Users)
		if err != nil {
			return nil, err
		}
		inst := fmt.Sprintf("bench-%d", r)
		if err := e.AddTenant(ctx, inst, pc, 24*time.Hour); err != nil {
			return nil, err
		}
		if rep, _, err := e.Sync(ctx, inst, true); err != nil || rep.Outcome != jobs.OutcomeSucceeded { // the instance's client and token
			return nil, fmt.Errorf("first round of %s: %+v %v", inst, rep, err)
		}
		var round OverheadRound
		runDirect := func() error {
			round.DirectPerSec, err = direct.run(ctx, o.Jobs, o.Concurrency)
			return err
		}
		runPool := func() error {
			req0, rt0 := e.Sim.Requests.Load(), workerRoundTrips(e.NC)
			round.PoolPerSec, err = poolRound(ctx, e, inst, pc.TenantID, r, o.Jobs, o.Users)
			if err != nil {
				return err
			}
			if r > 0 {
				graphReqs += e.Sim.Requests.Load() - req0
				for stage, n := range workerRoundTrips(e.NC) {
					tripStages[stage] += n - rt0[stage]
					trips += n - rt0[stage]
				}
			}
			return nil
		}
		order := []func() error{runDirect, runPool}
		if r%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, f := range order {
			if err := f(); err != nil {
				return nil, err
			}
		}
		round.PoolOfDirect = round.PoolPerSec / round.DirectPerSec
		fmt.Fprintf(o.Log, "overhead: round %d: direct %.0f jobs/s, pool %.0f jobs/s (%.2f)\n", r, round.DirectPerSec, round.PoolPerSec, round.PoolOfDirect)
		if r > 0 {
			res.Rounds = append(res.Rounds, round)
		}
	}
	ratios := make([]float64, len(res.Rounds))
	for i, r := range res.Rounds {
		ratios[i] = r.PoolOfDirect
	}
	slices.Sort(ratios)
	res.PoolOfDirect, res.PoolOfDirectMin, res.PoolOfDirectMax = median(ratios), ratios[0], ratios[len(ratios)-1]
	n := float64(o.Jobs * len(res.Rounds))
	res.RequestsPerJob = float64(graphReqs) / n
	res.RoundTripsPerJob = float64(trips) / n
	res.RoundTripsStages = map[string]float64{}
	for stage, v := range tripStages {
		if v > 0 {
			res.RoundTripsStages[stage] = float64(v) / n
		}
	}
	if res.JetStreamPerSec, err = rawJetStream(ctx, e.JS, o.Jobs); err != nil {
		return nil, err
	}
	return res, nil
}

func median(sorted []float64) float64 {
	m := len(sorted) / 2
	if len(sorted)%2 == 0 {
		return (sorted[m-1] + sorted[m]) / 2
	}
	return sorted[m]
}

// directCalls makes update_user's Graph calls with graphclient, on a tenant
// of their own.
type directCalls struct {
	c    *graphclient.Client
	upns []string
}

func newDirect(ctx context.Context, e *Env, pool *graphclient.Pool, cred graphsim.Credential, users int) (*directCalls, error) {
	upns, err := userNames(e.Sim, cred.TenantID, users)
	if err != nil {
		return nil, err
	}
	c, err := pool.Client(graphclient.Config{Instance: "direct-" + cred.TenantID, TenantID: cred.TenantID, ClientID: cred.ClientID, ClientSecret: cred.ClientSecret,
		Authority: cred.Authority, GraphRoot: cred.GraphRoot, CAPEM: e.Sim.CAPEM(), Users: users})
	if err != nil {
		return nil, err
	}
	if _, err := c.SubscribedSKUs(ctx); err != nil { // the token, once
		return nil, err
	}
	return &directCalls{c: c, upns: upns}, nil
}

// run makes jobs sets of calls from concurrency goroutines and returns the
// rate.
func (d *directCalls) run(ctx context.Context, n, concurrency int) (float64, error) {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	t0 := time.Now()
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if err := directUpdate(ctx, d.c, d.upns[i%len(d.upns)], i); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, fmt.Errorf("direct calls: %w", firstErr)
	}
	return float64(n) / time.Since(t0).Seconds(), nil
}

// poolRound publishes n update_user jobs for instance at once and returns
// the rate at which their results arrive.
func poolRound(ctx context.Context, e *Env, instance, tenant string, round, n, users int) (float64, error) {
	upns, err := userNames(e.Sim, tenant, users)
	if err != nil {
		return 0, err
	}
	done, stop, err := countResults(ctx, e.JS, instance)
	if err != nil {
		return 0, err
	}
	defer stop()
	t0 := time.Now()
	for i := range n {
		j, b := updateUserJob(fmt.Sprintf("ovh-%d-%d", round, i), instance, upns[i%len(upns)])
		if _, err := e.JS.PublishAsync(e.Topo.Subjects.JobSubject(jobs.DefaultPool, j), b); err != nil {
			return 0, err
		}
	}
	<-e.JS.PublishAsyncComplete()
	for done.Load() < int64(n) {
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(t0).Seconds(), nil
}

// directUpdate makes the Graph calls of one update_user job.
func directUpdate(ctx context.Context, c *graphclient.Client, upn string, i int) error {
	u, err := c.GetUser(ctx, upn)
	if err != nil {
		return err
	}
	title := fmt.Sprintf("d%d", i)
	if err := c.UpdateUser(ctx, u.ID, graphclient.UserPatch{JobTitle: &title}); err != nil {
		return err
	}
	fresh, err := c.GetUser(ctx, u.ID)
	if err != nil {
		return err
	}
	ids := make([]string, len(fresh.AssignedLicenses))
	for i, l := range fresh.AssignedLicenses {
		ids[i] = l.SkuID
	}
	_, err = c.SKUPartNumbers(ctx, ids) // the record's licence names, as the pool's refresh does
	return err
}

// workerRoundTrips sums the JetStream round trips the pool's workers count,
// by stage, from their NATS micro stats.
func workerRoundTrips(nc *nats.Conn) map[string]int64 {
	out := map[string]int64{}
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return out
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$SRV.STATS.m365-worker", inbox, nil); err != nil {
		return out
	}
	for {
		m, err := sub.NextMsg(500 * time.Millisecond)
		if err != nil {
			return out
		}
		var st struct {
			Endpoints []struct {
				Data struct {
					RoundTrips map[string]int64 `json:"round_trips"`
				} `json:"data"`
			} `json:"endpoints"`
		}
		if json.Unmarshal(m.Data, &st) != nil || len(st.Endpoints) == 0 {
			continue
		}
		for stage, n := range st.Endpoints[0].Data.RoundTrips {
			out[stage] += n
		}
	}
}

func countResults(ctx context.Context, js jetstream.JetStream, instance string) (*atomic.Int64, func(), error) {
	var n atomic.Int64
	c, err := js.OrderedConsumer(ctx, "M365_RESULTS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"m365.results." + instance + ".actions"}, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return nil, nil, err
	}
	cc, err := c.Consume(func(m jetstream.Msg) { n.Add(1) })
	if err != nil {
		return nil, nil, err
	}
	return &n, cc.Stop, nil
}

// rawJetStream publishes n messages to a scratch stream and consumes them
// with explicit acks, as the pool's consumer does: the broker's own rate.
func rawJetStream(ctx context.Context, js jetstream.JetStream, n int) (float64, error) {
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OVERHEAD", Subjects: []string{"overhead.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		return 0, err
	}
	defer func() { _ = js.DeleteStream(context.WithoutCancel(ctx), "OVERHEAD") }()
	cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1000})
	if err != nil {
		return 0, err
	}
	body := []byte(`{"schema_version":1,"id":"raw","instance":"bench","action":"microsoft-365.update_user","params":{"user":"u@contoso.com","job_title":"x"}}`)
	t0 := time.Now()
	for range n {
		if _, err := js.PublishAsync("overhead.job", body); err != nil {
			return 0, err
		}
	}
	<-js.PublishAsyncComplete()
	got := 0
	for got < n {
		b, err := cons.Fetch(min(500, n-got), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return 0, err
		}
		for m := range b.Messages() {
			_ = m.Ack()
			got++
		}
	}
	return float64(n) / time.Since(t0).Seconds(), nil
}

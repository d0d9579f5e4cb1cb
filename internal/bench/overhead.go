package bench

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
)

// OverheadOptions configure the overhead benchmark: what the pool costs on
// top of the Graph calls a job makes.
type OverheadOptions struct {
	Binary string
	// Jobs update_user jobs over Users users; Concurrency of the direct
	// calls.
	Jobs, Users, Concurrency int
	Log                      io.Writer
}

// OverheadResult compares three rates measured in one run.
type OverheadResult struct {
	Jobs int `json:"jobs"`
	// PoolPerSec: update_user jobs through the pool (publish to result,
	// one worker process), RequestsPerJob the Graph requests each made.
	PoolPerSec     float64 `json:"pool_jobs_per_sec"`
	RequestsPerJob float64 `json:"graph_requests_per_job"`
	// DirectPerSec: the same Graph calls per job (find the user, update it,
	// read it back with the tenant's SKUs), made directly with graphclient.
	DirectPerSec float64 `json:"direct_jobs_per_sec"`
	// JetStreamPerSec: the same number of messages published and consumed
	// (acked) on the same server, with no work.
	JetStreamPerSec float64 `json:"jetstream_msgs_per_sec"`
	PoolOfDirect    float64 `json:"pool_of_direct"`
	PoolOfJetStream float64 `json:"pool_of_jetstream"`
}

// RunOverhead runs the simulator with no latency and no throttling, so that
// what is measured is the pool's own cost.
func RunOverhead(ctx context.Context, o OverheadOptions) (*OverheadResult, error) {
	// Two tenants alike: the pool's and the direct calls', so that neither
	// run spends the other's Graph budget (the client paces both to it).
	e, err := Start(Options{Binary: o.Binary, Sim: graphsim.Options{Tenants: 2, Users: o.Users, Groups: max(1, o.Users/10), Seed: 41, NoThrottling: true}, Log: o.Log})
	if err != nil {
		return nil, err
	}
	defer e.Close()
	upns, err := userNames(e.Sim, e.Cred.TenantID, o.Users)
	if err != nil {
		return nil, err
	}
	res := &OverheadResult{Jobs: o.Jobs}
	dc := e.Sim.Credentials()[1]
	dupns, err := userNames(e.Sim, dc.TenantID, o.Users)
	if err != nil {
		return nil, err
	}

	// Direct: the calls update_user makes, from Concurrency goroutines.
	pool := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true})
	c, err := pool.Client(graphclient.Config{Instance: "direct", TenantID: dc.TenantID, ClientID: dc.ClientID, ClientSecret: dc.ClientSecret,
		Authority: dc.Authority, GraphRoot: dc.GraphRoot, CAPEM: e.Sim.CAPEM(), Users: o.Users})
	if err != nil {
		return nil, err
	}
	if _, err := c.SubscribedSKUs(ctx); err != nil { // the token, once
		return nil, err
	}
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	t0 := time.Now()
	var wg sync.WaitGroup
	for range o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < o.Jobs; i = int(next.Add(1)) - 1 {
				if err := directUpdate(ctx, c, dupns[i%len(dupns)], i); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, fmt.Errorf("direct calls: %w", firstErr)
	}
	res.DirectPerSec = float64(o.Jobs) / time.Since(t0).Seconds()
	fmt.Fprintf(o.Log, "overhead: direct %.0f jobs/s\n", res.DirectPerSec)

	// The pool: one worker process, every job published at once.
	if err := e.AddInstance(ctx, "bench"); err != nil {
		return nil, err
	}
	if err := e.StartWorkers(ctx, 1, 0); err != nil {
		return nil, err
	}
	if rep, _, err := e.Sync(ctx, "bench", true); err != nil || rep.Outcome != jobs.OutcomeSucceeded { // the instance's client and token
		return nil, fmt.Errorf("first round: %+v %v", rep, err)
	}
	done, stop, err := countResults(ctx, e.JS)
	if err != nil {
		return nil, err
	}
	defer stop()
	req0 := e.Sim.Requests.Load()
	t0 = time.Now()
	for i := range o.Jobs {
		j, b := updateUserJob(fmt.Sprintf("ovh-%d", i), "bench", upns[i%len(upns)])
		if _, err := e.JS.PublishAsync(e.Topo.Subjects.JobSubject(jobs.DefaultPool, j), b); err != nil {
			return nil, err
		}
	}
	<-e.JS.PublishAsyncComplete()
	for done.Load() < int64(o.Jobs) {
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return nil, err
		}
	}
	res.PoolPerSec = float64(o.Jobs) / time.Since(t0).Seconds()
	res.RequestsPerJob = float64(e.Sim.Requests.Load()-req0) / float64(o.Jobs)
	fmt.Fprintf(o.Log, "overhead: pool %.0f jobs/s\n", res.PoolPerSec)

	// JetStream alone: the same number of messages through a pull consumer.
	if res.JetStreamPerSec, err = rawJetStream(ctx, e.JS, o.Jobs); err != nil {
		return nil, err
	}
	res.PoolOfDirect = res.PoolPerSec / res.DirectPerSec
	res.PoolOfJetStream = res.PoolPerSec / res.JetStreamPerSec
	return res, nil
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
	if _, err := c.GetUser(ctx, u.ID); err != nil {
		return err
	}
	_, err = c.SubscribedSKUs(ctx)
	return err
}

func countResults(ctx context.Context, js jetstream.JetStream) (*atomic.Int64, func(), error) {
	var n atomic.Int64
	c, err := js.OrderedConsumer(ctx, "M365_RESULTS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"m365.results.*.actions"}, DeliverPolicy: jetstream.DeliverNewPolicy})
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

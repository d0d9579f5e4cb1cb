// Package worker is the runtime of the m365-worker pool: it sets up the
// streams and buckets, pulls jobs from the pool's durable consumer with
// bounded concurrency, dispatches them to typed handlers, and settles each
// one (ack, nak with a delay, in-progress heartbeats, terminate) so that
// every job id gets exactly one result and every job that will not be
// retried gets a failure record.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/publisher"
)

// Headers the runtime reads on jobs.
const (
	// HeaderReplayOf names the job a replayed job replays.
	HeaderReplayOf = "M365-Replay-Of"
	// headerScheduler is set by the server on messages a schedule produced.
	headerScheduler = "Nats-Scheduler"
)

// Worker runs jobs of one pool.
type Worker struct {
	cfg       Config
	topo      Topology
	js        jetstream.JetStream
	handlers  Registry
	pub       *publisher.Publisher
	store     *state.Store
	instances *Instances
	log       *slog.Logger

	inFlight atomic.Int64
	stats    Stats
	// roundTrips counts the JetStream round trips of jobs by the stage
	// that made them: the pipeline's stages, then settling.
	roundTrips []atomic.Int64
	// opened keeps the instance secrets jobs opened.
	opened  openedFields
	metrics actionMetrics
	bound   atomic.Bool
	cons    jetstream.Consumer
	// jobsStream reads earlier jobs back for cross-worker ordering.
	jobsStream jetstream.Stream
	earlier    earlierCache
	gate       *gate

	// turns orders the jobs of one (instance, target) in this worker by
	// stream sequence.
	turns turns
	// share counts each instance's jobs past the share stage; shared is
	// their sum, borrowed those beyond their instance's share.
	shareMu  sync.Mutex
	share    map[string]int
	shared   int
	borrowed int
	// shareQueue holds the jobs parked for a slot, in arrival order
	// (share.go).
	shareQueue []shareWaiter
	// holding counts each instance's jobs held by this worker, from fetch
	// to settle (running, or waiting for a turn or a slot).
	holding map[string]int
}

// Stats counts what a worker did since it started.
type Stats struct {
	Handled   atomic.Int64 // jobs settled with a final result
	Succeeded atomic.Int64
	Failed    atomic.Int64
	Retried   atomic.Int64 // given back after a retryable error
	Snoozed   atomic.Int64 // given back after RetryAfter
	Skipped   atomic.Int64 // deliveries of jobs already done
	Dropped   atomic.Int64 // notification triggers for unknown instances
	// TicksMissed counts scheduled ticks no worker served before the next
	// replaced them (reported as ticks_missed).
	TicksMissed atomic.Int64
}

// New prepares a worker: it checks the configuration and opens the pool's
// consumer and the buckets (Setup must have run).
func New(ctx context.Context, js jetstream.JetStream, topo Topology, cfg Config, handlers Registry) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	topo.Subjects = cfg.Subjects
	topo = topo.withDefaults()
	st, err := state.Open(ctx, js, topo.StateBucket(), cfg.LedgerTTL)
	if err != nil {
		return nil, err
	}
	inst, err := OpenInstances(ctx, js, topo)
	if err != nil {
		return nil, err
	}
	if handlers == nil {
		handlers = Registry{}
	}
	return &Worker{
		cfg: cfg, topo: topo, js: js, handlers: handlers,
		pub:        publisher.New(js, publisher.Config{Subjects: cfg.Subjects}),
		store:      st,
		instances:  inst,
		log:        cfg.Logger.With("worker", cfg.ID, "pool", cfg.Pool),
		roundTrips: make([]atomic.Int64, len(pipeline)+1),
	}, nil
}

// ID is the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Stats returns the worker's counters.
func (w *Worker) Stats() *Stats { return &w.stats }

// RoundTrips returns the JetStream round trips jobs made so far, by the
// stage of their path that made them ("settle" for storing the result,
// recording the job as done, acking and releasing its lock).
func (w *Worker) RoundTrips() map[string]int64 {
	out := make(map[string]int64, len(w.roundTrips))
	for i := range w.roundTrips {
		name := "settle"
		if i < len(pipeline) {
			name = pipeline[i].name
		}
		out[name] += w.roundTrips[i].Load()
	}
	return out
}

// InFlight is the number of jobs being handled now.
func (w *Worker) InFlight() int64 { return w.inFlight.Load() }

// Instances gives access to the instance configuration.
func (w *Worker) Instances() *Instances { return w.instances }

// Run pulls and handles jobs until ctx ends, then shuts down gracefully: it
// stops pulling, lets in-flight jobs finish for up to ShutdownTimeout,
// cancels the rest and gives them back for redelivery. It returns nil after a
// clean shutdown.
func (w *Worker) Run(ctx context.Context) error {
	cons, err := w.bindConsumer(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped before it could start
		}
		return err
	}
	w.cons = cons
	if w.jobsStream, err = w.js.Stream(ctx, w.topo.PoolJobsStream(w.cfg.Pool)); err != nil {
		return err
	}
	w.bound.Store(true)
	defer w.bound.Store(false)
	if err := w.instances.WatchPool(ctx, w.cfg.Pool, w.cfg.OnInstanceChange, w.cfg.OnInstanceRemoved); err != nil {
		return err
	}
	stopLive := w.store.Announce(w.cfg.Pool, sanitizeToken(w.cfg.ID))
	defer stopLive()
	w.log.Info("worker: started", "concurrency", w.cfg.Concurrency, "consumer", consumerName(w.topo.prefix(), w.cfg.Pool))

	// Handlers run under their own context: cancelled only when the
	// shutdown deadline passes, not when the pull loop stops.
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()

	w.gate = newGate(w.cfg.Concurrency)
	g := w.gate
	var wg sync.WaitGroup
	for ctx.Err() == nil {
		// Wait for one free slot, then take every other free one.
		if !g.acquire(ctx) {
			continue
		}
		n := 1
		for n < w.cfg.Concurrency && g.tryAcquire() {
			n++
		}
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(w.cfg.PollWait))
		got := 0
		if err == nil {
			for msg := range batch.Messages() {
				got++
				pj := w.parseMsg(msg)
				if ctx.Err() != nil {
					// Arrived after the shutdown began: give it back.
					w.giveBackUnstarted(msg, pj, "shutdown")
					g.release()
					continue
				}
				wg.Add(1)
				w.inFlight.Add(1)
				inst, key, seq := pj.addr.Instance, pj.target, streamSeq(msg)
				w.earlier.saw(w.cfg.Pool, msg, pj, seq)
				pj.overHold = !w.hold(inst, key == "" || w.turns.first(key, seq))
				if pj.overHold {
					key = "" // given back at once: it takes no turn
				}
				var turn <-chan struct{}
				if key != "" {
					turn = w.turns.join(key, seq)
				}
				go func() {
					defer func() { w.unhold(inst); w.inFlight.Add(-1); g.release(); wg.Done() }()
					jctx, span := w.startJobSpan(hctx, msg, pj)
					defer span.End()
					if key != "" {
						if turn != nil {
							ws := waitSpan(jctx, "wait for the target's turn in this worker")
							g.wait(turn)
							ws.End()
						}
						defer w.turns.done(key, seq)
					}
					w.process(jctx, msg, pj)
				}()
			}
			err = batch.Error()
		}
		for i := got; i < n; i++ {
			g.release()
		}
		if err != nil && !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
			w.log.Warn("worker: pull failed", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}

	w.log.Info("worker: draining", "in_flight", w.inFlight.Load(), "deadline", w.cfg.ShutdownTimeout)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.cfg.ShutdownTimeout):
		w.log.Warn("worker: shutdown deadline passed; giving back unfinished jobs", "in_flight", w.inFlight.Load())
		cancelHandlers()
		<-done
	}
	w.log.Info("worker: stopped")
	return nil
}

// bindConsumer returns the pool's consumer: created or updated when the
// worker manages it, else the one setup made, whose ack wait and delivery cap
// the worker then follows.
func (w *Worker) bindConsumer(ctx context.Context) (jetstream.Consumer, error) {
	if w.cfg.ManageConsumer {
		return PoolConsumer(ctx, w.js, w.topo, w.cfg.Pool, w.cfg.AckWait, w.cfg.MaxDeliver)
	}
	if err := w.waitSetUp(ctx); err != nil {
		return nil, err
	}
	cons, err := w.js.Consumer(ctx, w.topo.PoolJobsStream(w.cfg.Pool), w.topo.ConsumerName(w.cfg.Pool))
	if err != nil {
		return nil, fmt.Errorf("bind consumer %s: %w", w.topo.ConsumerName(w.cfg.Pool), err)
	}
	cc := cons.CachedInfo().Config
	if cc.AckWait > 0 && cc.AckWait != w.cfg.AckWait {
		w.log.Info("worker: following the consumer's ack wait", "ack_wait", cc.AckWait)
		w.cfg.AckWait = cc.AckWait
		if w.cfg.Heartbeat >= cc.AckWait {
			w.cfg.Heartbeat = cc.AckWait / 3
		}
	}
	if cc.MaxDeliver > 0 {
		w.cfg.MaxDeliver = cc.MaxDeliver
	}
	return cons, nil
}

func (w *Worker) waitSetUp(ctx context.Context) error {
	return WaitSetUp(ctx, w.js, w.topo, w.cfg.Pool, w.log)
}

// WaitSetUp waits until NATS is reachable and the operator's setup made what
// a pool's workers need, saying what is missing (every 30 s), until ctx
// ends.
func WaitSetUp(ctx context.Context, js jetstream.JetStream, t Topology, pool string, log *slog.Logger) error {
	var said time.Time
	for {
		err := Check(ctx, js, t, pool)
		if err == nil {
			return nil
		}
		// Not set up yet, or NATS not reachable yet: wait either way.
		if time.Since(said) > 30*time.Second {
			log.Warn("worker: waiting for setup", "missing", err.Error())
			said = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (stopped waiting)", err)
		case <-time.After(2 * time.Second):
		}
	}
}

// parsedMsg is a fetched message's envelope, parsed once.
type parsedMsg struct {
	job    *jobs.Job
	params jobs.Params
	err    error
	// id is the job id results are published under.
	id string
	// target is "<instance>/<target>" for jobs of ordered handlers, ""
	// otherwise: jobs of one target take turns.
	target string
	// addr is the job's subject, parsed (addrErr if it is not a job
	// subject).
	addr    jobs.JobAddress
	addrErr error
	// overHold: the job's instance holds half of what this worker can hold
	// (Worker.hold); the job is given back without waiting for its turn.
	overHold bool
}

func (w *Worker) parseMsg(msg jetstream.Msg) parsedMsg {
	j, p, err := jobs.ParseJob(msg.Data())
	pm := parsedMsg{job: j, params: p, err: err, id: fallbackJobID(msg)}
	pm.addr, pm.addrErr = w.cfg.Subjects.ParseJobSubject(msg.Subject())
	if j != nil && j.ID != "" && len(j.ID) <= 128 {
		pm.id = jobIDFor(msg, j)
	}
	if err == nil && w.handlers[j.Action].Ordered && p.Target() != "" {
		pm.target = j.Instance + "/" + strings.ToLower(p.Target())
	}
	return pm
}

func (w *Worker) consumerInfo(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	if !w.bound.Load() { // set after cons
		return nil, fmt.Errorf("consumer not bound")
	}
	c, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return w.cons.Info(c)
}

// OpenState opens a deployment's state bucket (for status and operator
// tools: handlers get their instance's part through Job.State).
func OpenState(ctx context.Context, js jetstream.JetStream, t Topology) (*state.Store, error) {
	return state.Open(ctx, js, t.withDefaults().StateBucket(), 0)
}

// LiveWorkers counts the workers of a pool that announced themselves within
// the last 15 seconds.
func LiveWorkers(ctx context.Context, js jetstream.JetStream, t Topology, pool string) (int, error) {
	st, err := OpenState(ctx, js, t)
	if err != nil {
		return 0, err
	}
	return st.LiveWorkers(ctx, pool)
}

// giveBackUnstarted returns a fetched job that will not start (the worker
// is shutting down) without using an attempt.
func (w *Worker) giveBackUnstarted(msg jetstream.Msg, pj parsedMsg, why string) {
	d := &delivery{ctx: context.Background(), msg: msg, parsed: pj, jobID: pj.id, log: w.log.With("job_id", pj.id)}
	instance := "_unknown"
	if addr, err := w.cfg.Subjects.ParseJobSubject(msg.Subject()); err == nil {
		instance = addr.Instance
	}
	d.scope = w.store.For(w.cfg.Pool, instance)
	w.giveBack(d, why)
}

// WatchLiveWorkers returns a func reporting the live worker count of a pool,
// refreshed every 5 seconds until ctx ends (at least 1).
func WatchLiveWorkers(ctx context.Context, js jetstream.JetStream, t Topology, pool string) func() int {
	var n atomic.Int64
	n.Store(1)
	refresh := func() {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if v, err := LiveWorkers(c, js, t, pool); err == nil && v > 0 {
			n.Store(int64(v))
		}
	}
	refresh()
	go func() {
		tk := time.NewTicker(5 * time.Second)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
				refresh()
			}
		}
	}()
	return func() int { return int(n.Load()) }
}

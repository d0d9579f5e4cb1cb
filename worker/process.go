package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/roundtrip"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/internal/tracing"
	"github.com/tevyra/m365-worker/jobs"
)

// A job's path through a worker, from fetch to settle. The fetch loop
// (Worker.Run) parses the envelope once and, for ordered handlers, queues the
// job for its target's turn in this worker; then process runs the stages in
// order. A stage returns nil to go on, or an outcome that ends the job's
// run: settle maps every outcome to the broker in one place.
//
//	locate    metadata, subject, job id, the instance's state scope, logger
//	hint      a notification trigger for an unknown instance is dropped
//	          (hint.go)
//	ledger    a job whose result is stored is never run again (duplicate);
//	          a first delivery that will take a lock reads it once, under
//	          the lock (ledger again), and any other outcome that stores a
//	          result reads it first (settle)
//	count     attempts used; a job near the consumer's MaxDeliver fails
//	validate  the envelope, its subject and a handler for its action
//	hold      a job that would queue for its target's turn while its
//	          instance holds half the jobs this worker can hold is given back
//	admit     what the handler needs: the instance's exclusive lock, or the
//	          target's turn and lock (publication order across workers);
//	          losing a lock cancels the job
//	ledger    again, now that the job holds its turn
//	spacing   a notification trigger waits for its instance's spacing
//	          (hint.go)
//	share     one instance's jobs take Config.InstanceShare slots, and borrow
//	          free ones within bounds, or wait parked for one (share.go;
//	          after admit: a job waiting for its target's lock holds none)
//	instance  the instance's configuration (a passing error retries)
//	handle    the handler, with heartbeats, a panic turned into an error
//	settle    one result, then ack / nak with a delay / terminate
var pipeline = []struct {
	name string
	run  func(*Worker, *delivery) error
}{
	{"locate", (*Worker).locate},
	{"hint", (*Worker).checkHint},
	{"ledger", (*Worker).checkLedger},
	{"count", (*Worker).countAttempts},
	{"validate", (*Worker).validate},
	{"hold", (*Worker).checkHold},
	{"admit", (*Worker).admit},
	{"ledger again", (*Worker).recheckLedger},
	{"spacing", (*Worker).checkSpacing},
	{"share", (*Worker).takeShare},
	{"instance", (*Worker).lookupInstance},
	{"handle", (*Worker).handle},
}

// delivery is one delivery of a job going through the pipeline.
type delivery struct {
	ctx      context.Context
	msg      jetstream.Msg
	parsed   parsedMsg
	meta     *jetstream.MsgMetadata
	addr     jobs.JobAddress
	addrErr  error
	job      *jobs.Job
	jobID    string
	handler  Handler
	scope    *state.Scope
	inst     *Instance
	attempt  int
	snoozes  int
	started  time.Time
	replayOf string
	log      *slog.Logger
	out      any
	admitted bool        // holds a lock taken by admit
	lock     *state.Lock // that lock
	// ledgerRead: the job ledger was read for this delivery.
	ledgerRead bool
	// trips counts the delivery's round trips against its current stage.
	trips    stageTrips
	cleanups []func()
}

// stageTrips counts a delivery's JetStream round trips against the stage
// it is in (Worker.roundTrips; settling is the last).
// A handler's own goroutines may count while the stage moves on.
type stageTrips struct {
	w     *Worker
	stage atomic.Int32
}

func (s *stageTrips) Add(n int) { s.w.roundTrips[s.stage.Load()].Add(int64(n)) }

// onDone runs f when the delivery is settled (releasing locks), last
// registered first.
func (d *delivery) onDone(f func()) { d.cleanups = append(d.cleanups, f) }

func (w *Worker) process(ctx context.Context, msg jetstream.Msg, pj parsedMsg) {
	d := &delivery{ctx: ctx, msg: msg, parsed: pj, started: time.Now().UTC(), replayOf: msg.Headers().Get(HeaderReplayOf), log: w.log}
	d.trips.w = w
	d.ctx = roundtrip.With(d.ctx, &d.trips)
	var err error
	for i, st := range pipeline {
		d.trips.stage.Store(int32(i))
		if err = st.run(w, d); err != nil {
			break
		}
	}
	d.trips.stage.Store(int32(len(pipeline)))
	w.settle(d, err)
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
}

// Outcomes a stage returns besides handler errors.
var (
	// errDuplicate: the job's result is already stored.
	errDuplicate = errors.New("job already done")
	// errNoMetadata: not a JetStream message; nothing can be published for it.
	errNoMetadata = errors.New("message without JetStream metadata")
)

// skipError closes a job that another running job covers (a scheduled sync
// tick while a round runs).
type skipError struct{ cause error }

func (e *skipError) Error() string { return "skipped: " + e.cause.Error() }

func (w *Worker) locate(d *delivery) error {
	meta, err := d.msg.Metadata()
	if err != nil {
		return errNoMetadata
	}
	d.meta = meta
	d.addr, d.addrErr = d.parsed.addr, d.parsed.addrErr
	if d.addrErr != nil {
		d.addr.Pool, d.addr.Instance = w.cfg.Pool, "_unknown"
	}
	d.job, d.jobID = d.parsed.job, d.parsed.id
	// The consumer only delivers this pool's subjects: the scope is always
	// the worker's own pool.
	d.scope = w.store.For(w.cfg.Pool, d.addr.Instance)
	d.log = w.log.With("job_id", d.jobID, "instance", d.addr.Instance, "action", d.addr.Action, "stream_seq", meta.Sequence.Stream).With(tracing.LogAttrs(d.ctx)...)
	return nil
}

// recheckLedger reads the ledger again once the job holds its lock: another
// delivery of the same job may have finished while this one waited.
func (w *Worker) recheckLedger(d *delivery) error {
	if !d.admitted {
		return nil
	}
	return w.readLedger(d)
}

// checkLedger reads the ledger before the job goes on, except on a first
// delivery of a job that will take a lock: it reads the ledger under the
// lock anyway, and a first delivery has made no earlier give-back whose
// read this one could save (a duplicate publication of a done job then
// waits for its target's turn before it is found). settle reads it for
// any outcome that stores a result before the lock was taken.
func (w *Worker) checkLedger(d *delivery) error {
	if d.meta.NumDelivered == 1 && w.takesLock(d) {
		return nil
	}
	return w.readLedger(d)
}

// takesLock reports whether admit will take a lock for the job.
func (w *Worker) takesLock(d *delivery) bool {
	if d.addrErr != nil || d.parsed.err != nil || d.job == nil {
		return false
	}
	h, ok := w.handlers[d.job.Action]
	return ok && (h.Exclusive || (h.Ordered && d.parsed.params.Target() != ""))
}

func (w *Worker) readLedger(d *delivery) error {
	d.ledgerRead = true
	done, err := d.scope.Done(d.ctx, d.jobID)
	if err != nil {
		return RetryAfter(5*time.Second, fmt.Errorf("cannot read the job ledger: %w", err))
	}
	if done {
		return errDuplicate
	}
	return nil
}

// deliveryReserve is how many of the consumer's last deliveries are kept for
// storing a job's attempts_exhausted result (each try that cannot store it
// gives the job back).
func (w *Worker) deliveryReserve() int { return max(1, min(10, w.cfg.MaxDeliver/10)) }

func (w *Worker) countAttempts(d *delivery) error {
	n := int(d.meta.NumDelivered)
	if n > 1 {
		if s, err := d.scope.Snoozes(d.ctx, d.jobID); err == nil {
			d.snoozes = s
		}
	}
	d.attempt = max(1, n-d.snoozes)
	d.log = d.log.With("attempt", d.attempt)
	if n >= w.cfg.MaxDeliver-w.deliveryReserve() {
		return &jobs.Error{Code: jobs.CodeAttemptsExhausted, Message: fmt.Sprintf(
			"delivered %d times without finishing (%d of them given back without using an attempt: throttling, shutdowns, waiting for the target's turn); the consumer stops at %d deliveries, so the job fails now",
			n, d.snoozes, w.cfg.MaxDeliver)}
	}
	return nil
}

func (w *Worker) validate(d *delivery) error {
	job, perr := d.job, d.parsed.err
	switch {
	case d.addrErr != nil:
		return &jobs.Error{Code: jobs.CodeInvalidJob, Message: d.addrErr.Error()}
	case perr != nil:
		var je *jobs.Error
		if !errors.As(perr, &je) {
			je = &jobs.Error{Code: jobs.CodeInternal, Message: perr.Error()}
		}
		return je
	case job.Instance != d.addr.Instance || job.Action != d.addr.Action:
		return &jobs.Error{Code: jobs.CodeInvalidJob, Message: fmt.Sprintf(
			"the envelope (instance %q, action %q) does not match its subject %s (instance %q, action %q)",
			job.Instance, job.Action, d.msg.Subject(), d.addr.Instance, d.addr.Action)}
	}
	h, ok := w.handlers[job.Action]
	if !ok {
		return notImplemented(job.Action)
	}
	d.handler = h
	return nil
}

// admit takes what the handler needs before it runs. A lock it holds is
// released once the job is settled; if the lock is lost (its TTL ran out
// and another worker took it), the job's context is cancelled.
func (w *Worker) admit(d *delivery) error {
	holder := state.Holder{Worker: w.cfg.ID, JobID: d.jobID, Since: d.started}
	var lock *state.Lock
	switch {
	case d.handler.Exclusive:
		span := waitSpan(d.ctx, "wait for the instance's lock")
		defer span.End()
		l, err := d.scope.AcquireExclusive(d.ctx, holder, w.cfg.SyncLockTTL)
		if errors.Is(err, state.ErrHeld) {
			if d.msg.Headers().Get(headerScheduler) != "" {
				return &skipError{err} // the running round covers this tick
			}
			return RetryAfter(w.cfg.SyncLockTTL/3, err)
		}
		if err != nil {
			return err
		}
		lock = l
	case d.handler.Ordered && d.parsed.params.Target() != "":
		span := waitSpan(d.ctx, "wait for the target's turn and lock")
		defer span.End()
		l, wait, err := w.takeTurn(d, d.parsed.params.Target())
		if err != nil {
			return err
		}
		if l == nil {
			return RetryAfter(turnGiveBackDelay(d.snoozes), errors.New(wait))
		}
		lock = l
	default:
		return nil
	}
	ctx, cancel := context.WithCancel(d.ctx)
	d.ctx, d.admitted, d.lock = ctx, true, lock
	d.onDone(func() {
		cancel()
		lock.Release(context.WithoutCancel(d.ctx)) // counted with the settling
	})
	go func() {
		select {
		case <-lock.Lost():
			d.log.Error("worker: lock lost (its TTL ran out and another worker took it); stopping the job")
			cancel()
		case <-ctx.Done():
		}
	}()
	return nil
}

func (w *Worker) checkHold(d *delivery) error {
	if !d.parsed.overHold {
		return nil
	}
	// One delay for all: jobs given back in stream order come back in it,
	// so a target's jobs are not scrambled into waiting for each other.
	return RetryAfter(holdGiveBackDelay, fmt.Errorf("instance %s holds half the jobs this worker can hold", d.addr.Instance))
}

// turnGiveBackDelay is how long a job waiting for its target's turn is
// given back for: longer the more often it came back (a turn may be long:
// the target's earlier job waits on Graph), up to 10 s, so that a long wait
// does not use up the consumer's deliveries.
func turnGiveBackDelay(snoozes int) time.Duration {
	d := 200 * time.Millisecond
	for i := 0; i < snoozes && d < 10*time.Second; i++ {
		d *= 2
	}
	return min(d, 10*time.Second)
}

// holdGiveBackDelay is how long a job is given back for when its instance
// holds half the worker: one delay for all, so that such jobs come back in
// stream order.
const holdGiveBackDelay = time.Second

func (w *Worker) lookupInstance(d *delivery) error {
	lookup := w.instances.Lookup
	if d.addr.Action == jobs.ActionSync && triggerOf(d.msg) == jobs.TriggerOnDemand {
		// Asked for right after a change (Instances.Apply: new credentials,
		// tenant or cloud): the watched copy may not have the change yet.
		lookup = w.instances.Fresh
	}
	in, err := lookup(d.ctx, w.cfg.Pool, d.job.Instance)
	switch {
	case err == nil:
		d.inst = in
	case errors.Is(err, ErrInstanceNotFound):
		// The handler says what an instance-less job means.
	default:
		return RetryAfter(2*time.Second, fmt.Errorf("cannot read the instance configuration: %w", err))
	}
	return nil
}

func (w *Worker) handle(d *delivery) error {
	// The handler sees the job under the id its results carry: a schedule's
	// ticks (and the receiver's triggers) share one envelope id, and
	// whatever a handler names after the job (a round's batch message ids)
	// must tell them apart.
	env := *d.job
	env.ID = d.jobID
	j := &Job{Job: &env, Params: d.parsed.params, Pool: d.addr.Pool, Worker: w.cfg.ID, Attempt: d.attempt, Delivery: int(d.meta.NumDelivered),
		StreamSeq: d.meta.Sequence.Stream, Published: d.meta.Timestamp, Trigger: triggerOf(d.msg), InstanceConfig: d.inst, Logger: d.log,
		state: d.scope, lock: d.lock, progress: func() { _ = d.msg.InProgress() }, poolKey: w.cfg.PoolKey, previous: w.cfg.PreviousPoolKeys, opened: &w.opened,
		fresh: func(ctx context.Context) (*Instance, error) {
			return w.instances.Refresh(ctx, d.addr.Pool, d.job.Instance)
		}}
	out, err := w.runHandler(d, j)
	d.out = out
	return err
}

// runHandler runs the handler with heartbeats, turning a panic into an
// error.
func (w *Worker) runHandler(d *delivery, j *Job) (out any, err error) {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(w.cfg.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = d.msg.InProgress()
			}
		}
	}()
	defer func() {
		if r := recover(); r != nil {
			d.log.Error("worker: handler panicked", "panic", fmt.Sprint(r))
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	d.log.Debug("worker: handling job")
	return d.handler.Func(d.ctx, j)
}

// fallbackJobID names a job whose envelope cannot be read: its Nats-Msg-Id,
// or its stream sequence.
func fallbackJobID(msg jetstream.Msg) string {
	if id := msg.Headers().Get(jetstream.MsgIDHeader); id != "" && len(id) <= 128 {
		return id
	}
	if meta, err := msg.Metadata(); err == nil {
		return "seq-" + strconv.FormatUint(meta.Sequence.Stream, 10)
	}
	return "unknown"
}

// triggerOf says what published a sync job: the instance's schedule (the
// server sets a header on the ticks), the notification receiver (its own
// subject), or anyone else (on demand).
func triggerOf(msg jetstream.Msg) string {
	switch {
	case msg.Headers().Get(headerScheduler) != "":
		return jobs.TriggerSchedule
	case strings.HasSuffix(msg.Subject(), ".notified"):
		return jobs.TriggerNotification
	}
	return jobs.TriggerOnDemand
}

// jobIDFor is the id results are published under. A schedule's ticks all
// carry the same envelope, and so do the receiver's triggers, so each is
// told apart by its sequence.
func jobIDFor(msg jetstream.Msg, j *jobs.Job) string {
	if triggerOf(msg) != jobs.TriggerOnDemand {
		if meta, err := msg.Metadata(); err == nil {
			return j.ID + "@" + strconv.FormatUint(meta.Sequence.Stream, 10)
		}
	}
	return j.ID
}

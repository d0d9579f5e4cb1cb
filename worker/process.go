package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/jobs"
)

// delivery is one delivery of a job being processed.
type delivery struct {
	msg      jetstream.Msg
	meta     *jetstream.MsgMetadata
	addr     jobs.JobAddress
	job      *jobs.Job
	jobID    string
	attempt  int
	started  time.Time
	replayOf string
	log      *slog.Logger
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

// jobIDFor is the id results are published under. A schedule's ticks all
// carry the same envelope, so each tick is told apart by its sequence.
func jobIDFor(msg jetstream.Msg, j *jobs.Job) string {
	if msg.Headers().Get(headerScheduler) != "" {
		if meta, err := msg.Metadata(); err == nil {
			return j.ID + "@" + strconv.FormatUint(meta.Sequence.Stream, 10)
		}
	}
	return j.ID
}

func (w *Worker) process(ctx context.Context, msg jetstream.Msg, pj parsedMsg) {
	d := &delivery{msg: msg, started: time.Now().UTC(), replayOf: msg.Headers().Get(HeaderReplayOf)}
	meta, err := msg.Metadata()
	if err != nil {
		w.log.Error("worker: message without JetStream metadata; terminating it", "subject", msg.Subject(), "error", err)
		_ = msg.Term()
		return
	}
	d.meta = meta
	addr, addrErr := w.cfg.Subjects.ParseJobSubject(msg.Subject())
	d.addr = addr
	if addrErr != nil {
		d.addr.Instance = "_unknown"
	}
	job, params, perr := pj.job, pj.params, pj.err
	d.job, d.jobID = job, pj.id
	d.log = w.log.With("job_id", d.jobID, "instance", d.addr.Instance, "action", d.addr.Action, "stream_seq", meta.Sequence.Stream)

	// A job whose final result is stored is never run again.
	if done, err := w.state.done(ctx, d.jobID); err != nil {
		d.log.Warn("worker: cannot read the job ledger; retrying later", "error", err)
		w.snooze(ctx, d, 5*time.Second, "ledger unavailable")
		return
	} else if done {
		d.log.Info("worker: job already done; acknowledging the duplicate delivery", "deliveries", meta.NumDelivered)
		w.stats.Skipped.Add(1)
		w.metrics.observe(d.addr.Action, "duplicate", 0)
		_ = msg.DoubleAck(ctx)
		return
	}
	d.attempt = int(meta.NumDelivered)
	if meta.NumDelivered > 1 {
		if n, _, err := w.state.snoozes(ctx, d.jobID); err == nil {
			d.attempt -= n
		}
	}
	if d.attempt < 1 {
		d.attempt = 1
	}
	d.log = d.log.With("attempt", d.attempt)

	switch {
	case addrErr != nil:
		w.fail(ctx, d, &jobs.Error{Code: jobs.CodeInvalidJob, Message: addrErr.Error()})
		return
	case perr != nil:
		var je *jobs.Error
		if !errors.As(perr, &je) {
			je = &jobs.Error{Code: jobs.CodeInternal, Message: perr.Error()}
		}
		w.fail(ctx, d, je)
		return
	case job.Instance != addr.Instance || job.Action != addr.Action:
		w.fail(ctx, d, &jobs.Error{Code: jobs.CodeInvalidJob, Message: fmt.Sprintf(
			"the envelope (instance %q, action %q) does not match its subject %s (instance %q, action %q)",
			job.Instance, job.Action, msg.Subject(), addr.Instance, addr.Action)})
		return
	}
	h, ok := w.handlers[job.Action]
	if !ok {
		w.fail(ctx, d, notImplemented(job.Action))
		return
	}

	if job.Action == jobs.ActionSync {
		lock, err := w.state.acquireSyncLock(ctx, job.Instance, lockValue{Worker: w.cfg.ID, JobID: d.jobID, Since: d.started}, w.cfg.SyncLockTTL)
		if errors.Is(err, ErrSyncRunning) {
			if msg.Headers().Get(headerScheduler) != "" {
				// A tick while a round runs: the running round covers it.
				w.finishSkipped(ctx, d, err)
			} else {
				d.log.Info("worker: sync already running; trying again later", "reason", err.Error())
				w.snooze(ctx, d, w.cfg.SyncLockTTL/3, err.Error())
			}
			return
		}
		if err != nil {
			w.retry(ctx, d, err)
			return
		}
		defer lock.release(context.WithoutCancel(ctx))
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-lock.Lost():
				d.log.Error("worker: sync lock lost; stopping the round")
				cancel()
			case <-ctx.Done():
			}
		}()
	}

	// Across workers, one job of a target at a time, in publication order.
	if t := params.Target(); t != "" && job.Action != jobs.ActionSync {
		lock, wait, err := w.takeTurn(ctx, d, addr.Pool, job.Instance, t)
		if err != nil {
			w.retry(ctx, d, err)
			return
		}
		if lock == nil {
			w.snooze(ctx, d, 200*time.Millisecond, wait)
			return
		}
		defer lock.release(context.WithoutCancel(ctx))
	}

	var inst *Instance
	if in, err := w.instances.Lookup(ctx, job.Instance); err == nil {
		inst = in
	}
	hj := &Job{Job: job, Params: params, Pool: addr.Pool, Worker: w.cfg.ID, Attempt: d.attempt, StreamSeq: meta.Sequence.Stream, Published: meta.Timestamp,
		InstanceConfig: inst, Logger: d.log, progress: func() { _ = msg.InProgress() }, poolKey: w.cfg.PoolKey}

	out, herr := w.runHandler(ctx, d, h, hj)
	var ra *retryAfterError
	var je *jobs.Error
	switch {
	case herr == nil:
		w.succeed(ctx, d, out)
	case errors.As(herr, &ra):
		d.log.Info("worker: handler asked to retry later", "retry_after", ra.delay, "error", ra.err)
		w.snooze(ctx, d, ra.delay, ra.err.Error())
	case ctx.Err() != nil:
		// Shutdown deadline passed (or the sync lock was lost): give the
		// job back without using an attempt.
		w.giveBack(msg, d.jobID, "cancelled")
	case errors.As(herr, &je) && !je.Retryable:
		w.fail(ctx, d, je)
	default:
		w.retry(ctx, d, herr)
	}
}

// runHandler runs h with heartbeats, turning a panic into an error.
func (w *Worker) runHandler(ctx context.Context, d *delivery, h HandlerFunc, j *Job) (out any, err error) {
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
	return h(ctx, j)
}

func (w *Worker) retryDelay(attempt int) time.Duration {
	d := w.cfg.RetryBackoff
	for i := 1; i < attempt && d < w.cfg.MaxRetryBackoff; i++ {
		d *= 2
	}
	return min(d, w.cfg.MaxRetryBackoff)
}

// retry gives the job back after a backoff, or fails it once its attempts
// are used up.
func (w *Worker) retry(ctx context.Context, d *delivery, cause error) {
	if d.attempt >= w.cfg.MaxAttempts {
		je := &jobs.Error{Code: jobs.CodeAttemptsExhausted, Message: fmt.Sprintf("failed %d times; last error: %v", d.attempt, cause)}
		var inner *jobs.Error
		if errors.As(cause, &inner) {
			je.GraphCode, je.GraphRequestID = inner.GraphCode, inner.GraphRequestID
		}
		w.fail(ctx, d, je)
		return
	}
	delay := w.retryDelay(d.attempt)
	d.log.Warn("worker: job failed; retrying", "error", cause, "retry_in", delay)
	w.stats.Retried.Add(1)
	w.metrics.observe(d.addr.Action, "retried", 0)
	if err := d.msg.NakWithDelay(delay); err != nil {
		d.log.Warn("worker: nak failed; the job returns after the ack wait", "error", err)
	}
}

// snooze gives the job back after delay without using an attempt.
func (w *Worker) snooze(ctx context.Context, d *delivery, delay time.Duration, why string) {
	if err := w.state.addSnooze(context.WithoutCancel(ctx), d.jobID, w.cfg.LedgerTTL); err != nil {
		d.log.Warn("worker: cannot record the give-back; it will count as an attempt", "error", err)
	}
	w.stats.Snoozed.Add(1)
	w.metrics.observe(d.addr.Action, "snoozed", 0)
	if err := d.msg.NakWithDelay(delay); err != nil {
		d.log.Warn("worker: nak failed; the job returns after the ack wait", "error", err, "reason", why)
	}
}

// succeed stores the result, records the job as done and acks it.
func (w *Worker) succeed(ctx context.Context, d *delivery, out any) {
	ctx = context.WithoutCancel(ctx)
	if err := w.publishResult(ctx, d, out, nil); err != nil {
		d.log.Error("worker: cannot store the result; giving the job back", "error", err)
		w.snooze(ctx, d, 5*time.Second, "result not stored")
		return
	}
	w.stats.Succeeded.Add(1)
	w.metrics.observe(d.addr.Action, "succeeded", time.Since(d.started))
	w.finish(ctx, d, jobs.StatusSucceeded, func() error { return d.msg.DoubleAck(ctx) })
	d.log.Info("worker: job succeeded", "duration", time.Since(d.started))
}

// fail stores a failed result and a failure record, records the job as done
// and terminates it.
func (w *Worker) fail(ctx context.Context, d *delivery, je *jobs.Error) {
	ctx = context.WithoutCancel(ctx)
	if err := w.publishResult(ctx, d, nil, je); err != nil {
		d.log.Error("worker: cannot store the failed result; giving the job back", "error", err)
		w.snooze(ctx, d, 5*time.Second, "result not stored")
		return
	}
	rec := &jobs.FailureRecord{
		JobID: d.jobID, Instance: d.addr.Instance, Pool: d.addr.Pool, Action: d.addr.Action,
		Subject: d.msg.Subject(), Stream: d.meta.Stream, StreamSeq: d.meta.Sequence.Stream,
		Deliveries: d.meta.NumDelivered, Attempts: d.attempt, FailedAt: time.Now().UTC(),
		Worker: w.cfg.ID, ReplayOf: d.replayOf, Error: *je,
	}
	if err := w.pub.Failure(ctx, rec); err != nil {
		d.log.Error("worker: cannot store the failure record; giving the job back", "error", err)
		w.snooze(ctx, d, 5*time.Second, "failure record not stored")
		return
	}
	w.stats.Failed.Add(1)
	w.metrics.observe(d.addr.Action, "failed", time.Since(d.started))
	w.finish(ctx, d, jobs.StatusFailed, func() error { return d.msg.TermWithReason(je.Code) })
	d.log.Warn("worker: job failed", "code", je.Code, "error", je.Message)
}

// finishSkipped closes a scheduled sync tick that found a round running.
func (w *Worker) finishSkipped(ctx context.Context, d *delivery, cause error) {
	ctx = context.WithoutCancel(ctx)
	now := time.Now().UTC()
	rep := &jobs.SyncReport{JobID: d.jobID, Instance: d.addr.Instance, SyncID: d.jobID, Outcome: jobs.OutcomeSkipped,
		StartedAt: d.started, FinishedAt: now, DurationMS: now.Sub(d.started).Milliseconds(),
		Error: &jobs.Error{Code: jobs.CodeSyncRunning, Message: cause.Error(), Retryable: true}}
	if err := w.pub.SyncReport(ctx, rep); err != nil {
		w.snooze(ctx, d, 5*time.Second, "result not stored")
		return
	}
	w.finish(ctx, d, jobs.OutcomeSkipped, func() error { return d.msg.DoubleAck(ctx) })
	d.log.Info("worker: scheduled sync skipped: a round is running", "reason", cause.Error())
}

func (w *Worker) finish(ctx context.Context, d *delivery, status string, settle func() error) {
	w.stats.Handled.Add(1)
	if err := w.state.markDone(ctx, d.jobID, ledgerEntry{Status: status, Worker: w.cfg.ID, Finished: time.Now().UTC()}, w.cfg.LedgerTTL); err != nil {
		// The result is stored; the stream's dedup window still guards
		// against a second one.
		d.log.Warn("worker: cannot record the job as done", "error", err)
	}
	if err := settle(); err != nil {
		d.log.Warn("worker: settling failed; a redelivery will find the job done", "error", err)
	}
}

// publishResult stores the job's one result: a sync report for sync jobs,
// an action result otherwise.
func (w *Worker) publishResult(ctx context.Context, d *delivery, out any, je *jobs.Error) error {
	now := time.Now().UTC()
	if d.addr.Action == jobs.ActionSync {
		rep, _ := out.(*jobs.SyncReport)
		if rep == nil {
			if je == nil {
				je = &jobs.Error{Code: jobs.CodeInternal, Message: fmt.Sprintf("the sync handler returned %T, not a sync report", out)}
			}
			rep = &jobs.SyncReport{Outcome: jobs.OutcomeFailed}
		}
		rep.JobID, rep.Instance = d.jobID, d.addr.Instance
		if rep.SyncID == "" {
			rep.SyncID = d.jobID
		}
		if rep.StartedAt.IsZero() {
			rep.StartedAt = d.started
		}
		rep.FinishedAt = now
		rep.DurationMS = now.Sub(rep.StartedAt).Milliseconds()
		if je != nil {
			rep.Outcome, rep.Error = jobs.OutcomeFailed, je
		} else if rep.Outcome == "" {
			rep.Outcome = jobs.OutcomeSucceeded
		}
		return w.pub.SyncReport(ctx, rep)
	}
	res := &jobs.ActionResult{JobID: d.jobID, Instance: d.addr.Instance, Action: d.addr.Action, Status: jobs.StatusSucceeded,
		Attempts: d.attempt, StartedAt: d.started, FinishedAt: now, ReplayOf: d.replayOf, Error: je}
	if d.job != nil {
		res.DryRun = d.job.DryRun
	}
	if je != nil {
		res.Status = jobs.StatusFailed
	} else {
		raw, err := marshalOutput(out)
		if err != nil {
			res.Status, res.Error = jobs.StatusFailed, &jobs.Error{Code: jobs.CodeInternal, Message: err.Error()}
		}
		res.Output = raw
	}
	return w.pub.ActionResult(ctx, res)
}

package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tevyra/m365-worker/internal/retry"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/publisher"
)

// settle maps a delivery's outcome to the broker, the one place that does:
//
//	nil               the result stored, the job recorded as done, acked
//	errDuplicate      acked: its result is already stored
//	errDropped        acked: a notification trigger for an unknown instance
//	*skipError        a skipped sync report, acked
//	RetryAfter        given back after the delay, no attempt used
//	context ended     given back at once, no attempt used (shutdown, lost lock)
//	*jobs.Error       failed result and failure record, terminated
//	anything else     retried after a backoff, failed once attempts are used
func (w *Worker) settle(d *delivery, err error) {
	if d.meta != nil && !d.ledgerRead && storesResult(d, err) {
		// A first delivery that did not reach its lock: the result it
		// would store must not be a second one.
		if lerr := w.readLedger(d); lerr != nil {
			err = lerr
		}
	}
	var ra *retryAfterError
	var skip *skipError
	var je *jobs.Error
	switch {
	case errors.Is(err, errNoMetadata):
		d.log.Error("worker: message without JetStream metadata; terminating it", "subject", d.msg.Subject())
		_ = d.msg.Term()
	case err == nil:
		w.succeed(d)
	case errors.Is(err, errDuplicate):
		d.log.Info("worker: job already done; acknowledging the duplicate delivery", "deliveries", d.meta.NumDelivered)
		w.stats.Skipped.Add(1)
		w.observe(d, "duplicate", 0)
		_ = d.msg.Ack()
	case errors.Is(err, errDropped):
		w.drop(d)
	case errors.As(err, &skip):
		w.finishSkipped(d, skip.cause)
	case errors.As(err, &ra):
		d.log.Info("worker: giving the job back for now", "retry_after", ra.delay, "reason", ra.err)
		w.snooze(d, ra.delay, ra.err.Error())
	case d.ctx.Err() != nil:
		w.giveBack(d, "cancelled")
	case errors.As(err, &je) && !je.Retryable:
		w.fail(d, je)
	default:
		w.retry(d, err)
	}
}

// storesResult reports whether settling err may store a result (a success,
// a failure, a skip, or a retry that finds the attempts used up).
func storesResult(d *delivery, err error) bool {
	var ra *retryAfterError
	switch {
	case errors.Is(err, errNoMetadata), errors.Is(err, errDuplicate), errors.Is(err, errDropped), errors.As(err, &ra):
		return false
	case err != nil && d.ctx.Err() != nil:
		return false // given back
	}
	return true
}

// jobBackoff is the delay before a job's next attempt.
func (w *Worker) jobBackoff() retry.Policy {
	return retry.Policy{Initial: w.cfg.RetryBackoff, Max: w.cfg.MaxRetryBackoff}
}

// retry gives the job back after a backoff, or fails it once its attempts
// are used up.
func (w *Worker) retry(d *delivery, cause error) {
	if d.attempt >= w.cfg.MaxAttempts {
		je := &jobs.Error{Code: jobs.CodeAttemptsExhausted, Message: fmt.Sprintf("failed %d times; last error: %v", d.attempt, cause)}
		var inner *jobs.Error
		if errors.As(cause, &inner) {
			je.GraphCode, je.GraphRequestID, je.GraphClientRequestID = inner.GraphCode, inner.GraphRequestID, inner.GraphClientRequestID
		}
		w.fail(d, je)
		return
	}
	delay := w.jobBackoff().Delay(d.attempt)
	d.log.Warn("worker: job failed; retrying", "error", cause, "retry_in", delay)
	w.stats.Retried.Add(1)
	w.observe(d, "retried", 0)
	traceGiveBack(d, delay)
	if err := d.msg.NakWithDelay(delay); err != nil {
		d.log.Warn("worker: nak failed; the job returns after the ack wait", "error", err)
	}
}

// snooze gives the job back after delay without using an attempt.
func (w *Worker) snooze(d *delivery, delay time.Duration, why string) {
	w.recordGiveBack(d.scope, d.jobID)
	w.stats.Snoozed.Add(1)
	w.observe(d, "snoozed", 0)
	traceGiveBack(d, delay)
	if err := d.msg.NakWithDelay(delay); err != nil {
		d.log.Warn("worker: nak failed; the job returns after the ack wait", "error", err, "reason", why)
	}
}

// giveBack returns the job for redelivery at once without using an attempt.
func (w *Worker) giveBack(d *delivery, why string) {
	w.recordGiveBack(d.scope, d.jobID)
	traceOutcome(d, "given_back")
	if err := d.msg.Nak(); err != nil {
		d.log.Warn("worker: give back failed; the job returns after the ack wait", "reason", why, "error", err)
	}
}

func (w *Worker) recordGiveBack(sc *state.Scope, jobID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sc.AddSnooze(ctx, jobID); err != nil {
		w.log.Warn("worker: cannot record the give-back; it will count as an attempt", "job_id", jobID, "error", err)
	}
}

// succeed stores the result, records the job as done and acks it.
func (w *Worker) succeed(d *delivery) {
	ctx := context.WithoutCancel(d.ctx)
	err := w.publishResult(ctx, d, d.out, nil)
	if errors.Is(err, publisher.ErrTooLarge) {
		w.fail(d, &jobs.Error{Code: jobs.CodeInternal, Message: "the job succeeded but its result is larger than the server's max_payload; see the asset deltas of the next sync for its effect"})
		return
	}
	if err != nil {
		d.log.Error("worker: cannot store the result; giving the job back", "error", err)
		w.snooze(d, 5*time.Second, "result not stored")
		return
	}
	if !w.finish(d, jobs.StatusSucceeded, func() error { return d.msg.Ack() }) {
		return
	}
	w.stats.Succeeded.Add(1)
	w.observe(d, "succeeded", time.Since(d.started))
	d.log.Info("worker: job succeeded", "duration", time.Since(d.started))
}

// fail stores a failed result and a failure record, records the job as done
// and terminates it. The error is bounded first (a job with thousands of bad
// fields must not make a result larger than the server takes); if the
// result still cannot be stored for its size, a minimal one is.
func (w *Worker) fail(d *delivery, je *jobs.Error) {
	ctx := context.WithoutCancel(d.ctx)
	je = je.Bounded()
	err := w.publishResult(ctx, d, nil, je)
	if errors.Is(err, publisher.ErrTooLarge) {
		je = minimalError(je)
		err = w.publishResult(ctx, d, nil, je)
	}
	if err != nil {
		d.log.Error("worker: cannot store the failed result; giving the job back", "error", err)
		w.snooze(d, 5*time.Second, "result not stored")
		return
	}
	rec := &jobs.FailureRecord{
		JobID: d.jobID, Instance: d.addr.Instance, Pool: d.addr.Pool, Action: d.addr.Action,
		Subject: d.msg.Subject(), Stream: d.meta.Stream, StreamSeq: d.meta.Sequence.Stream,
		Deliveries: d.meta.NumDelivered, Attempts: d.attempt, FailedAt: time.Now().UTC(),
		Worker: w.cfg.ID, ReplayOf: d.replayOf, Error: *je,
	}
	err = w.pub.Failure(ctx, rec)
	if errors.Is(err, publisher.ErrTooLarge) {
		rec.Error = *minimalError(je)
		err = w.pub.Failure(ctx, rec)
	}
	if err != nil {
		d.log.Error("worker: cannot store the failure record; giving the job back", "error", err)
		w.snooze(d, 5*time.Second, "failure record not stored")
		return
	}
	if !w.finish(d, jobs.StatusFailed, func() error { return d.msg.TermWithReason(je.Code) }) {
		return
	}
	w.stats.Failed.Add(1)
	w.observe(d, "failed", time.Since(d.started))
	w.metrics.failed(w.actionLabel(d.addr.Action), je.Code)
	traceFailure(d, je)
	d.log.Warn("worker: job failed", "code", je.Code, "error", je.Message)
}

// minimalError is what is left of an error when even its bounded form does
// not fit: the code and the start of the message.
func minimalError(je *jobs.Error) *jobs.Error {
	msg := je.Message
	if len(msg) > 256 {
		msg = msg[:256] + "…"
	}
	return &jobs.Error{Code: je.Code, Message: msg + " (details dropped: the full error is larger than the server's max_payload)", Retryable: je.Retryable}
}

// The ack that settles a job is not waited for: once the result is stored
// and the job recorded as done, an ack lost on the way only means a
// redelivery after the ack wait, which finds the job done.

// finishSkipped closes a scheduled sync tick that found a round running.
func (w *Worker) finishSkipped(d *delivery, cause error) {
	ctx := context.WithoutCancel(d.ctx)
	now := time.Now().UTC()
	rep := &jobs.SyncReport{JobID: d.jobID, Instance: d.addr.Instance, SyncID: d.jobID, Outcome: jobs.OutcomeSkipped, Trigger: triggerOf(d.msg),
		StartedAt: d.started, FinishedAt: now, DurationMS: now.Sub(d.started).Milliseconds(),
		Error: &jobs.Error{Code: jobs.CodeSyncRunning, Message: cause.Error(), Retryable: true}}
	if err := w.pub.SyncReport(ctx, rep); err != nil {
		w.snooze(d, 5*time.Second, "result not stored")
		return
	}
	if !w.finish(d, jobs.OutcomeSkipped, func() error { return d.msg.Ack() }) {
		return
	}
	traceOutcome(d, "skipped")
	d.log.Info("worker: scheduled sync skipped: a round is running", "reason", cause.Error())
}

// finish records the job as done in the ledger, then settles it; false
// when the ledger could not be written, and the job was given back.
func (w *Worker) finish(d *delivery, status string, settle func() error) bool {
	ctx := context.WithoutCancel(d.ctx)
	if err := d.scope.MarkDone(ctx, d.jobID, state.LedgerEntry{Status: status, Worker: w.cfg.ID, Finished: time.Now().UTC()}); err != nil {
		// MarkDone asked again for as long as a publication is. Settled
		// without its entry, the job would hold up every later job of its
		// target for good (each waits for the earlier ones the ledger does
		// not list). It comes back and runs again instead: its result's
		// message id keeps a second result out of the results stream for
		// ResultsDuplicateWindow; its effect is made again.
		d.log.Error("worker: cannot record the job as done; giving it back", "error", err)
		w.snooze(d, 5*time.Second, "ledger entry not written")
		return false
	}
	w.stats.Handled.Add(1)
	w.accountTicks(ctx, d)
	if err := settle(); err != nil {
		d.log.Warn("worker: settling failed; a redelivery will find the job done", "error", err)
	}
	return true
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
		rep.JobID, rep.Instance, rep.Trigger = d.jobID, d.addr.Instance, triggerOf(d.msg)
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

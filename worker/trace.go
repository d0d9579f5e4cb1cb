package worker

import (
	"context"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tevyra/m365-worker/internal/tracing"
	"github.com/tevyra/m365-worker/jobs"
)

// A job's trace: each delivery is a consumer span (OTel messaging
// conventions), the child of the traceparent Tevyra set on the job; the
// waits that matter are its child spans (the target's turn in this worker,
// the target's or the instance's lock, a slot of the instance's share);
// the handler's Graph requests and the results it publishes are its
// children too, so Tevyra's consumer of the result continues the trace.
// Nothing of a job's params is recorded.

// Span attributes of a job's span beside the messaging conventions'.
const (
	attrPool       = attribute.Key("m365.pool")
	attrInstance   = attribute.Key("m365.instance")
	attrAction     = attribute.Key("m365.action")
	attrAttempt    = attribute.Key("m365.attempt")
	attrStreamSeq  = attribute.Key("m365.stream_seq")
	attrDeliveries = attribute.Key("m365.deliveries")
	attrTrigger    = attribute.Key("m365.trigger")
	attrOutcome    = attribute.Key("m365.outcome")
	attrRetryAfter = attribute.Key("m365.retry_after_ms")
)

// startJobSpan starts a delivery's span, the child of the trace context in
// the job's headers, named "process <subject template>" (the instance's
// token is a placeholder: a span name stays low-cardinality).
func (w *Worker) startJobSpan(ctx context.Context, msg jetstream.Msg, pj parsedMsg) (context.Context, trace.Span) {
	tmpl := w.subjectTemplate(msg.Subject(), pj)
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemKey.String("nats"),
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("process"),
		semconv.MessagingDestinationName(msg.Subject()),
		semconv.MessagingDestinationTemplate(tmpl),
		semconv.MessagingConsumerGroupName(consumerName(w.topo.prefix(), w.cfg.Pool)),
		semconv.MessagingClientID(w.cfg.ID),
		semconv.MessagingMessageID(pj.id),
		semconv.MessagingMessageBodySize(len(msg.Data())),
		attrPool.String(w.cfg.Pool),
	}
	if pj.addrErr == nil {
		attrs = append(attrs, attrInstance.String(pj.addr.Instance), attrAction.String(w.actionLabel(pj.addr.Action)), attrTrigger.String(triggerOf(msg)))
	}
	if meta, err := msg.Metadata(); err == nil {
		attrs = append(attrs, attrStreamSeq.Int64(int64(meta.Sequence.Stream)), attrDeliveries.Int64(int64(meta.NumDelivered)))
	}
	ctx = tracing.WithProvider(ctx, w.cfg.TracerProvider)
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...)}
	parent := tracing.Extract(ctx, msg.Headers())
	if triggerOf(msg) == jobs.TriggerNotification {
		// A trigger stands for every notification rolled up into it: the
		// round links to the context it carries and is a trace of its own.
		if sc := trace.SpanContextFromContext(parent); sc.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
		}
		parent = ctx
	}
	return tracing.Tracer(w.cfg.TracerProvider).Start(parent, "process "+tmpl, opts...)
}

// subjectTemplate is a job subject with its instance token as
// "{instance}".
func (w *Worker) subjectTemplate(subject string, pj parsedMsg) string {
	if pj.addrErr != nil {
		return w.cfg.Subjects.JobsAll()
	}
	return strings.Replace(subject, "."+pj.addr.Pool+"."+pj.addr.Instance+".", "."+pj.addr.Pool+".{instance}.", 1)
}

// waitSpan starts the span of a wait of the job's; the caller ends it when
// the wait is over.
func waitSpan(ctx context.Context, name string) trace.Span {
	_, s := tracing.FromContext(ctx).Start(ctx, name)
	return s
}

// observe counts a delivery's outcome in the metrics and records it on the
// delivery's span.
func (w *Worker) observe(d *delivery, outcome string, dur time.Duration) {
	w.metrics.observe(w.actionLabel(d.addr.Action), outcome, dur)
	traceOutcome(d, outcome)
}

// traceOutcome records a delivery's outcome on its span.
func traceOutcome(d *delivery, outcome string) {
	span := trace.SpanFromContext(d.ctx)
	span.SetAttributes(attrOutcome.String(outcome), attrAttempt.Int(d.attempt))
}

// traceFailure marks the delivery's span failed with the contract's code
// (no message: it may name a user).
func traceFailure(d *delivery, je *jobs.Error) {
	span := trace.SpanFromContext(d.ctx)
	span.SetAttributes(semconv.ErrorTypeKey.String(je.Code))
	span.SetStatus(codes.Error, je.Code)
}

// traceGiveBack records on the delivery's span that the job was given back
// for delay (a throttle back-off, a turn, a share, a passing error).
func traceGiveBack(d *delivery, delay time.Duration) {
	trace.SpanFromContext(d.ctx).AddEvent("given back", trace.WithAttributes(attrRetryAfter.Int64(delay.Milliseconds())))
}

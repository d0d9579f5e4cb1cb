// Package publisher is the only code that writes results: action results,
// sync reports, indicator snapshots, asset deltas and failure records. Every
// message carries a Nats-Msg-Id so JetStream drops a second copy within the
// stream's duplicate window; every publish waits for the stream's ack, so a
// caller that acks a job after Publish returns never loses its result.
//
// Every message also carries the W3C trace context (traceparent,
// tracestate) of a producer span that is the child of the span in the
// publisher's context (the job's), so that Tevyra's consumer of a result,
// an asset delta or a failure record continues the job's trace.
package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tevyra/m365-worker/internal/retry"
	"github.com/tevyra/m365-worker/internal/roundtrip"
	"github.com/tevyra/m365-worker/internal/tracing"
	"github.com/tevyra/m365-worker/jobs"
)

// Config tunes a Publisher. The zero value is usable.
type Config struct {
	// Subjects names the deployment's subjects. Default prefix "m365".
	Subjects jobs.Subjects
	// MaxPending bounds the publishes awaiting their ack in PublishAll:
	// back-pressure for large batches. Default 256.
	MaxPending int
	// AckTimeout bounds one publish attempt. Default 10s.
	AckTimeout time.Duration
	// MaxElapsed bounds the retries of one message on transient errors (no
	// responders during a leader election, timeouts). Default 30s.
	MaxElapsed time.Duration
	// Untraced publishes without trace context or spans: for writes that
	// are no one's messages (the state bucket's). Default false.
	Untraced bool
}

func (c Config) withDefaults() Config {
	if c.MaxPending <= 0 {
		c.MaxPending = 256
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = 10 * time.Second
	}
	if c.MaxElapsed <= 0 {
		c.MaxElapsed = 30 * time.Second
	}
	return c
}

// Publisher publishes JSON messages to JetStream and waits for their acks.
type Publisher struct {
	js  jetstream.JetStream
	cfg Config
}

// New returns a Publisher writing through js.
func New(js jetstream.JetStream, cfg Config) *Publisher {
	return &Publisher{js: js, cfg: cfg.withDefaults()}
}

// Message is one message to publish.
type Message struct {
	Subject string
	// MsgID becomes Nats-Msg-Id; required.
	MsgID string
	// Value is marshalled to JSON.
	Value any
	// Header holds extra headers.
	Header nats.Header
}

// ErrPublish wraps every failure to store a message.
var ErrPublish = errors.New("publish failed")

func (p *Publisher) msg(ctx context.Context, m Message) (*nats.Msg, error) {
	if m.MsgID == "" {
		return nil, fmt.Errorf("%w: %s: no message id", ErrPublish, m.Subject)
	}
	var data []byte
	if enc, ok := m.Value.(Encoded); ok {
		data = enc
	} else {
		var err error
		if data, err = json.Marshal(m.Value); err != nil {
			return nil, fmt.Errorf("%w: %s: encode: %v", ErrPublish, m.Subject, err)
		}
	}
	nm := nats.NewMsg(m.Subject)
	nm.Data = data
	for k, vs := range m.Header {
		for _, v := range vs {
			nm.Header.Add(k, v)
		}
	}
	nm.Header.Set(jetstream.MsgIDHeader, m.MsgID)
	if !p.cfg.Untraced {
		tracing.Inject(ctx, nm.Header)
	}
	return nm, nil
}

// Encoded is a Message value that is already JSON, published as it is
// (json.Marshal would re-validate and compact it).
type Encoded []byte

// Transient reports whether a JetStream write's error may go away on its
// own (a server restarting, a leader being elected): worth asking again.
func Transient(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected)
}

// Publish stores one message, retrying transient errors with exponential
// backoff until MaxElapsed or ctx ends. A duplicate (same MsgID within the
// stream's window) counts as stored. A message larger than the server's
// max_payload fails at once with an error matching ErrTooLarge.
func (p *Publisher) Publish(ctx context.Context, m Message) (ack *jetstream.PubAck, err error) {
	ctx, end := p.sendSpan(ctx, m.Subject, 1)
	defer func() { end(err) }()
	return p.publish(ctx, m)
}

// publish is Publish within a span already made.
func (p *Publisher) publish(ctx context.Context, m Message) (*jetstream.PubAck, error) {
	nm, err := p.msg(ctx, m)
	if err != nil {
		return nil, err
	}
	policy := retry.Publish
	policy.MaxElapsed = p.cfg.MaxElapsed
	var ack *jetstream.PubAck
	err = retry.Do(ctx, policy, func() error {
		actx, cancel := context.WithTimeout(ctx, p.cfg.AckTimeout)
		defer cancel()
		roundtrip.Add(ctx, 1)
		a, err := p.js.PublishMsg(actx, nm)
		if err != nil {
			if ctx.Err() == nil && Transient(err) {
				return err
			}
			return retry.Permanent(err)
		}
		ack = a
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %s (msg id %s): %w", ErrPublish, m.Subject, m.MsgID, err)
	}
	return ack, nil
}

// ErrTooLarge matches a publish refused because the message is larger than
// the server's max_payload.
var ErrTooLarge = nats.ErrMaxPayload

// PublishAll stores msgs in order with at most MaxPending awaiting their ack,
// and returns once every one is stored or one has failed (the first error).
// Messages on one subject keep their order in the stream.
func (p *Publisher) PublishAll(ctx context.Context, msgs []Message) (err error) {
	if len(msgs) > 0 {
		// One span for the batch, the parent of each message's context.
		var end func(error)
		ctx, end = p.sendSpan(ctx, msgs[0].Subject, len(msgs))
		defer func() { end(err) }()
	}
	type pending struct {
		f jetstream.PubAckFuture
		m Message
	}
	window := make([]pending, 0, p.cfg.MaxPending)
	wait := func(pd pending) error {
		var err error
		timer := time.NewTimer(p.cfg.AckTimeout)
		defer timer.Stop()
		select {
		case <-pd.f.Ok():
			return nil
		case err = <-pd.f.Err():
		case <-timer.C:
			// No ack (the async path has no timeout of its own): the
			// message may have gone nowhere; the resend is deduplicated.
			err = fmt.Errorf("no ack within %s", p.cfg.AckTimeout)
		case <-ctx.Done():
			return fmt.Errorf("%w: %s: %v", ErrPublish, pd.m.Subject, ctx.Err())
		}
		// Resend synchronously: the async path does not retry.
		if _, err2 := p.publish(ctx, pd.m); err2 != nil {
			return fmt.Errorf("%w (async: %v)", err2, err)
		}
		return nil
	}
	for _, m := range msgs {
		if len(window) == cap(window) {
			if err := wait(window[0]); err != nil {
				return err
			}
			window = window[1:]
		}
		nm, err := p.msg(ctx, m)
		if err != nil {
			return err
		}
		f, err := p.js.PublishMsgAsync(nm)
		if err != nil {
			if _, err := p.publish(ctx, m); err != nil {
				return err
			}
			continue
		}
		window = append(window, pending{f, m})
	}
	for _, pd := range window {
		if err := wait(pd); err != nil {
			return err
		}
	}
	return nil
}

// Message ids of the messages a job produces. They are derived from the job
// id so that a redelivered job's second copy is dropped by the stream.
// The instance is part of each id, so one instance's job id can never
// pre-claim or collide with another's.
func resultMsgID(instance, jobID string) string  { return "result:" + instance + ":" + jobID }
func failureMsgID(instance, jobID string) string { return "failure:" + instance + ":" + jobID }

// ActionResult stores an action's result on m365.results.<instance>.actions.
func (p *Publisher) ActionResult(ctx context.Context, r *jobs.ActionResult) error {
	r.SchemaVersion = jobs.SchemaVersion
	_, err := p.Publish(ctx, Message{Subject: p.cfg.Subjects.Results(r.Instance, jobs.ResultActions), MsgID: resultMsgID(r.Instance, r.JobID), Value: r})
	return err
}

// SyncReport stores a sync job's report on m365.results.<instance>.syncs.
func (p *Publisher) SyncReport(ctx context.Context, r *jobs.SyncReport) error {
	r.SchemaVersion = jobs.SchemaVersion
	_, err := p.Publish(ctx, Message{Subject: p.cfg.Subjects.Results(r.Instance, jobs.ResultSyncs), MsgID: resultMsgID(r.Instance, r.JobID), Value: r})
	return err
}

// Indicators stores an indicator snapshot on m365.results.<instance>.indicators.
func (p *Publisher) Indicators(ctx context.Context, ind *jobs.Indicators) error {
	ind.SchemaVersion = jobs.SchemaVersion
	_, err := p.Publish(ctx, Message{Subject: p.cfg.Subjects.Results(ind.Instance, jobs.ResultIndicators), MsgID: "indicators:" + ind.SyncID, Value: ind})
	return err
}

// Failure stores a failure record on m365.failures.<instance>.
func (p *Publisher) Failure(ctx context.Context, f *jobs.FailureRecord) error {
	f.SchemaVersion = jobs.SchemaVersion
	_, err := p.Publish(ctx, Message{Subject: p.cfg.Subjects.Failures(f.Instance), MsgID: failureMsgID(f.Instance, f.JobID), Value: f})
	return err
}

// sendSpan starts the producer span of a publish of n messages to subject
// (OTel messaging conventions), the child of ctx's span; end records the
// outcome. Untraced publishers make none.
func (p *Publisher) sendSpan(ctx context.Context, subject string, n int) (context.Context, func(error)) {
	if p.cfg.Untraced || !trace.SpanFromContext(ctx).SpanContext().IsValid() {
		return ctx, func(error) {}
	}
	tmpl := subjectTemplate(subject)
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemKey.String("nats"),
		semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName("send"),
		semconv.MessagingDestinationName(subject),
		semconv.MessagingDestinationTemplate(tmpl),
	}
	if n > 1 {
		attrs = append(attrs, semconv.MessagingBatchMessageCount(n))
	}
	ctx, span := tracing.FromContext(ctx).Start(ctx, "send "+tmpl, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	return ctx, func(err error) {
		if err != nil {
			span.SetStatus(codes.Error, "not stored")
			span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
		}
		span.End()
	}
}

// subjectTemplate is a results or failures subject with its instance token
// as "{instance}" (<prefix>.results.<instance>.…, <prefix>.failures.<instance>).
func subjectTemplate(subject string) string {
	t := strings.Split(subject, ".")
	if len(t) >= 3 && (t[1] == "results" || t[1] == "failures") {
		t[2] = "{instance}"
	}
	return strings.Join(t, ".")
}

// errorType names a publish failure for a span without its message.
func errorType(err error) string {
	switch {
	case errors.Is(err, ErrTooLarge):
		return "max_payload"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return "timeout"
	}
	return "publish_failed"
}

package notify

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tevyra/m365-worker/internal/tracing"
)

// A notification's trace (OTel semantic conventions, internal/tracing's
// version): each accepted request is a server span, the root of a trace of
// its own (Graph sends no trace context, and one from the internet is not
// trusted); the trigger it stores is a producer span, its child, whose
// context goes in the trigger's headers as traceparent and tracestate, and
// the round the trigger causes links to it. A request that joins a trigger
// being stored links to that trigger's span; a deferred trigger, which
// stands for the requests of a spacing, is a root linking to their spans.
// Refused requests make no span.

// maxLinks bounds the requests a deferred trigger's span links to.
const maxLinks = 64

// Span attributes beside the conventions'.
const (
	attrPool          = attribute.Key("m365.pool")
	attrInstance      = attribute.Key("m365.instance")
	attrNotifications = attribute.Key("m365.notifications")
)

// serverSpan starts the span of a request with accepted notifications of
// t, begun at start.
func (r *Receiver) serverSpan(req *http.Request, t target, start time.Time, accepted int) (context.Context, trace.Span) {
	route := r.cfg.BasePath + "/{pool}/{instance}"
	if strings.HasSuffix(req.URL.Path, LifecycleSuffix) {
		route += LifecycleSuffix
	}
	scheme, proto := "http", "1.1"
	if req.TLS != nil {
		scheme = "https"
	}
	if req.ProtoMajor == 2 {
		proto = "2"
	}
	attrs := []attribute.KeyValue{
		semconv.HTTPRequestMethodPost,
		semconv.HTTPRoute(route),
		semconv.URLPath(req.URL.Path),
		semconv.URLScheme(scheme),
		semconv.NetworkProtocolVersion(proto),
		attrPool.String(t.pool),
		attrInstance.String(t.instance),
		attrNotifications.Int(accepted),
	}
	if host, _, err := net.SplitHostPort(req.RemoteAddr); err == nil {
		attrs = append(attrs, semconv.ClientAddress(host))
	}
	if ua := req.UserAgent(); ua != "" {
		attrs = append(attrs, semconv.UserAgentOriginal(bounded(ua, 256)))
	}
	return tracing.Tracer(r.cfg.TracerProvider).Start(req.Context(), "POST "+route, trace.WithNewRoot(),
		trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start), trace.WithAttributes(attrs...))
}

// traceAnswer records a request's answer on its span: a 5xx is an error.
func traceAnswer(span trace.Span, a answer) {
	status := answerInfo[a].status
	span.SetAttributes(semconv.HTTPResponseStatusCode(status))
	if status >= 500 {
		span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(status)))
		span.SetStatus(codes.Error, answerInfo[a].label)
	}
}

// sendSpan starts the producer span of one attempt to store t's trigger
// on subject, the child of ctx's span (a request's) or, for a deferred
// trigger, a root linking to the requests' spans.
func (r *Receiver) sendSpan(ctx context.Context, t target, subject string, size int, links []trace.Link) (context.Context, trace.Span) {
	tmpl := TriggerSubject(r.cfg.Subjects, t.pool, "{instance}")
	return tracing.Tracer(r.cfg.TracerProvider).Start(ctx, "send "+tmpl, trace.WithSpanKind(trace.SpanKindProducer), trace.WithLinks(links...),
		trace.WithAttributes(
			semconv.MessagingSystemKey.String("nats"),
			semconv.MessagingOperationTypeSend,
			semconv.MessagingOperationName("send"),
			semconv.MessagingDestinationName(subject),
			semconv.MessagingDestinationTemplate(tmpl),
			semconv.MessagingMessageID(TriggerJob(t.instance).ID),
			semconv.MessagingMessageBodySize(size),
			attrPool.String(t.pool),
			attrInstance.String(t.instance),
		))
}

// traceSendError records a failed attempt on its span.
func traceSendError(span trace.Span, err error) {
	kind := "publish_failed"
	switch {
	case errors.Is(err, errNoNATS):
		kind = "not_connected"
	case errors.Is(err, context.DeadlineExceeded):
		kind = "timeout"
	}
	span.SetAttributes(semconv.ErrorTypeKey.String(kind))
	span.SetStatus(codes.Error, "not stored")
}

// linkTo is a link to ctx's span, if it has one.
func linkTo(ctx context.Context) (trace.Link, bool) {
	sc := trace.SpanContextFromContext(ctx)
	return trace.Link{SpanContext: sc}, sc.IsValid()
}

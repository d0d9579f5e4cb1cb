package graphclient

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tevyra/m365-worker/internal/tracing"
)

// Every Graph request the transport sends is one client span (OTel HTTP
// conventions), the child of the span in the request's context (a job's, a
// round's page): Graph's request-id and our client-request-id are its
// attributes, the ids Microsoft support traces a call by. A resend after a
// throttle or a 5xx is a span of its own (http.request.resend_count); the
// waits before a request (the tenant's Retry-After pause, its budget) and
// between attempts are spans too. No header, body, query or token is
// recorded; ids in the path are replaced by {id} (a UPN names a person).
const (
	attrRequestID       = attribute.Key("graph.request_id")
	attrClientRequestID = attribute.Key("graph.client_request_id")
	attrWait            = attribute.Key("graph.wait_ms")
	attrPage            = attribute.Key("graph.page")
	attrPageItems       = attribute.Key("graph.page_items")
)

// requestSpan starts the span of one attempt of req.
func requestSpan(ctx context.Context, req *http.Request, attempt int) trace.Span {
	tmpl := pathTemplate(req.URL.EscapedPath())
	attrs := []attribute.KeyValue{
		semconv.HTTPRequestMethodKey.String(req.Method),
		semconv.ServerAddress(req.URL.Hostname()),
		semconv.URLScheme(req.URL.Scheme),
		semconv.URLTemplate(tmpl),
		semconv.URLFull(req.URL.Scheme + "://" + req.URL.Host + tmpl),
		attrClientRequestID.String(req.Header.Get("client-request-id")),
	}
	if port, err := strconv.Atoi(req.URL.Port()); err == nil {
		attrs = append(attrs, semconv.ServerPort(port))
	} else {
		attrs = append(attrs, semconv.ServerPort(443))
	}
	if attempt > 1 {
		attrs = append(attrs, semconv.HTTPRequestResendCount(attempt-1))
	}
	_, span := tracing.FromContext(ctx).Start(ctx, req.Method+" "+tmpl, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return span
}

// endRequestSpan records an attempt's answer (or failure) and ends its span.
func endRequestSpan(span trace.Span, resp *http.Response, err error) {
	switch {
	case err != nil:
		span.SetAttributes(semconv.ErrorTypeKey.String("network"))
		span.SetStatus(codes.Error, "Graph unreachable")
	default:
		span.SetAttributes(semconv.HTTPResponseStatusCode(resp.StatusCode), attrRequestID.String(resp.Header.Get("request-id")))
		if resp.StatusCode >= 400 {
			span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(resp.StatusCode)))
			span.SetStatus(codes.Error, http.StatusText(resp.StatusCode))
		}
	}
	span.End()
}

// waitFor sleeps d within a span named what (a throttle back-off, the
// tenant's pause or budget); a wait under a millisecond makes no span.
func waitFor(ctx context.Context, what string, d time.Duration) error {
	if d < time.Millisecond {
		return sleepCtx(ctx, d)
	}
	_, span := tracing.FromContext(ctx).Start(ctx, what, trace.WithAttributes(attrWait.Int64(d.Milliseconds())))
	defer span.End()
	return sleepCtx(ctx, d)
}

// pathTemplate is a Graph path with its ids as {id}: GUIDs, UPNs and
// addresses, quoted keys.
func pathTemplate(path string) string {
	segs := strings.Split(path, "/")
	for i, s := range segs {
		if isKey(s) {
			segs[i] = "{id}"
		}
	}
	return strings.Join(segs, "/")
}

func isKey(s string) bool {
	if strings.ContainsAny(s, "@'()=%") {
		return true
	}
	_, err := uuid.Parse(s)
	return err == nil
}

// pageSpan starts the span of one page of a paged read: its request and its
// handling.
func pageSpan(ctx context.Context, op string, n int) (context.Context, trace.Span) {
	return tracing.FromContext(ctx).Start(ctx, "page "+op, trace.WithAttributes(attrPage.Int(n)))
}

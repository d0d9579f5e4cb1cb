// Package tracing is the module's OpenTelemetry tracing: the scope every
// span is made under, the W3C trace context in NATS headers, the ids a log
// line carries, and the process's TracerProvider from the standard OTEL_*
// environment (setup.go).
//
// Code that makes spans takes its tracer from the context (FromContext): the
// worker starts each job's span with the provider it was configured with and
// keeps that provider in the job's context (WithProvider), and everything
// below it (the Graph client's requests, a round's pages, the publisher's
// sends) follows, with no provider passed around and no global read. (The
// provider of the span in the context is not enough: the Graph SDK puts
// spans of the global provider in the contexts it hands down.)
package tracing

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Scope is the instrumentation scope of every span this module makes.
const Scope = "github.com/tevyra/m365-worker"

// SemConvVersion is the OpenTelemetry semantic conventions version the spans
// follow (their schema URL).
const SemConvVersion = "1.43.0"

// Tracer is the module's tracer from tp.
func Tracer(tp trace.TracerProvider) trace.Tracer {
	return tp.Tracer(Scope, trace.WithSchemaURL(semconv.SchemaURL))
}

type providerKey struct{}

// WithProvider returns ctx whose spans below are made by tp.
func WithProvider(ctx context.Context, tp trace.TracerProvider) context.Context {
	return context.WithValue(ctx, providerKey{}, tp)
}

// FromContext is the module's tracer from the provider WithProvider put in
// ctx, else from the provider of the span in ctx (a no-op tracer, which
// still carries ctx's span context along, when there is none).
func FromContext(ctx context.Context) trace.Tracer {
	if tp, ok := ctx.Value(providerKey{}).(trace.TracerProvider); ok {
		return Tracer(tp)
	}
	return Tracer(trace.SpanFromContext(ctx).TracerProvider())
}

// propagator is the W3C trace context: traceparent and tracestate.
var propagator = propagation.TraceContext{}

// headerCarrier reads and writes W3C trace context keys in NATS headers,
// which are case-sensitive: written lower case as the W3C spells them, read
// in any case.
type headerCarrier nats.Header

func (h headerCarrier) Get(key string) string {
	if v, ok := h[key]; ok && len(v) > 0 {
		return v[0]
	}
	for k, v := range h {
		if strings.EqualFold(k, key) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

func (h headerCarrier) Set(key, value string) { h[key] = []string{value} }

func (h headerCarrier) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

// Extract returns ctx with the remote span context of h's traceparent and
// tracestate, if any.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return propagator.Extract(ctx, headerCarrier(h))
}

// Inject writes ctx's span context into h as traceparent (and tracestate):
// nothing when ctx has none. h must not be nil.
func Inject(ctx context.Context, h nats.Header) {
	propagator.Inject(ctx, headerCarrier(h))
}

// LogAttrs are the trace_id and span_id of ctx's span, for a log line: none
// when ctx has no valid span context.
func LogAttrs(ctx context.Context) []any {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return nil
	}
	return []any{"trace_id", sc.TraceID().String(), "span_id", sc.SpanID().String()}
}

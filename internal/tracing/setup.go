package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	"go.opentelemetry.io/otel/trace/noop"
)

// Provider is the process's TracerProvider and how to flush it.
type Provider struct {
	trace.TracerProvider
	// Exporting says whether spans leave the process (an exporter is
	// configured).
	Exporting bool
	shutdown  func(context.Context) error
}

// Shutdown flushes the spans not yet exported and stops the exporter.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p.shutdown == nil {
		return nil
	}
	return p.shutdown(ctx)
}

// Setup builds the process's TracerProvider from the standard OTEL_*
// environment variables and installs it as the global one (which only this
// module's scope may use: see ownSpansOnly).
//
// Nothing is exported unless configured: spans are recorded and sent only
// when OTEL_TRACES_EXPORTER is "otlp" or an OTLP endpoint is set
// (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), and
// OTEL_SDK_DISABLED is not "true" nor OTEL_TRACES_EXPORTER "none". The
// protocol is OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
// OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf" (the default) or "grpc"; the
// exporters read their other variables themselves (headers, TLS,
// timeouts, compression). Sampling is OTEL_TRACES_SAMPLER (default
// parentbased_always_on: a job follows the sampling decision in its
// traceparent); the resource is service.name = service unless
// OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say otherwise.
//
// Unconfigured, the provider makes no spans but carries a job's incoming
// trace context through to its results, so Tevyra's trace still joins up.
func Setup(ctx context.Context, service, version string, log *slog.Logger) (*Provider, error) {
	exp, err := exporterFromEnv(ctx, os.Getenv)
	if err != nil {
		return nil, err
	}
	if exp == nil {
		p := &Provider{TracerProvider: noop.NewTracerProvider()}
		otel.SetTracerProvider(ownSpansOnly{p: p})
		return p, nil
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(service), semconv.ServiceVersion(version)),
		resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost())
	if err != nil {
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("tracing: exporter error", "error", err) }))
	p := &Provider{TracerProvider: tp, Exporting: true, shutdown: tp.Shutdown}
	otel.SetTracerProvider(ownSpansOnly{p: p})
	return p, nil
}

// exporterFromEnv is the OTLP span exporter the environment asks for, or
// nil when it asks for none.
func exporterFromEnv(ctx context.Context, env func(string) string) (sdktrace.SpanExporter, error) {
	if strings.EqualFold(env("OTEL_SDK_DISABLED"), "true") {
		return nil, nil
	}
	switch kind := strings.ToLower(strings.TrimSpace(env("OTEL_TRACES_EXPORTER"))); kind {
	case "none":
		return nil, nil
	case "otlp":
	case "":
		if env("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return nil, nil
		}
	default:
		return nil, fmt.Errorf("tracing: OTEL_TRACES_EXPORTER=%q: only otlp and none are supported", kind)
	}
	proto := env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = env("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch proto {
	case "", "http/protobuf":
		return otlptracehttp.New(ctx)
	case "grpc":
		return otlptracegrpc.New(ctx)
	}
	return nil, fmt.Errorf("tracing: OTLP protocol %q: use http/protobuf or grpc", proto)
}

// ownSpansOnly is the global TracerProvider: the module's scope gets the
// real tracer, every other scope a no-op one. msgraph-sdk-go's HTTP layer
// (kiota) makes a span for every middleware and deserialisation step
// through the global provider, without a span kind and with wrong server
// attributes; the Graph client makes one clean client span per request
// instead (graphclient/transport.go). A no-op tracer keeps the caller's
// span context, so the Graph client's spans still have the job's as their
// parent.
type ownSpansOnly struct {
	embedded.TracerProvider
	p *Provider
}

var _ trace.TracerProvider = ownSpansOnly{}

func (o ownSpansOnly) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	if name == Scope || strings.HasPrefix(name, Scope+"/") {
		return o.p.Tracer(name, opts...)
	}
	return noop.NewTracerProvider().Tracer(name)
}

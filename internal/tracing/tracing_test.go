package tracing

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

func TestTraceContextInNATSHeaders(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, key := range []string{"traceparent", "Traceparent", "TRACEPARENT"} {
		h := nats.Header{key: {tp}, "tracestate": {"tevyra=abc"}}
		sc := trace.SpanContextFromContext(Extract(context.Background(), h))
		if sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || !sc.IsRemote() || sc.TraceState().Get("tevyra") != "abc" {
			t.Fatalf("%s: %v", key, sc)
		}
		out := nats.Header{}
		Inject(trace.ContextWithSpanContext(context.Background(), sc), out)
		if out.Get("traceparent") != tp || out.Get("tracestate") != "tevyra=abc" {
			t.Fatalf("injected %v", out)
		}
		if got := LogAttrs(trace.ContextWithSpanContext(context.Background(), sc)); len(got) != 4 || got[1] != "4bf92f3577b34da6a3ce929d0e0e4736" || got[3] != "00f067aa0ba902b7" {
			t.Fatalf("log attrs %v", got)
		}
	}
	out := nats.Header{}
	Inject(context.Background(), out)
	if len(out) != 0 || LogAttrs(context.Background()) != nil {
		t.Fatalf("no span context, yet %v", out)
	}
}

func TestExporterOnlyWhenConfigured(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want bool
		err  bool
	}{
		{env: nil},
		{env: map[string]string{"OTEL_SERVICE_NAME": "x"}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, want: true},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, want: true},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, want: true},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}},
		{env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, err: true},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, err: true},
	} {
		exp, err := exporterFromEnv(context.Background(), func(k string) string { return c.env[k] })
		if (err != nil) != c.err || (exp != nil) != c.want {
			t.Errorf("%v: exporter %v, error %v", c.env, exp, err)
		}
		if exp != nil {
			_ = exp.Shutdown(context.Background())
		}
	}
}

// The global provider serves the module's scope only: the Graph SDK's
// spans (kiota's scopes) are not recorded, and a span made under one of
// them keeps its caller's span context, so the module's spans below it
// keep their parent.
func TestGlobalProviderServesTheModuleOnly(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	sdk := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	g := ownSpansOnly{p: &Provider{TracerProvider: sdk}}
	ctx, job := g.Tracer(Scope).Start(context.Background(), "job")
	kctx, kiota := g.Tracer("github.com/microsoft/kiota-http-go").Start(ctx, "getHttpResponseMessage")
	if kiota.IsRecording() || kiota.SpanContext().SpanID() != job.SpanContext().SpanID() {
		t.Fatalf("kiota's span: recording %v, span context %v", kiota.IsRecording(), kiota.SpanContext())
	}
	_, req := Tracer(sdk).Start(kctx, "GET")
	req.End()
	kiota.End()
	job.End()
	got := exp.GetSpans()
	if len(got) != 2 || got[0].Name != "GET" || got[0].Parent.SpanID() != job.SpanContext().SpanID() {
		t.Fatalf("spans: %v", got.Snapshots())
	}
}

// Setup exports over OTLP/HTTP to the endpoint the environment names: a
// span made under the module's scope arrives at a collector (here a real
// HTTP server standing in for one), one made under another scope does not.
func TestSetupExportsToTheConfiguredEndpoint(t *testing.T) {
	got := make(chan []string, 16)
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if r.URL.Path == "/v1/traces" && proto.Unmarshal(b, &req) == nil {
			var names []string
			for _, rs := range req.ResourceSpans {
				for _, ss := range rs.ScopeSpans {
					for _, sp := range ss.Spans {
						names = append(names, ss.Scope.GetName()+" "+sp.Name)
					}
				}
			}
			got <- names
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	t.Setenv("OTEL_SERVICE_NAME", "m365-worker-test")
	p, err := Setup(context.Background(), "m365-worker", "test", slog.New(slog.DiscardHandler))
	if err != nil || !p.Exporting {
		t.Fatalf("setup: %v (exporting %v)", err, p != nil && p.Exporting)
	}
	_, s := otel.GetTracerProvider().Tracer(Scope).Start(context.Background(), "job")
	s.End()
	_, k := otel.GetTracerProvider().Tracer("github.com/microsoft/kiota-http-go").Start(context.Background(), "kiota")
	k.End()
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case names := <-got:
		if len(names) != 1 || names[0] != Scope+" job" {
			t.Fatalf("exported %v, want the module's span only", names)
		}
	default:
		t.Fatal("nothing reached the collector")
	}
	if k.SpanContext().IsValid() {
		t.Error("the SDK's span was recorded")
	}

	// Unconfigured: nothing is exported, and the provider records nothing.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	p, err = Setup(context.Background(), "m365-worker", "test", slog.New(slog.DiscardHandler))
	if err != nil || p.Exporting {
		t.Fatalf("unconfigured: %v, exporting %v", err, p.Exporting)
	}
	if _, s := otel.GetTracerProvider().Tracer(Scope).Start(context.Background(), "job"); s.IsRecording() {
		t.Error("an unconfigured provider records")
	}
}

package notify_test

import (
	"context"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tevyra/m365-worker/internal/notify"
)

func spanAttr(s tracetest.SpanStub, key string) string {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// A trigger carries the trace context of its publish's span: the first of
// a spacing is the child of the accepted request's server span; a deferred
// one, standing for the requests of its spacing, is a root linking to
// theirs. A refused request makes no span.
func TestTriggersCarryTheirPublishSpan(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	e := newEnv(t, notify.Config{Spacing: time.Hour, TracerProvider: tp})
	triggers := make(chan *nats.Msg, 8)
	sub, err := e.nc.ChanSubscribe("m365.jobs.default.acme.notified", triggers)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	cs := clientState("default", "acme")
	if got := e.post("/default/acme", notifications(1, ptr("forged"))); got != http.StatusForbidden {
		t.Fatalf("forged: %d", got)
	}
	for i := range 3 { // the first stored at once, the others deferred
		if got := e.post("/default/acme", notifications(1+i, &cs)); got != http.StatusAccepted {
			t.Fatalf("notification %d: %d", i, got)
		}
	}
	e.rcv.Close() // publishes the deferred trigger
	var sent []trace.SpanContext
	for range 2 {
		m := <-triggers
		sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": m.Header.Get("traceparent")}))
		if !sc.IsValid() || !sc.IsSampled() {
			t.Fatalf("trigger without a sampled traceparent: %v", m.Header)
		}
		sent = append(sent, sc)
	}

	spans := map[trace.SpanID]tracetest.SpanStub{}
	var servers []tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		spans[s.SpanContext.SpanID()] = s
		if s.SpanKind == trace.SpanKindServer {
			servers = append(servers, s)
		}
	}
	sort.Slice(servers, func(i, j int) bool { return servers[i].StartTime.Before(servers[j].StartTime) })
	if len(servers) != 3 {
		t.Fatalf("%d server spans, want one per accepted request", len(servers))
	}
	for _, s := range servers {
		if s.Name != "POST /{pool}/{instance}" || spanAttr(s, "http.route") != "/{pool}/{instance}" || spanAttr(s, "http.response.status_code") != "202" ||
			spanAttr(s, "url.scheme") != "https" || spanAttr(s, "m365.instance") != "acme" || s.Parent.IsValid() {
			t.Errorf("server span %s %v (parent %v)", s.Name, s.Attributes, s.Parent)
		}
	}
	first, deferred := spans[sent[0].SpanID()], spans[sent[1].SpanID()]
	for _, s := range []tracetest.SpanStub{first, deferred} {
		if s.Name != "send m365.jobs.default.{instance}.notified" || s.SpanKind != trace.SpanKindProducer ||
			spanAttr(s, "messaging.system") != "nats" || spanAttr(s, "messaging.operation.type") != "send" ||
			spanAttr(s, "messaging.destination.name") != "m365.jobs.default.acme.notified" || spanAttr(s, "messaging.message.id") != "notified-acme" {
			t.Errorf("a trigger's span: %s %v %v", s.Name, s.SpanKind, s.Attributes)
		}
	}
	if first.Parent.SpanID() != servers[0].SpanContext.SpanID() {
		t.Errorf("the first trigger's span is not the child of the first request's: parent %v", first.Parent)
	}
	if deferred.Parent.IsValid() || len(deferred.Links) != 2 ||
		deferred.Links[0].SpanContext.SpanID() != servers[1].SpanContext.SpanID() || deferred.Links[1].SpanContext.SpanID() != servers[2].SpanContext.SpanID() {
		t.Errorf("the deferred trigger's span: parent %v, links %v; want a root linking to the second and third requests'", deferred.Parent, deferred.Links)
	}
}

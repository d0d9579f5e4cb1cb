package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// spans is what an in-memory exporter collected, by span id.
type spans map[trace.SpanID]tracetest.SpanStub

func collected(exp *tracetest.InMemoryExporter) spans {
	out := spans{}
	for _, s := range exp.GetSpans() {
		out[s.SpanContext.SpanID()] = s
	}
	return out
}

// descends reports whether s has ancestor among the recorded spans.
func (ss spans) descends(s tracetest.SpanStub, ancestor trace.SpanID) bool {
	for p := s.Parent.SpanID(); p.IsValid(); {
		if p == ancestor {
			return true
		}
		ps, ok := ss[p]
		if !ok {
			return false
		}
		p = ps.Parent.SpanID()
	}
	return false
}

func attr(s tracetest.SpanStub, key string) string {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// traceparentOf reads the W3C trace context a message carries.
func traceparentOf(t *testing.T, h nats.Header) trace.SpanContext {
	t.Helper()
	sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": h.Get("traceparent"), "tracestate": h.Get("tracestate")}))
	if !sc.IsValid() {
		t.Fatalf("no valid traceparent in %v", h)
	}
	return sc
}

// publishTraced publishes a job the way Tevyra does, with the W3C trace
// context of its span in the headers.
func publishTraced(t *testing.T, e *env, ctx context.Context, j *jobs.Job) {
	t.Helper()
	j.SchemaVersion = jobs.SchemaVersion
	b, _ := json.Marshal(j)
	m := nats.NewMsg(jobs.Subjects{}.JobSubject("default", j))
	m.Data = b
	sc := trace.SpanContextFromContext(ctx)
	m.Header.Set("traceparent", fmt.Sprintf("00-%s-%s-%s", sc.TraceID(), sc.SpanID(), sc.TraceFlags()))
	m.Header.Set("tracestate", "tevyra=t61rcWkgMzE")
	if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// One trace from Tevyra's span through the job's span and its Graph calls
// to the traceparent on the job's result, with Graph's request ids on the
// Graph calls' spans.
func TestTraceFromTevyraToGraphAndBack(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	e := newEnv(t, graphsim.Options{Users: 20, Groups: 4, NoThrottling: true})
	logs := &syncBuffer{}
	e.logger = slog.New(slog.NewTextHandler(logs, nil))
	e.startWorker(worker.Config{TracerProvider: tp})
	e.addInstance("acme", 0, time.Hour)
	rep := e.syncNow("acme", true) // a round without a parent: a trace of its own
	snap, _ := e.sim.Export(e.sim.Credentials()[0].TenantID)
	upn := snap.Users[0].UserPrincipalName

	// Tevyra's span, and the job it publishes under it.
	ctx, tevyra := tp.Tracer("tevyra").Start(context.Background(), "tevyra: licence a user", trace.WithSpanKind(trace.SpanKindProducer))
	params, _ := json.Marshal(jobs.AssignLicenseParams{UserRef: jobs.UserRef{User: upn}, SKU: "FLOW_FREE"})
	publishTraced(t, e, ctx, &jobs.Job{ID: "traced-1", Instance: "acme", Action: jobs.FullAction(jobs.ActionAssignLicense), Params: params})
	tevyra.End()
	ok(t, e.result("acme", "traced-1"))
	tid := tevyra.SpanContext().TraceID()

	// The result carries the trace on.
	var resultTP trace.SpanContext
	for _, m := range workertest.Messages(t, e.js, "M365_RESULTS", "m365.results.acme.actions") {
		var r jobs.ActionResult
		_ = json.Unmarshal(m.Data(), &r)
		if r.JobID == "traced-1" {
			resultTP = traceparentOf(t, m.Headers())
		}
	}
	if resultTP.TraceID() != tid {
		t.Fatalf("the result's trace %s, Tevyra's %s", resultTP.TraceID(), tid)
	}
	if got := resultTP.TraceState().Get("tevyra"); got != "t61rcWkgMzE" {
		t.Errorf("the result's tracestate lost Tevyra's entry: %q", resultTP.TraceState())
	}

	var ss spans
	var job tracetest.SpanStub
	workertest.Eventually(t, 30*time.Second, "the job's span and the result's send span", func() bool {
		ss = collected(exp)
		job = tracetest.SpanStub{}
		for _, s := range ss {
			if s.SpanKind == trace.SpanKindConsumer && attr(s, "messaging.message.id") == "traced-1" && attr(s, "m365.outcome") == "succeeded" {
				job = s
			}
		}
		_, sent := ss[resultTP.SpanID()]
		return job.SpanContext.IsValid() && sent
	})

	// The job's span: the child of Tevyra's, a consumer span of the
	// messaging conventions.
	if job.Parent.SpanID() != tevyra.SpanContext().SpanID() || job.SpanContext.TraceID() != tid {
		t.Fatalf("the job's span is not the child of Tevyra's: parent %s", job.Parent.SpanID())
	}
	if job.Name != "process m365.jobs.default.{instance}.action.assign_license" {
		t.Errorf("the job's span is named %q", job.Name)
	}
	for k, want := range map[string]string{
		"messaging.system": "nats", "messaging.operation.type": "process", "messaging.operation.name": "process",
		"messaging.destination.name": "m365.jobs.default.acme.action.assign_license", "messaging.consumer.group.name": "m365_pool_default",
		"m365.instance": "acme", "m365.action": "microsoft-365.assign_license",
	} {
		if got := attr(job, k); got != want {
			t.Errorf("job span %s = %q, want %q", k, got, want)
		}
	}
	if job.InstrumentationScope.SchemaURL != "https://opentelemetry.io/schemas/1.43.0" {
		t.Errorf("schema URL %q", job.InstrumentationScope.SchemaURL)
	}

	// The result's send span is the job's child.
	send := ss[resultTP.SpanID()]
	if send.SpanKind != trace.SpanKindProducer || send.Parent.SpanID() != job.SpanContext.SpanID() || send.Name != "send m365.results.{instance}.actions" {
		t.Errorf("the result's span: %s %s, parent %s", send.Name, send.SpanKind, send.Parent.SpanID())
	}

	// The wait for the target's turn and lock is the job's child.
	var waited bool
	for _, s := range ss {
		if s.Name == "wait for the target's turn and lock" && s.Parent.SpanID() == job.SpanContext.SpanID() {
			waited = true
		}
	}
	if !waited {
		t.Error("no span of the wait for the target's turn")
	}

	// Every Graph call of the job is a client span under it, with Graph's
	// request-id and our client-request-id; the licence's POST among them.
	var calls []tracetest.SpanStub
	for _, s := range ss {
		if s.SpanKind == trace.SpanKindClient && ss.descends(s, job.SpanContext.SpanID()) {
			calls = append(calls, s)
		}
	}
	var posted bool
	for _, c := range calls {
		if attr(c, "graph.request_id") == "" || attr(c, "graph.client_request_id") == "" || attr(c, "http.response.status_code") == "" {
			t.Errorf("Graph call %s without its ids or status: %v", c.Name, c.Attributes)
		}
		if c.Name == "POST /v1.0/users/{id}/assignLicense" && attr(c, "http.response.status_code") == "200" {
			posted = true
		}
		if strings.Contains(attr(c, "url.full"), "@") {
			t.Errorf("a UPN in a span: %s", attr(c, "url.full"))
		}
	}
	if !posted {
		names := []string{}
		for _, c := range calls {
			names = append(names, c.Name)
		}
		t.Errorf("no span of the assignLicense POST among the job's Graph calls: %v", names)
	}
	// One span per Graph request: none of the SDK's own (kiota's
	// middleware spans) leaked in.
	for _, s := range ss {
		if s.InstrumentationScope.Name != "github.com/tevyra/m365-worker" && s.InstrumentationScope.Name != "tevyra" {
			t.Errorf("a span of scope %q: %s", s.InstrumentationScope.Name, s.Name)
		}
	}

	// The job's log lines carry its trace and span ids.
	if want := fmt.Sprintf("trace_id=%s span_id=%s", tid, job.SpanContext.SpanID()); !strings.Contains(logs.String(), want) {
		t.Errorf("no log line with %s:\n%s", want, logs.String())
	}

	// The round is a trace of its own with its pages, and its asset deltas
	// carry it on.
	var round tracetest.SpanStub
	for _, s := range ss {
		if s.SpanKind == trace.SpanKindConsumer && attr(s, "messaging.message.id") == rep.JobID && attr(s, "m365.outcome") == "succeeded" {
			round = s
		}
	}
	if !round.SpanContext.IsValid() || round.Parent.IsValid() {
		t.Fatalf("the round's span: %+v", round)
	}
	pages := map[string]int{}
	for _, s := range ss {
		if strings.HasPrefix(s.Name, "page ") && s.Parent.SpanID() == round.SpanContext.SpanID() {
			pages[s.Name]++
			var fetched bool
			for _, c := range ss {
				fetched = fetched || c.SpanKind == trace.SpanKindClient && c.Parent.SpanID() == s.SpanContext.SpanID() && attr(c, "graph.request_id") != ""
			}
			if !fetched {
				t.Errorf("%s (page %s) has no Graph request under it", s.Name, attr(s, "graph.page"))
			}
		}
	}
	if len(pages) < 2 {
		t.Errorf("the round's pages: %v", pages)
	}
	var roundAssets int
	for _, m := range workertest.Messages(t, e.js, "M365_RESULTS", "m365.results.acme.assets.>") {
		if traceparentOf(t, m.Headers()).TraceID() == round.SpanContext.TraceID() {
			roundAssets++
		}
	}
	if roundAssets == 0 {
		t.Error("no asset delta of the round carries its trace")
	}

	// A notification trigger stands for the notifications rolled up into
	// it: the round it causes links to the context it carries.
	tctx, receiver := tp.Tracer("receiver").Start(context.Background(), "receiver: trigger acme")
	receiver.End()
	trig := nats.NewMsg(jobs.Subjects{}.NotifiedJob("default", "acme"))
	trig.Data = []byte(`{"schema_version":1,"id":"notified-acme","instance":"acme","action":"sync","requested_by":"graph-notification"}`)
	rsc := trace.SpanContextFromContext(tctx)
	trig.Header.Set("traceparent", fmt.Sprintf("00-%s-%s-%s", rsc.TraceID(), rsc.SpanID(), rsc.TraceFlags()))
	if _, err := e.js.PublishMsg(context.Background(), trig); err != nil {
		t.Fatal(err)
	}
	var notified tracetest.SpanStub
	workertest.Eventually(t, 60*time.Second, "the notified round's span", func() bool {
		for _, s := range collected(exp) {
			if attr(s, "messaging.destination.name") == "m365.jobs.default.acme.notified" && attr(s, "m365.outcome") == "succeeded" {
				notified = s
				return true
			}
		}
		return false
	})
	if notified.Parent.IsValid() || len(notified.Links) != 1 || notified.Links[0].SpanContext.SpanID() != rsc.SpanID() ||
		notified.Name != "process m365.jobs.default.{instance}.notified" || attr(notified, "m365.trigger") != jobs.TriggerNotification {
		t.Errorf("the notified round: %s, parent %s, links %v", notified.Name, notified.Parent.SpanID(), notified.Links)
	}
	ss = collected(exp)

	// No secret in any span: the app's client secret, a bearer token.
	secret := e.sim.Credentials()[0].ClientSecret
	for _, s := range ss {
		for _, kv := range s.Attributes {
			if v := kv.Value.Emit(); strings.Contains(v, secret) || strings.Contains(strings.ToLower(v), "bearer") {
				t.Errorf("span %s carries a secret in %s", s.Name, kv.Key)
			}
		}
	}
}

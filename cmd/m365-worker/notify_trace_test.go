package main

import (
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// The receiver exports its spans where the OTEL_* environment says, as the
// workers do: a collector (a real HTTP server standing in for one) gets
// the accepted request's server span and its child, the trigger's publish,
// whose context the stored trigger carries, under the service
// m365-worker-notify.
func TestNotifyExportsTraces(t *testing.T) {
	spans := make(chan *tracepb.ResourceSpans, 16)
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if r.URL.Path == "/v1/traces" && proto.Unmarshal(b, &req) == nil {
			for _, rs := range req.ResourceSpans {
				spans <- rs
			}
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()
	ns := workertest.Start(t)
	_, js := ns.Connect(t)
	master := filepath.Join(t.TempDir(), "master.key")
	_ = os.WriteFile(master, []byte("a-trace-test-master-key-of-at-least-32-bytes\n"), 0o600)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	s := start(t, "notify", "--nats", ns.URL, "--listen", "127.0.0.1:0", "--insecure-http", "--master-key-file", master, "--drain", "0s")
	base := strings.TrimPrefix(s.waitLine(t, "notify listening on "), "notify listening on ")
	cs := notify.ClientState(notify.PoolKey([]byte("a-trace-test-master-key-of-at-least-32-bytes"), "default"), "acme")
	note := `{"value":[{"subscriptionId":"s1","changeType":"updated","resource":"Users/u1","clientState":"` + cs + `","tenantId":"t1","resourceData":{"id":"u1"}}]}`
	resp, err := http.Post(base+"/default/acme", "application/json", strings.NewReader(note))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("a notification: %d", resp.StatusCode)
	}
	s.interrupt(t) // flushes the spans on exit

	byName := map[string]*tracepb.Span{}
	for len(byName) < 2 {
		select {
		case rs := <-spans:
			if svc := resourceAttr(rs, "service.name"); svc != "m365-worker-notify" {
				t.Errorf("service.name %q", svc)
			}
			for _, ss := range rs.ScopeSpans {
				for _, sp := range ss.Spans {
					byName[sp.Name] = sp
				}
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("the collector got %d spans, want the request's and the publish's", len(byName))
		}
	}
	server, send := byName["POST /{pool}/{instance}"], byName["send m365.jobs.default.{instance}.notified"]
	if server == nil || send == nil || server.Kind != tracepb.Span_SPAN_KIND_SERVER || send.Kind != tracepb.Span_SPAN_KIND_PRODUCER ||
		string(send.ParentSpanId) != string(server.SpanId) {
		t.Fatalf("spans %v: want the server span and its child, the producer span", byName)
	}
	msgs := workertest.Messages(t, js, worker.Topology{}.JobsStream(), "m365.jobs.default.acme.notified")
	if len(msgs) != 1 || !strings.Contains(msgs[0].Headers().Get("traceparent"), "-"+hex.EncodeToString(send.SpanId)+"-") {
		t.Fatalf("the trigger does not carry the publish's context: %v", msgs)
	}
}

func resourceAttr(rs *tracepb.ResourceSpans, key string) string {
	for _, kv := range rs.GetResource().GetAttributes() {
		if kv.Key == key {
			return kv.Value.GetStringValue()
		}
	}
	return ""
}

package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// The receiver as deployed: the binary over HTTPS with its certificate,
// against a JetStream server set up by worker.Setup. Graph's handshake is
// answered; a notification with the instance's clientState makes one
// trigger in the jobs stream, one with a wrong clientState none.
func TestNotifyCommand(t *testing.T) {
	ns := workertest.Start(t)
	nc, js := ns.Connect(t)
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	raw := make([]byte, 48)
	_, _ = rand.Read(raw)
	master := base64.StdEncoding.EncodeToString(raw)
	secretFile := filepath.Join(dir, "notify.key")
	if err := os.WriteFile(secretFile, []byte(master+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	seen, err := nc.SubscribeSync("m365.jobs.*.*.notified")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	s := start(t, "notify", "--nats", ns.URL, "--listen", "127.0.0.1:0", "--tls-cert-file", pki.cert, "--tls-key-file", pki.key,
		"--master-key-file", secretFile, "--spacing", "100ms", "--drain", "0s", "--metrics-listen", "127.0.0.1:0", "--base-path", "/graph")
	metricsURL := strings.TrimPrefix(s.waitLine(t, "notify metrics on "), "notify metrics on ")
	base := strings.TrimPrefix(s.waitLine(t, "notify listening on https://"), "notify listening on ")
	caPEM, err := os.ReadFile(pki.ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}, Timeout: 30 * time.Second}
	do := func(method, u, body string) (int, string, string) {
		t.Helper()
		req, _ := http.NewRequest(method, u, strings.NewReader(body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}

	token := "Validation: Testing client application reachability for subscription Request-Id: 5c1e (a+b)"
	if code, ct, body := do("POST", base+"/default/acme?validationToken="+url.QueryEscape(token), ""); code != 200 || ct != "text/plain; charset=utf-8" || body != token {
		t.Fatalf("handshake: %d %q %q", code, ct, body)
	}
	if !strings.HasSuffix(base, "/graph") {
		t.Errorf("listening line %q does not end in the base path", base)
	}
	for _, p := range []string{base + "/not/a/valid/path", strings.TrimSuffix(base, "/graph") + "/default/acme"} {
		if code, _, _ := do("POST", p+"?validationToken=x", ""); code != 404 {
			t.Errorf("handshake on %s: %d, want 404", p, code)
		}
	}

	cs := notify.ClientState(notify.PoolKey([]byte(master), "default"), "acme")
	note := func(clientState string) string {
		b, _ := json.Marshal(map[string]any{"value": []map[string]any{{"subscriptionId": "s1", "changeType": "updated", "resource": "Users/u1",
			"clientState": clientState, "tenantId": "t1", "resourceData": map[string]any{"id": "u1"}}}})
		return string(b)
	}
	if code, _, body := do("POST", base+"/default/acme", note(cs)); code != 202 {
		t.Fatalf("notification with the right clientState: %d %s", code, body)
	}
	if code, _, _ := do("POST", base+"/default/evil", note(cs)); code != 403 {
		t.Errorf("acme's clientState for evil: %d, want 403", code)
	}
	if code, _, _ := do("POST", base+"/default/evil", note("forged")); code != 403 {
		t.Errorf("a forged clientState: %d, want 403", code)
	}

	jobsStream := worker.Topology{}.JobsStream()
	workertest.Eventually(t, 60*time.Second, "acme's trigger in the jobs stream", func() bool {
		return len(workertest.Messages(t, js, jobsStream, "m365.jobs.default.acme.notified")) == 1
	})
	if code, _, body := do("GET", metricsURL, ""); code != 200 || !strings.Contains(body, "m365_notify_received_total 3\n") ||
		!strings.Contains(body, "m365_notify_refused_total 2\n") || !strings.Contains(body, "m365_notify_triggers_published_total 1\n") {
		t.Errorf("metrics: %d\n%s", code, body)
	}
	s.interrupt(t) // publishes anything pending, then exits

	msgs := workertest.Messages(t, js, jobsStream, "m365.jobs.default.acme.notified")
	if len(msgs) != 1 {
		t.Fatalf("%d triggers for acme, want 1", len(msgs))
	}
	want := `{"schema_version":1,"id":"notified-acme","instance":"acme","action":"sync","requested_by":"graph-notification"}`
	// Tracing unconfigured: no span, no traceparent.
	if m := msgs[0]; string(m.Data()) != want || m.Headers().Get("Nats-Rollup") != "sub" || m.Headers().Get("Nats-Msg-Id") != "" || m.Headers().Get("traceparent") != "" {
		t.Errorf("trigger %s with headers %v", m.Data(), m.Headers())
	}
	if n := len(workertest.Messages(t, js, jobsStream, "m365.jobs.default.evil.notified")); n != 0 {
		t.Errorf("%d triggers for evil, want none", n)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := seen.Pending(); n != 1 {
		t.Errorf("%d triggers published, want 1", n)
	}
	if out := s.stderr.String(); strings.Contains(out, master) || strings.Contains(out, cs) {
		t.Errorf("the master key or a clientState was logged:\n%s", out)
	}
}

// notifyProc is a running receiver binary with its URLs and an HTTPS
// client that trusts it.
type notifyProc struct {
	*started
	base, metrics string
	hc            *http.Client
	cs            string // acme's clientState in pool default
}

func startNotify(t *testing.T, ns *workertest.Server, env []string, args ...string) *notifyProc {
	t.Helper()
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	raw := make([]byte, 48)
	_, _ = rand.Read(raw)
	master := base64.StdEncoding.EncodeToString(raw)
	keyFile := filepath.Join(dir, "notify.key")
	if err := os.WriteFile(keyFile, []byte(master+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		t.Setenv(k, v)
	}
	s := start(t, append([]string{"notify", "--nats", ns.URL, "--listen", "127.0.0.1:0", "--tls-cert-file", pki.cert, "--tls-key-file", pki.key,
		"--master-key-file", keyFile, "--metrics-listen", "127.0.0.1:0"}, args...)...)
	p := &notifyProc{started: s, cs: notify.ClientState(notify.PoolKey([]byte(master), "default"), "acme")}
	p.metrics = strings.TrimSuffix(strings.TrimPrefix(s.waitLine(t, "notify metrics on "), "notify metrics on "), "/metrics")
	p.base = strings.TrimPrefix(s.waitLine(t, "notify listening on https://"), "notify listening on ")
	caPEM, err := os.ReadFile(pki.ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	p.hc = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}, Timeout: 30 * time.Second}
	return p
}

// post sends a notification for default/acme with its clientState.
func (p *notifyProc) post() (*http.Response, error) {
	b, _ := json.Marshal(map[string]any{"value": []map[string]any{{"subscriptionId": "s1", "changeType": "updated", "clientState": p.cs}}})
	resp, err := p.hc.Post(p.base+"/default/acme", "application/json", strings.NewReader(string(b)))
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

// Finding 6: on SIGTERM readiness fails first and requests during the
// drain get 503 with Retry-After; a second signal ends the drain.
func TestNotifyShutdownDrains(t *testing.T) {
	ns := workertest.Start(t)
	p := startNotify(t, ns, []string{"M365_DRAIN=10m"})
	if resp, err := p.post(); err != nil || resp.StatusCode != 202 {
		t.Fatalf("a notification: %v %v", resp, err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	workertest.Eventually(t, 60*time.Second, "/readyz answers 503", func() bool {
		resp, err := http.Get(p.metrics + "/readyz")
		if err != nil {
			t.Fatalf("the metrics listener closed before /readyz answered 503: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode == 503
	})
	// The drain closes idle connections (keep-alives off): a sender whose
	// idle connection closes under its POST sees EOF and sends again, as
	// Graph does. This one connects anew, as a sender does after that.
	p.hc.CloseIdleConnections()
	resp, err := p.post()
	if err != nil {
		t.Fatalf("a notification during the drain: %v", err)
	}
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a notification during the drain: %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	p.interrupt(t) // the second signal ends the drain
}

// Finding 5: with NATS away every notification is answered 503 with
// Retry-After (Graph retries for up to 4 hours), and nothing is buffered to
// be published once NATS is back (2,001 "failed" triggers used to become
// 12,006 stored messages).
func TestNotifyWithoutNATSAnswers503(t *testing.T) {
	dir := t.TempDir()
	_, portStr, _ := net.SplitHostPort(freePort(t))
	port, _ := strconv.Atoi(portStr)
	startNATS := func() *server.Server {
		t.Helper()
		s, err := worker.StartEmbedded(worker.EmbeddedOptions{StoreDir: dir, Port: port})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		return s
	}
	s := startNATS()
	ns := &workertest.Server{Server: s, URL: s.ClientURL()}
	_, js := ns.Connect(t)
	if err := worker.Setup(context.Background(), js, worker.Topology{}); err != nil {
		t.Fatal(err)
	}
	p := startNotify(t, ns, nil)
	s.Shutdown()
	s.WaitForShutdown()
	for i := range 3 {
		resp, err := p.post()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
			t.Errorf("notification %d with NATS away: %d (Retry-After %q), want 503 with Retry-After", i, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
	s = startNATS()
	ready := func() bool {
		resp, err := http.Get(p.metrics + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	workertest.Eventually(t, 60*time.Second, "the receiver back on NATS", ready)
	_, js = (&workertest.Server{Server: s, URL: s.ClientURL()}).Connect(t)
	if msgs := workertest.Messages(t, js, worker.Topology{}.JobsStream(), "m365.jobs.default.acme.notified"); len(msgs) != 0 {
		t.Errorf("%d triggers stored once NATS was back, want none (each was answered 503)", len(msgs))
	}
	if resp, err := p.post(); err != nil || resp.StatusCode != 202 {
		t.Fatalf("a notification with NATS back: %v %v", resp, err)
	}
	if msgs := workertest.Messages(t, js, worker.Topology{}.JobsStream(), "m365.jobs.default.acme.notified"); len(msgs) != 1 {
		t.Errorf("%d triggers stored, want 1", len(msgs))
	}
}

// Finding 7: the metrics listener takes small headers only.
func TestNotifyListenersHardened(t *testing.T) {
	ns := workertest.Start(t)
	p := startNotify(t, ns, nil)
	req, _ := http.NewRequest("GET", p.metrics+"/metrics", nil)
	req.Header.Set("X-Big", strings.Repeat("x", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("/metrics with a 64 KiB header: %d, want 431", resp.StatusCode)
	}
	req, _ = http.NewRequest("POST", p.base+"/default/acme", strings.NewReader("{}"))
	req.Header.Set("X-Big", strings.Repeat("x", 64<<10))
	resp, err = p.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a notification with a 64 KiB header: %d, want 431", resp.StatusCode)
	}
}

// The receiver's manifest: GOMEMLIMIT from the container's limit, and a
// grace period past the drain, the requests in flight and the deferred
// triggers.
func TestNotifyManifest(t *testing.T) {
	for _, d := range readK8s(t) {
		if d.Kind != "Deployment" || d.Metadata.Name != "m365-notify" {
			continue
		}
		c := d.Spec.Template.Spec.Containers[0]
		var drain time.Duration
		memlimit := false
		for _, e := range c.Env {
			switch e.Name {
			case "GOMEMLIMIT":
				v, _ := e.ValueFrom.(map[string]any)
				memlimit = fmt.Sprint(v["resourceFieldRef"]) == "map[resource:limits.memory]"
			case "M365_DRAIN":
				drain, _ = time.ParseDuration(e.Value)
			}
		}
		if !memlimit {
			t.Error("GOMEMLIMIT must come from the container's memory limit")
		}
		if grace := time.Duration(d.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second; drain == 0 || grace < drain+30*time.Second {
			t.Errorf("terminationGracePeriodSeconds %s must cover --drain %s, 10 s of requests and 20 s of deferred triggers", grace, drain)
		}
		return
	}
	t.Fatal("no m365-notify Deployment")
}

func TestMemoryLimitFromContainer(t *testing.T) {
	dir := t.TempDir()
	old := cgroupMemoryMax
	t.Cleanup(func() { cgroupMemoryMax = old })
	log := slog.New(slog.DiscardHandler)
	for content, want := range map[string]int64{"134217728\n": 134217728 / 10 * 9, "max\n": 0} {
		cgroupMemoryMax = filepath.Join(dir, "memory.max")
		if err := os.WriteFile(cgroupMemoryMax, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("GOMEMLIMIT", "")
		prev := debug.SetMemoryLimit(-1)
		if got := memoryLimitFromContainer(log); got != want {
			t.Errorf("memory.max %q: limit %d, want %d", content, got, want)
		}
		debug.SetMemoryLimit(prev)
	}
	t.Setenv("GOMEMLIMIT", "100MiB")
	if got := memoryLimitFromContainer(log); got != 0 {
		t.Errorf("with GOMEMLIMIT set: %d", got)
	}
}

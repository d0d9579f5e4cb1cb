package notify_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/internal/retry"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

var master = []byte("0123456789abcdef0123456789abcdef-test-master")

func clientState(pool, instance string) string {
	return notify.ClientState(notify.PoolKey(master, pool), instance)
}

// env is a receiver served over TLS, publishing to a real JetStream server
// with the m365 topology.
type env struct {
	t    *testing.T
	rcv  *notify.Receiver
	srv  *httptest.Server
	js   jetstream.JetStream
	nc   *nats.Conn
	nats *workertest.Server
	logs *lockedBuffer
}

func newEnv(t *testing.T, cfg notify.Config) *env {
	t.Helper()
	ns := workertest.Start(t)
	nc, js := ns.Connect(t)
	e := &env{t: t, js: js, nc: nc, nats: ns, logs: &lockedBuffer{}}
	cfg.Master = master
	cfg.JetStream = js
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	rcv, err := notify.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.rcv = rcv
	t.Cleanup(rcv.Close) // after the server has closed (cleanups run last first)
	e.srv = httptest.NewTLSServer(rcv)
	t.Cleanup(e.srv.Close)
	t.Cleanup(func() {
		if s := e.logs.String(); strings.Contains(s, clientState("default", "acme")) || strings.Contains(s, string(master)) {
			t.Errorf("a clientState or the master key was logged:\n%s", s)
		}
	})
	return e
}

func (e *env) url(path string) string { return e.srv.URL + path }

// post sends body to path and returns the status.
func (e *env) post(path string, body []byte) int {
	e.t.Helper()
	resp, err := e.srv.Client().Post(e.url(path), "application/json", bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// notifications is a POST body of n change notifications with clientState
// cs (nil: none).
func notifications(n int, cs *string) []byte {
	var vs []map[string]any
	for i := range n {
		v := map[string]any{"subscriptionId": "sub-1", "changeType": "updated", "resource": fmt.Sprintf("Users/u%d", i),
			"tenantId": "tid", "resourceData": map[string]any{"@odata.type": "#Microsoft.Graph.User", "id": fmt.Sprintf("u%d", i)}}
		if cs != nil {
			v["clientState"] = *cs
		}
		vs = append(vs, v)
	}
	b, _ := json.Marshal(map[string]any{"value": vs})
	return b
}

func ptr(s string) *string { return &s }

// watcher counts every message published on a subject (core NATS sees each
// publish; the stream keeps the last after a rollup).
type watcher struct {
	t  *testing.T
	nc *nats.Conn
	ch chan *nats.Msg
	n  int64
}

func (e *env) watch(subject string) *watcher {
	e.t.Helper()
	w := &watcher{t: e.t, nc: e.nc, ch: make(chan *nats.Msg, 4096)}
	sub, err := e.nc.ChanSubscribe(subject, w.ch)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := e.nc.Flush(); err != nil {
		e.t.Fatal(err)
	}
	return w
}

// count is the messages seen so far. Once a publish is acknowledged, its
// message is among them: the server queues it to this subscriber before it
// stores it, and a flush's answer comes after what was queued before it.
func (w *watcher) count() int64 {
	w.t.Helper()
	if err := w.nc.Flush(); err != nil {
		w.t.Fatal(err)
	}
	for {
		select {
		case <-w.ch:
			w.n++
		default:
			return w.n
		}
	}
}

func (e *env) stored(subject string) []jetstream.Msg {
	e.t.Helper()
	return workertest.Messages(e.t, e.js, worker.Topology{}.JobsStream(), subject)
}

// eventually waits for cond under a generous deadline (a hang guard, not
// a timing assertion).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	workertest.Eventually(t, 60*time.Second, what, cond)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// records are the JSON log lines whose msg starts with prefix.
func (l *lockedBuffer) records(prefix string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && strings.HasPrefix(fmt.Sprint(m["msg"]), prefix) {
			out = append(out, m)
		}
	}
	return out
}

// checkTrigger checks a stored trigger: subject, envelope, rollup header,
// no message id.
func checkTrigger(t *testing.T, m jetstream.Msg, pool, instance string) {
	t.Helper()
	if want := "m365.jobs." + pool + "." + instance + ".notified"; m.Subject() != want {
		t.Errorf("subject %s, want %s", m.Subject(), want)
	}
	want := `{"schema_version":1,"id":"notified-` + instance + `","instance":"` + instance + `","action":"sync","requested_by":"graph-notification"}`
	if string(m.Data()) != want {
		t.Errorf("trigger %s, want %s", m.Data(), want)
	}
	if h := m.Headers(); h.Get("Nats-Rollup") != "sub" || h.Get("Nats-Msg-Id") != "" {
		t.Errorf("headers %v: want Nats-Rollup: sub and no Nats-Msg-Id", h)
	}
	if _, _, err := jobs.ParseJob(m.Data()); err != nil {
		t.Errorf("the trigger is not a valid job: %v", err)
	}
}

func TestClientStateDerivation(t *testing.T) {
	pk := notify.PoolKey(master, "default")
	m := hmac.New(sha256.New, master)
	m.Write([]byte("m365-notify-pool:default"))
	if !hmac.Equal(pk, m.Sum(nil)) {
		t.Fatal("PoolKey is not HMAC-SHA256(master, \"m365-notify-pool:\"+pool)")
	}
	m = hmac.New(sha256.New, pk)
	m.Write([]byte("m365-notify-instance:acme"))
	if cs := notify.ClientState(pk, "acme"); cs != base64.RawURLEncoding.EncodeToString(m.Sum(nil)) || len(cs) != 43 {
		t.Fatalf("ClientState %q is not base64url (no padding) of HMAC-SHA256(poolKey, \"m365-notify-instance:\"+instance)", cs)
	}
	seen := map[string]string{}
	for _, pi := range [][2]string{{"default", "acme"}, {"default", "beta"}, {"site-a", "acme"}, {"default", "acm"}, {"defaul", "tacme"}} {
		cs := clientState(pi[0], pi[1])
		if prev, ok := seen[cs]; ok {
			t.Errorf("%v and %s share a clientState", pi, prev)
		}
		seen[cs] = fmt.Sprint(pi)
	}
	if notify.NotificationURL("https://hooks.example.com/", "default", "acme") != "https://hooks.example.com/default/acme" ||
		notify.LifecycleURL("https://hooks.example.com", "default", "acme") != "https://hooks.example.com/default/acme/lifecycle" {
		t.Error("notification URLs")
	}
	if s := notify.TriggerSubject(jobs.Subjects{Prefix: "t1"}, "p", "i"); s != "t1.jobs.p.i.notified" {
		t.Errorf("trigger subject %s", s)
	}
	if _, err := notify.New(notify.Config{Master: master[:31]}); err == nil {
		t.Error("a 31-byte master key was accepted")
	}
}

func ExampleClientState() {
	master := []byte("an example master key of 32+ bytes, from --secret-file")
	poolKey := notify.PoolKey(master, "default") // what pool default's workers are given
	fmt.Println(notify.NotificationURL("https://hooks.example.com", "default", "acme"))
	fmt.Println(notify.LifecycleURL("https://hooks.example.com", "default", "acme"))
	fmt.Println(len(notify.ClientState(poolKey, "acme")))
	// Output:
	// https://hooks.example.com/default/acme
	// https://hooks.example.com/default/acme/lifecycle
	// 43
}

func TestHandshake(t *testing.T) {
	e := newEnv(t, notify.Config{})
	token := "Validation: Testing client application reachability for subscription Request-Id: 1f2e (graphsim+ab/cd:ef)"
	for _, c := range []struct{ method, path string }{{"POST", "/default/acme"}, {"POST", "/site-a/acme_2/lifecycle"}} {
		req, _ := http.NewRequest(c.method, e.url(c.path)+"?validationToken="+url.QueryEscape(token), nil)
		req.Header.Set("Content-Type", "text/plain; charset=utf-8")
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != token || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("%s %s: %d %q %q", c.method, c.path, resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
	}
	status := func(method, path string) int {
		req, _ := http.NewRequest(method, e.url(path), nil)
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := status("POST", "/default/acme?validationToken="+strings.Repeat("x", notify.MaxValidationToken)); code != 200 {
		t.Errorf("a token of %d bytes: %d", notify.MaxValidationToken, code)
	}
	if code := status("POST", "/default/acme?validationToken="+strings.Repeat("x", notify.MaxValidationToken+1)); code != 400 {
		t.Errorf("a token of %d bytes: %d, want 400", notify.MaxValidationToken+1, code)
	}
	for _, m := range []string{"GET", "PUT", "HEAD"} { // Graph validates with a POST only
		if code := status(m, "/default/acme?validationToken=x"); code != 405 {
			t.Errorf("%s handshake: %d, want 405", m, code)
		}
	}
	for _, p := range []string{"/", "/default", "/default/", "/default/acme/", "/default/acme/other", "/default/acme/lifecycle/x",
		"/a/b/c/d", "/default/-acme", "/default/ac%20me", "/default/ac.me", "/default/" + strings.Repeat("a", 65), "//acme", "/default/acme%2Flifecycle%2Fx"} {
		if code := status("POST", p+"?validationToken=x"); code != 404 {
			t.Errorf("handshake on %s: %d, want 404", p, code)
		}
		cs := clientState("default", "acme")
		if code := e.post(p, notifications(1, &cs)); code != 404 {
			t.Errorf("notification on %s: %d, want 404", p, code)
		}
	}
	if s := e.rcv.Stats(); s.Received != 0 {
		t.Errorf("malformed paths counted: %+v", s)
	}
}

func TestBasePath(t *testing.T) {
	e := newEnv(t, notify.Config{BasePath: "/graph/"})
	cs := clientState("default", "acme")
	for path, want := range map[string]int{"/graph/default/acme": 202, "/graph/default/acme/lifecycle": 202,
		"/default/acme": 404, "/graphx/default/acme": 404, "/graph": 404, "/graph/acme": 404} {
		if code := e.post(path, notifications(1, &cs)); code != want {
			t.Errorf("POST %s: %d, want %d", path, code, want)
		}
	}
	if _, err := notify.New(notify.Config{Master: master, JetStream: e.js, BasePath: "graph"}); err == nil {
		t.Error("a base path without its leading / was accepted")
	}
}

func TestBodyLimitsAndMalformed(t *testing.T) {
	e := newEnv(t, notify.Config{})
	cs := clientState("default", "acme")
	big := notifications(1, &cs)
	pad := bytes.Repeat([]byte(" "), notify.MaxBody+1-len(big))
	if code := e.post("/default/acme", append(big[:len(big)-1:len(big)-1], append(pad, '}')...)); code != 413 {
		t.Errorf("a body of %d bytes: %d, want 413", notify.MaxBody+1, code)
	}
	pad = pad[:len(pad)-1]
	if code := e.post("/default/acme", append(big[:len(big)-1:len(big)-1], append(pad, '}')...)); code != 202 {
		t.Errorf("a body of %d bytes: %d, want 202", notify.MaxBody, code)
	}
	for _, b := range []string{`{"value":[`, `not json`, `{"value":[]}`, `{}`, `[]`, `{"value":{"clientState":"x"}}`} {
		if code := e.post("/default/acme", []byte(b)); code != 400 {
			t.Errorf("body %s: %d, want 400", b, code)
		}
	}
	resp, err := e.srv.Client().Get(e.url("/default/acme"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Errorf("GET without a validationToken: %d, want 405", resp.StatusCode)
	}
	e.rcv.Close()
	if s := e.rcv.Stats(); s.Published != 1 || s.Requests["too_large"] != 1 || s.Requests["accepted"] != 1 {
		t.Errorf("stats %+v: want the body of MaxBody bytes only accepted", s)
	}
}

func TestWrongClientStateIsRefused(t *testing.T) {
	e := newEnv(t, notify.Config{Spacing: 10 * time.Millisecond})
	all := e.watch("m365.jobs.>")
	right := clientState("default", "acme")
	for name, cs := range map[string]*string{
		"missing": nil, "wrong": ptr("not-the-client-state"), "another instance's": ptr(clientState("default", "beta")),
		"another pool's": ptr(clientState("site-a", "acme")), "empty": ptr(""), "longer": ptr(right + "x"),
	} {
		if code := e.post("/default/acme", notifications(3, cs)); code != 403 {
			t.Errorf("%s clientState: %d, want 403", name, code)
		}
	}
	if s := e.rcv.Stats(); s.Received != 18 || s.Refused != 6 || s.Requests["forbidden"] != 6 {
		t.Errorf("stats %+v, want 18 notifications received, 6 requests refused", s)
	}

	// Graph with a wrong clientState: its POST is refused (403) and, not
	// retried here, dropped.
	sim, g := startGraph(t, e)
	g.subscribe(notify.NotificationURL(e.srv.URL, "default", "acme"), "", "wrong-state")
	admin(t, sim, func(a *graphsim.Admin) { a.CreateUser("refused.one", "Refused One") })
	eventually(t, "graphsim's POST refused and dropped", func() bool {
		var dropped int64
		admin(t, sim, func(a *graphsim.Admin) { dropped = a.NotificationsDropped() })
		return dropped == 1
	})

	// One right item in a POST is enough; the others are still refused.
	body, _ := json.Marshal(map[string]any{"value": []map[string]any{{"clientState": right}, {"clientState": "forged"}}})
	if code := e.post("/default/beta", body); code != 403 {
		t.Errorf("acme's clientState for beta: %d, want 403", code)
	}
	if code := e.post("/default/acme", body); code != 202 {
		t.Errorf("one right and one forged: %d, want 202", code)
	}
	e.rcv.Close() // publishes what is pending: nothing more can come
	s := e.rcv.Stats()
	if s.Received != 23 || s.Refused != 8 || s.Published != 1 || s.Coalesced != 0 {
		t.Errorf("stats %+v, want 23 received, 8 requests refused, 1 published", s)
	}
	if n := all.count(); n != 1 {
		t.Errorf("%d triggers published, want 1 (the mixed POST's)", n)
	}
	msgs := e.stored("m365.jobs.>")
	if len(msgs) != 1 {
		t.Fatalf("%d messages in the jobs stream, want the one trigger", len(msgs))
	}
	checkTrigger(t, msgs[0], "default", "acme")
}

func TestBurstMakesOneTrigger(t *testing.T) {
	// A spacing far longer than the burst: however slow the machine, the
	// first notification is stored at once and the other 499 make one more
	// trigger, published when Close flushes.
	e := newEnv(t, notify.Config{Spacing: time.Hour})
	subject := "m365.jobs.default.acme.notified"
	published := e.watch(subject)
	cs := clientState("default", "acme")
	body := notifications(1, &cs)
	const total, senders = 500, 8
	var wg sync.WaitGroup
	var next, bad atomic.Int64
	for range senders {
		wg.Go(func() {
			for next.Add(1) <= total {
				if code := e.post("/default/acme", body); code != 202 {
					bad.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d notifications not answered 202", bad.Load())
	}
	e.rcv.Close()
	s := e.rcv.Stats()
	if s.Received != total || s.Refused != 0 || s.Published < 1 || s.Published > 2 || s.Published+s.Coalesced != total || s.Deferred != s.Published-1 {
		t.Errorf("stats %+v: want %d received, 1 or 2 triggers, the rest coalesced", s, total)
	}
	eventually(t, "the trigger seen on its subject", func() bool { return published.count() == s.Published })
	if n := published.count(); n > 2 {
		t.Errorf("%d trigger messages published, want at most 2", n)
	}
	msgs := e.stored(subject)
	if len(msgs) != 1 {
		t.Fatalf("%d triggers stored, want 1", len(msgs))
	}
	checkTrigger(t, msgs[0], "default", "acme")
}

func TestTriggersRollUp(t *testing.T) {
	e := newEnv(t, notify.Config{Spacing: 5 * time.Millisecond})
	subject := "m365.jobs.default.acme.notified"
	published := e.watch(subject)
	cs := clientState("default", "acme")
	for i := 1; i <= 3; i++ {
		if code := e.post("/default/acme", notifications(2, &cs)); code != 202 {
			t.Fatalf("POST %d: %d", i, code)
		}
		eventually(t, fmt.Sprintf("trigger %d", i), func() bool { return e.rcv.Stats().Published == int64(i) })
	}
	eventually(t, "3 publishes seen", func() bool { return published.count() == 3 })
	msgs := e.stored(subject)
	if len(msgs) != 1 {
		t.Fatalf("%d triggers stored after 3 publishes, want 1 (rolled up)", len(msgs))
	}
	if meta, err := msgs[0].Metadata(); err != nil || meta.Sequence.Stream < 3 {
		t.Errorf("the stored trigger is not the last: %+v %v", meta, err)
	}
	if s := e.rcv.Stats(); s.Received != 6 || s.Requests["accepted"] != 3 {
		t.Errorf("stats %+v, want 6 notifications in 3 accepted requests", s)
	}
}

// A stored trigger lives TriggerTTL unserved, not the jobs stream's 7 days:
// a pool-key holder's triggers for made-up instances go away on their own.
func TestStoredTriggerExpires(t *testing.T) {
	e := newEnv(t, notify.Config{TriggerTTL: time.Second})
	cs := clientState("default", "made-up")
	if code := e.post("/default/made-up", notifications(1, &cs)); code != 202 {
		t.Fatalf("POST: %d", code)
	}
	msgs := e.stored("m365.jobs.default.made-up.notified")
	if len(msgs) != 1 || msgs[0].Headers().Get("Nats-TTL") == "" {
		t.Fatalf("stored triggers %d, want 1 with a Nats-TTL", len(msgs))
	}
	eventually(t, "the unserved trigger expired", func() bool { return len(e.stored("m365.jobs.default.made-up.notified")) == 0 })
}

func TestTwoInstancesOneTriggerEach(t *testing.T) {
	e := newEnv(t, notify.Config{Spacing: time.Hour})
	all := e.watch("m365.jobs.*.*.notified")
	for i := range 10 {
		pool, inst := "default", "acme"
		if i%2 == 1 {
			pool, inst = "site-a", "beta"
		}
		cs := clientState(pool, inst)
		if code := e.post("/"+pool+"/"+inst, notifications(1, &cs)); code != 202 {
			t.Fatalf("POST %d: %d", i, code)
		}
	}
	// Each instance's first notification is stored before it is answered;
	// the four after it make one deferred trigger each.
	if s := e.rcv.Stats(); s.Published != 2 || s.Deferred != 2 || s.Coalesced != 6 {
		t.Errorf("stats %+v, want 2 triggers stored, 2 deferred", s)
	}
	for _, pi := range [][2]string{{"default", "acme"}, {"site-a", "beta"}} {
		msgs := e.stored(notify.TriggerSubject(jobs.Subjects{}, pi[0], pi[1]))
		if len(msgs) != 1 {
			t.Fatalf("%v: %d triggers stored, want 1", pi, len(msgs))
		}
		checkTrigger(t, msgs[0], pi[0], pi[1])
	}
	e.rcv.Close()
	if s := e.rcv.Stats(); s.Published != 4 || all.count() != 4 {
		t.Errorf("stats %+v, %d published: want 4 triggers (the deferred ones at Close)", s, all.count())
	}
	for _, pi := range [][2]string{{"default", "acme"}, {"site-a", "beta"}} {
		if msgs := e.stored(notify.TriggerSubject(jobs.Subjects{}, pi[0], pi[1])); len(msgs) != 1 {
			t.Errorf("%v: %d triggers stored after Close, want 1 (rolled up)", pi, len(msgs))
		}
	}
}

// graph is a plain Graph client of the simulator's first tenant, for the
// subscription calls.
type graph struct {
	t     *testing.T
	sim   *graphsim.Server
	cred  graphsim.Credential
	token string
}

// startGraph starts a simulator that trusts e's receiver.
func startGraph(t *testing.T, e *env) (*graphsim.Server, *graph) {
	t.Helper()
	sim, err := graphsim.Start(graphsim.Options{Users: 10, Groups: 2, NoThrottling: true, NotifyClient: e.srv.Client(), NotifyRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	g := &graph{t: t, sim: sim, cred: sim.Credentials()[0]}
	resp, err := sim.Client().PostForm(g.cred.Authority+"/"+g.cred.TenantID+"/oauth2/v2.0/token", url.Values{"grant_type": {"client_credentials"},
		"client_id": {g.cred.ClientID}, "client_secret": {g.cred.ClientSecret}, "scope": {g.cred.GraphRoot + "/.default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || tok.AccessToken == "" {
		t.Fatalf("token: %d %v", resp.StatusCode, err)
	}
	g.token = tok.AccessToken
	return sim, g
}

// subscribe creates a subscription to /users and returns its id; Graph
// validates both URLs with the handshake first.
func (g *graph) subscribe(notificationURL, lifecycleURL, clientState string) string {
	g.t.Helper()
	body := map[string]any{"changeType": "updated,deleted", "notificationUrl": notificationURL, "resource": "/users",
		"expirationDateTime": g.sim.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339Nano), "clientState": clientState}
	if lifecycleURL != "" {
		body["lifecycleNotificationUrl"] = lifecycleURL
	}
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", g.cred.GraphRoot+"/v1.0/subscriptions", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+g.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.sim.Client().Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	var sub struct {
		ID string `json:"id"`
	}
	if resp.StatusCode != 201 || json.Unmarshal(out, &sub) != nil {
		g.t.Fatalf("create subscription: %d %s", resp.StatusCode, out)
	}
	return sub.ID
}

func admin(t *testing.T, sim *graphsim.Server, f func(a *graphsim.Admin)) {
	t.Helper()
	if err := sim.Mutate(sim.Credentials()[0].TenantID, func(a *graphsim.Admin) error { f(a); return nil }); err != nil {
		t.Fatal(err)
	}
}

// Graph's own calls: the subscription's handshakes on both URLs, a change
// notification for an admin change, then a reauthorizationRequired
// lifecycle notification: each makes a trigger.
func TestGraphsimNotificationsAndLifecycle(t *testing.T) {
	e := newEnv(t, notify.Config{Spacing: 20 * time.Millisecond})
	subject := "m365.jobs.default.acme.notified"
	published := e.watch(subject)
	sim, g := startGraph(t, e)
	sub := g.subscribe(notify.NotificationURL(e.srv.URL, "default", "acme"), notify.LifecycleURL(e.srv.URL, "default", "acme"),
		clientState("default", "acme"))

	admin(t, sim, func(a *graphsim.Admin) { a.CreateUser("hooked", "Hooked") })
	eventually(t, "the change's trigger", func() bool { return e.rcv.Stats().Published == 1 })
	msgs := e.stored(subject)
	if len(msgs) != 1 {
		t.Fatalf("%d triggers stored, want 1", len(msgs))
	}
	checkTrigger(t, msgs[0], "default", "acme")
	if s := e.rcv.Stats(); s.Received != 1 || s.Lifecycle != 0 || s.Refused != 0 {
		t.Errorf("stats %+v after one change", s)
	}

	admin(t, sim, func(a *graphsim.Admin) {
		if err := a.RequireReauthorization(sub); err != nil {
			t.Fatal(err)
		}
	})
	eventually(t, "the lifecycle notification's trigger", func() bool { return e.rcv.Stats().Published == 2 })
	if s := e.rcv.Stats(); s.Received != 2 || s.Lifecycle != 1 || s.Refused != 0 {
		t.Errorf("stats %+v, want 2 received, 1 lifecycle", s)
	}
	eventually(t, "2 publishes seen", func() bool { return published.count() == 2 })
	if recs := e.logs.records("notify: lifecycle notifications"); len(recs) != 1 || fmt.Sprint(recs[0]["events"]) != "map[reauthorizationRequired:1]" ||
		recs[0]["subscription_id"] != sub || recs[0]["instance"] != "acme" {
		t.Errorf("lifecycle log records %v", recs)
	}

	// A lifecycle POST of another shape (subscriptionRemoved, missed) is
	// accepted the same way.
	cs := clientState("default", "acme")
	body, _ := json.Marshal(map[string]any{"value": []map[string]any{{"subscriptionId": sub, "lifecycleEvent": "subscriptionRemoved", "clientState": cs},
		{"subscriptionId": sub, "lifecycleEvent": "missed", "clientState": cs}}})
	if code := e.post("/default/acme/lifecycle", body); code != 202 {
		t.Fatalf("lifecycle POST: %d", code)
	}
	eventually(t, "the third trigger", func() bool { return e.rcv.Stats().Published == 3 })
	if s := e.rcv.Stats(); s.Lifecycle != 3 {
		t.Errorf("stats %+v, want 3 lifecycle", s)
	}
}

// A spacing's first trigger is stored while Graph waits: when it cannot
// be (the jobs stream is missing), the request is answered 503 with
// Retry-After and nothing is kept; once it can, the next delivery is
// stored.
func TestUnstoredTriggerIsAnswered503(t *testing.T) {
	e := newEnv(t, notify.Config{Spacing: time.Hour, PublishTimeout: 2 * time.Second})
	jobsStream := worker.Topology{}.JobsStream()
	if err := e.js.DeleteStream(context.Background(), jobsStream); err != nil {
		t.Fatal(err)
	}
	cs := clientState("default", "acme")
	if code := e.post("/default/acme", notifications(1, &cs)); code != 503 {
		t.Fatalf("POST without a jobs stream: %d, want 503", code)
	}
	if s := e.rcv.Stats(); s.PublishFailures != 1 || s.Published != 0 || s.Pending != 0 || s.Requests["unavailable"] != 1 {
		t.Errorf("stats %+v, want 1 failure, nothing published or pending", s)
	}
	if recs := e.logs.records("notify: trigger not stored"); len(recs) != 1 || recs[0]["instance"] != "acme" || recs[0]["error"] == "" {
		t.Errorf("failure log records %v", recs)
	}
	if err := worker.Setup(context.Background(), e.js, worker.Topology{}); err != nil {
		t.Fatal(err)
	}
	if code := e.post("/default/acme", notifications(1, &cs)); code != 202 {
		t.Fatalf("Graph's next delivery: %d, want 202", code)
	}
	msgs := e.stored("m365.jobs.default.acme.notified")
	if len(msgs) != 1 {
		t.Fatalf("%d triggers stored, want 1", len(msgs))
	}
	checkTrigger(t, msgs[0], "default", "acme")
}

// A deferred trigger (its notifications answered 202 while the last
// publish succeeded) that cannot be stored is retried, then counted
// dropped and logged; one whose stream comes back during the retries is
// stored.
func TestDeferredTriggerIsRetriedThenDropped(t *testing.T) {
	cs := clientState("default", "acme")
	jobsStream := worker.Topology{}.JobsStream()
	deferOne := func(e *env) {
		t.Helper()
		if code := e.post("/default/acme", notifications(1, &cs)); code != 202 {
			t.Fatalf("first POST: %d", code)
		}
		if err := e.js.DeleteStream(context.Background(), jobsStream); err != nil {
			t.Fatal(err)
		}
		if code := e.post("/default/acme", notifications(1, &cs)); code != 202 {
			t.Fatalf("second POST: %d", code)
		}
	}
	// The spacing is long enough that the second POST, after a stream
	// deletion on a loaded machine, always falls within it.
	e := newEnv(t, notify.Config{Spacing: 2 * time.Second, PublishTimeout: 2 * time.Second,
		Retry: retry.Policy{Initial: 5 * time.Millisecond, Max: 10 * time.Millisecond, Tries: 3}})
	deferOne(e)
	eventually(t, "the deferred trigger dropped", func() bool { return e.rcv.Stats().Dropped == 1 })
	if s := e.rcv.Stats(); s.PublishRetries != 2 || s.Published != 1 || s.Deferred != 1 {
		t.Errorf("stats %+v, want 2 retries (3 attempts), the first trigger only published", s)
	}
	recs := e.logs.records("notify: deferred trigger not published")
	if len(recs) != 1 || recs[0]["level"] != "ERROR" || recs[0]["attempts"] != 3.0 || recs[0]["instance"] != "acme" || recs[0]["error"] == "" {
		t.Fatalf("failure log records %v", recs)
	}
	eventually(t, "nothing pending", func() bool { return e.rcv.Stats().Pending == 0 })
	if code := e.post("/default/acme", notifications(1, &cs)); code != 503 {
		t.Errorf("a POST after the failures: %d, want 503", code)
	}
	e.rcv.Close()

	// The stream comes back while the trigger is retried.
	e2 := newEnv(t, notify.Config{Spacing: 2 * time.Second, PublishTimeout: 2 * time.Second,
		Retry: retry.Policy{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond, MaxElapsed: 5 * time.Minute}})
	deferOne(e2)
	eventually(t, "a retry", func() bool { return e2.rcv.Stats().PublishRetries >= 2 })
	if err := worker.Setup(context.Background(), e2.js, worker.Topology{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the trigger stored", func() bool { return e2.rcv.Stats().Published == 2 })
	msgs := e2.stored("m365.jobs.default.acme.notified")
	if len(msgs) != 1 {
		t.Fatalf("%d triggers stored, want 1", len(msgs))
	}
	checkTrigger(t, msgs[0], "default", "acme")
	if s := e2.rcv.Stats(); s.Dropped != 0 {
		t.Errorf("stats %+v: nothing should have been dropped", s)
	}
}

// Shutdown publishes deferred triggers at once, refuses later
// notifications with 503 and Retry-After (Graph delivers them again), and
// past its deadline abandons the publishes still retrying, counted
// dropped.
func TestShutdown(t *testing.T) {
	e := newEnv(t, notify.Config{Spacing: time.Hour})
	ms := httptest.NewServer(e.rcv.MetricsHandler())
	t.Cleanup(ms.Close)
	cs := clientState("default", "acme")
	for range 2 {
		if code := e.post("/default/acme", notifications(2, &cs)); code != 202 {
			t.Fatalf("POST: %d", code)
		}
	}
	e.rcv.BeginShutdown()
	resp, err := ms.Client().Get(ms.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("/readyz once shutting down: %d, want 503", resp.StatusCode)
	}
	req, _ := http.NewRequest("POST", e.url("/default/acme"), bytes.NewReader(notifications(1, &cs)))
	resp, err = e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a notification while shutting down: %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if err := e.rcv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := e.rcv.Stats(); s.Published != 2 || s.Deferred != 1 || s.Requests["shutting_down"] != 1 {
		t.Errorf("stats %+v, want the deferred trigger published", s)
	}
	if msgs := e.stored("m365.jobs.default.acme.notified"); len(msgs) != 1 {
		t.Errorf("%d triggers stored, want 1", len(msgs))
	}

	e2 := newEnv(t, notify.Config{Spacing: 5 * time.Millisecond, Retry: retry.Policy{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond}})
	if code := e2.post("/default/acme", notifications(1, &cs)); code != 202 {
		t.Fatalf("POST: %d", code)
	}
	if err := e2.js.DeleteStream(context.Background(), worker.Topology{}.JobsStream()); err != nil {
		t.Fatal(err)
	}
	if code := e2.post("/default/acme", notifications(1, &cs)); code != 202 {
		t.Fatalf("POST: %d", code)
	}
	eventually(t, "a retry", func() bool { return e2.rcv.Stats().PublishRetries >= 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e2.rcv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown past its deadline: %v", err)
	}
	if s := e2.rcv.Stats(); s.Dropped != 1 || s.Published != 1 {
		t.Errorf("stats %+v, want the abandoned trigger counted dropped", s)
	}
}

func TestMetricsAndHealth(t *testing.T) {
	e := newEnv(t, notify.Config{Spacing: time.Hour})
	ms := httptest.NewServer(e.rcv.MetricsHandler())
	t.Cleanup(ms.Close)
	cs := clientState("default", "acme")
	e.post("/default/acme", notifications(3, &cs))
	e.post("/default/acme", notifications(1, &cs))
	e.post("/default/acme", notifications(2, ptr("forged")))
	get := func(path string) (int, string, string) {
		resp, err := ms.Client().Get(ms.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	if code, _, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz: %d %s", code, body)
	}
	e.rcv.Close()
	code, ct, body := get("/metrics")
	if code != 200 || !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/metrics: %d %s", code, ct)
	}
	for _, want := range []string{
		"# TYPE m365_notify_received_total counter\nm365_notify_received_total 6\n",
		`m365_notify_requests_total{answer="accepted"} 2` + "\n", `m365_notify_requests_total{answer="forbidden"} 1` + "\n",
		"m365_notify_refused_total 1\n", "m365_notify_lifecycle_total 0\n", "m365_notify_triggers_published_total 2\n",
		"m365_notify_triggers_deferred_total 1\n", "m365_notify_triggers_dropped_total 0\n",
		"m365_notify_coalesced_total 0\n", "m365_notify_publish_failures_total 0\n", "m365_notify_publish_retries_total 0\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	if code, _, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if code, _, _ := get("/readyz"); code != 503 {
		t.Errorf("/readyz after Close: %d, want 503", code)
	}
}

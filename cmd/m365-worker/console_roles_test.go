package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/console"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// The console's NATS role (accounts.inc CONSOLE) on a real server: the
// console works with it (its pages, a replay and a sync now publish, with
// no permission violation), and it is refused results, failures and
// triggers, bucket writes, stream administration, and pulling from,
// changing or deleting a pool's consumer.
func TestConsoleRoleFromConfig(t *testing.T) {
	pki := newTestPKI(t, t.TempDir())
	rolePasswords(t)
	srv := startServer(t, loadConf(t, "single.conf", nil))
	addr := srv.Addr().String()
	natsURL := func(user string) string { return "tls://" + user + ":" + user + "-pw@" + addr }
	tlsOpts := []nats.Option{nats.RootCAs(pki.ca), nats.ClientCert(pki.clientCert, pki.clientKey)}
	if out, code := cli(t, "", append([]string{"setup", "--nats", natsURL("operator")}, pki.tlsArgs()...)...); code != 0 {
		t.Fatalf("setup as the operator: %s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The operator puts an instance, a job and its failure record.
	onc, err := nats.Connect(natsURL("operator"), tlsOpts...)
	if err != nil {
		t.Fatal(err)
	}
	defer onc.Close()
	ojs, _ := jetstream.New(onc)
	topo := worker.Topology{}
	store, err := worker.OpenInstances(ctx, ojs, topo)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, worker.Instance{ID: "acme", Pool: "default", TenantID: "contoso.onmicrosoft.com", ClientID: "11111111-2222-3333-4444-555555555555", FederatedCredential: true}); err != nil {
		t.Fatal(err)
	}
	ack, err := ojs.Publish(ctx, "m365.jobs.default.acme.action.disable_user", []byte(`{"schema_version":1,"id":"roles-job","instance":"acme","action":"microsoft-365.disable_user","params":{"user":"nobody@contoso.com"}}`))
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(jobs.FailureRecord{SchemaVersion: 1, JobID: "roles-job", Instance: "acme", Pool: "default", Action: "microsoft-365.disable_user",
		Subject: "m365.jobs.default.acme.action.disable_user", Stream: "M365_JOBS", StreamSeq: ack.Sequence, FailedAt: time.Now().UTC(),
		Error: jobs.Error{Code: "user_not_found", Message: "user nobody@contoso.com does not exist"}})
	if _, err := ojs.Publish(ctx, "m365.failures.acme", rec); err != nil {
		t.Fatal(err)
	}

	// The console, as its role.
	var mu sync.Mutex
	var violations []string
	cnc, err := nats.Connect(natsURL("console"), append(tlsOpts, nats.CustomInboxPrefix("_INBOX_console"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				mu.Lock()
				violations = append(violations, err.Error())
				mu.Unlock()
			}
		}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cnc.Close()
	cjs, _ := jetstream.New(cnc)
	var h http.Handler
	hs := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	defer hs.Close()
	cs, err := console.New(ctx, console.Config{URL: hs.URL, Topology: topo, Refresh: 100 * time.Millisecond}, cjs, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("the console as its role: %v", err)
	}
	h = cs
	client := hs.Client()
	client.Jar, _ = cookiejar.New(nil)
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	get := func(path string) (int, string) {
		resp, err := client.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(strings.TrimPrefix(cs.OneTimeLink(time.Minute), hs.URL)); code != http.StatusSeeOther {
		t.Fatalf("the one-time link answered %d", code)
	}
	var page string
	for deadline := time.Now().Add(time.Minute); !strings.Contains(page, "roles-job") || !strings.Contains(page, ">acme<"); {
		if time.Now().After(deadline) {
			t.Fatalf("the failures page never showed roles-job of acme:\n%s", page)
		}
		_, page = get("/failures?code=user_not_found")
	}
	for _, p := range []string{"/", "/instances", "/instances/acme", "/jobs?id=roles-job", "/audit"} {
		if code, body := get(p); code != 200 {
			t.Errorf("%s answered %d:\n%s", p, code, body)
		}
	}
	csrf := regexp.MustCompile(`name="csrf" content="([^"]+)"`).FindStringSubmatch(page)[1]
	post := func(path string, form url.Values) (int, string) {
		form.Set("csrf", csrf)
		resp, err := client.PostForm(hs.URL+path, form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Location") + string(b)
	}
	if code, body := post("/replay", url.Values{"code": {"user_not_found"}, "confirm": {"replay 1"}}); code != http.StatusSeeOther {
		t.Fatalf("the replay answered %d: %s", code, body)
	}
	if code, body := post("/instances/acme/sync", url.Values{}); code != http.StatusSeeOther {
		t.Fatalf("sync now answered %d: %s", code, body)
	}
	jst, _ := ojs.Stream(ctx, "M365_JOBS")
	replayed := false
	for deadline := time.Now().Add(time.Minute); !replayed && time.Now().Before(deadline); {
		if m, err := jst.GetLastMsgForSubject(ctx, "m365.jobs.default.acme.action.disable_user"); err == nil && m.Header.Get(worker.HeaderReplayOf) == "roles-job" {
			replayed = true
		}
	}
	if !replayed {
		t.Error("the console's replay is not in the jobs stream")
	}
	if m, err := jst.GetLastMsgForSubject(ctx, "m365.jobs.default.acme.sync"); err != nil || !strings.Contains(string(m.Data), `"on-demand"`) {
		t.Errorf("the console's sync now is not in the jobs stream: %v", err)
	}
	if _, body := get("/audit"); !strings.Contains(body, "2 operator actions") {
		t.Errorf("the audit should hold the replay and the sync:\n%s", body)
	}
	mu.Lock()
	if len(violations) > 0 {
		t.Errorf("the console ran into its role's limits: %v", violations)
	}
	violations = nil
	mu.Unlock()

	// Refused.
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		t.Cleanup(cancel)
		return c
	}
	for _, subj := range []string{"m365.results.acme.actions", "m365.failures.acme", "m365.jobs.default.acme.notified", "$KV.m365_state.sync.default.acme", "$KV.m365_instances.default.acme"} {
		if _, err := cjs.Publish(short(), subj, []byte("{}")); err == nil {
			t.Errorf("the console published on %s", subj)
		}
	}
	for _, s := range []string{"M365_JOBS", "M365_AUDIT"} {
		if err := cjs.DeleteStream(short(), s); err == nil {
			t.Errorf("the console deleted the stream %s", s)
		}
	}
	if err := cjs.DeleteConsumer(short(), "M365_JOBS", "m365_pool_default"); err == nil {
		t.Error("the console deleted the pool's consumer")
	}
	if _, err := cjs.UpdateConsumer(short(), "M365_JOBS", jetstream.ConsumerConfig{Durable: "m365_pool_default", FilterSubject: "m365.jobs.>", AckPolicy: jetstream.AckExplicitPolicy}); err == nil {
		t.Error("the console changed the pool's consumer")
	}
	if pc, err := cjs.Consumer(short(), "M365_JOBS", "m365_pool_default"); err != nil {
		t.Errorf("the console reads the pool's consumer information: %v", err)
	} else if b, err := pc.Fetch(1, jetstream.FetchMaxWait(time.Second)); err == nil {
		for range b.Messages() {
			t.Error("the console pulled a job from the pool's consumer")
		}
	}
	mu.Lock()
	pulled := strings.Join(violations, "\n")
	mu.Unlock()
	if !strings.Contains(pulled, "CONSUMER.MSG.NEXT.M365_JOBS.m365_pool_default") {
		t.Errorf("pulling from the pool's consumer was not refused with a permission violation: %q", pulled)
	}
}

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
// no permission violation), customer site site-a's pool included (its own
// jobs stream followed, its backlog read, its job replayed), and it is
// refused results, failures and triggers, bucket writes, stream
// administration, pulling from, changing or deleting a pool's consumer (a
// site pool's too), and the jobs stream of a site it is not given.
func TestConsoleRoleFromConfig(t *testing.T) {
	pki := newTestPKI(t, t.TempDir())
	rolePasswords(t)
	srv := startServer(t, loadConf(t, "single.conf", nil))
	addr := srv.Addr().String()
	natsURL := func(user string) string { return "tls://" + user + ":" + user + "-pw@" + addr }
	tlsOpts := []nats.Option{nats.RootCAs(pki.ca), nats.ClientCert(pki.clientCert, pki.clientKey)}
	if out, code := cli(t, "", append([]string{"setup", "--nats", natsURL("operator"), "--site-pools", "site-a,site-b"}, pki.tlsArgs()...)...); code != 0 {
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
	// And the same in customer site site-a's pool, whose jobs stream is its
	// own (M365_JOBS_site-a, sourced from M365_JOBS).
	if _, err := store.Put(ctx, worker.Instance{ID: "initech", Pool: "site-a", TenantID: "initech.onmicrosoft.com", ClientID: "11111111-2222-3333-4444-555555555555", FederatedCredential: true}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"site-job", "site-waiting"} {
		if _, err := ojs.Publish(ctx, "m365.jobs.site-a.initech.action.disable_user", []byte(`{"schema_version":1,"id":"`+id+`","instance":"initech","action":"microsoft-365.disable_user","params":{"user":"nobody@initech.com"}}`)); err != nil {
			t.Fatal(err)
		}
	}
	sst, err := ojs.Stream(ctx, "M365_JOBS_site-a")
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); sst.CachedInfo().State.Msgs < 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the site jobs never reached M365_JOBS_site-a")
		}
		if _, err := sst.Info(ctx); err != nil {
			t.Fatal(err)
		}
	}
	siteJob, err := sst.GetMsg(ctx, 1)
	if err != nil || !strings.Contains(string(siteJob.Data), `"site-job"`) {
		t.Fatalf("M365_JOBS_site-a's first job: %v", err)
	}
	rec, _ = json.Marshal(jobs.FailureRecord{SchemaVersion: 1, JobID: "site-job", Instance: "initech", Pool: "site-a", Action: "microsoft-365.disable_user",
		Subject: "m365.jobs.site-a.initech.action.disable_user", Stream: "M365_JOBS_site-a", StreamSeq: siteJob.Sequence, FailedAt: time.Now().UTC(),
		Error: jobs.Error{Code: "user_not_found", Message: "user nobody@initech.com does not exist"}})
	if _, err := ojs.Publish(ctx, "m365.failures.initech", rec); err != nil {
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
	ctopo := topo
	ctopo.SitePools = []string{"site-a"}
	cs, err := console.New(ctx, console.Config{URL: hs.URL, Topology: ctopo, Refresh: 100 * time.Millisecond}, cjs, slog.New(slog.DiscardHandler))
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
	for deadline := time.Now().Add(time.Minute); !strings.Contains(page, "roles-job") || !strings.Contains(page, ">acme<") || !strings.Contains(page, "site-job"); {
		if time.Now().After(deadline) {
			t.Fatalf("the failures page never showed roles-job of acme and site-job of initech:\n%s", page)
		}
		_, page = get("/failures?code=user_not_found")
	}
	siteRecord := regexp.MustCompile(`href="(/failures/\d+)"[^<]*>site-job<`).FindStringSubmatch(page)
	if siteRecord == nil {
		t.Fatalf("no link to site-job's failure record:\n%s", page)
	}
	// The site pool's job: where it is in the site pool's queue, and the
	// site pool's backlog, read from its own stream.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		_, jp := get("/jobs?id=site-waiting")
		_, ov := get("/")
		if strings.Contains(jp, "2 ahead in pool site-a") && strings.Contains(jp, "M365_JOBS_site-a sequence 2") &&
			strings.Contains(ov, "<tr><td>site-a</td><td>0</td><td>2</td><td>0</td></tr>") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("site-waiting is not shown queued second in site-a's queue, or site-a's backlog is not 2:\n%s\n%s", jp, ov)
		}
	}
	if _, body := get(siteRecord[1]); !regexp.MustCompile(`(?s)<pre id="job">.*site-job.*</pre>`).MatchString(body) {
		t.Errorf("site-job's record page does not show the job it failed (read from M365_JOBS_site-a):\n%s", body)
	}
	for _, p := range []string{"/", "/instances", "/instances/acme", "/jobs?id=roles-job", "/jobs?id=site-job", "/jobs?id=site-waiting", "/instances/initech", siteRecord[1], "/audit"} {
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
	if code, body := post("/replay", url.Values{"code": {"user_not_found"}, "confirm": {"replay 2"}}); code != http.StatusSeeOther {
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
	replayed = false
	for deadline := time.Now().Add(time.Minute); !replayed && time.Now().Before(deadline); {
		if m, err := jst.GetLastMsgForSubject(ctx, "m365.jobs.site-a.initech.action.disable_user"); err == nil && m.Header.Get(worker.HeaderReplayOf) == "site-job" {
			replayed = true
		}
	}
	if !replayed {
		t.Error("the console's replay of the site pool's job (read from M365_JOBS_site-a) is not in the jobs stream")
	}
	if m, err := jst.GetLastMsgForSubject(ctx, "m365.jobs.default.acme.sync"); err != nil || !strings.Contains(string(m.Data), `"on-demand"`) {
		t.Errorf("the console's sync now is not in the jobs stream: %v", err)
	}
	// The audit page shows what the console's watcher has read back from
	// M365_AUDIT: wait for it.
	var audit string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, audit = get("/audit"); strings.Contains(audit, "2 operator actions") {
			break
		}
	}
	if !strings.Contains(audit, "2 operator actions") {
		t.Errorf("the audit should hold the replay and the sync:\n%s", audit)
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
	for _, subj := range []string{"m365.results.acme.actions", "m365.failures.acme", "m365.jobs.default.acme.notified", "$KV.m365_state.sync.default.acme", "$KV.m365_instances.default.acme",
		"m365.results.initech.actions", "m365.failures.initech", "m365.jobs.site-a.initech.notified", "$KV.m365_state.sync.site-a.initech", "$KV.m365_instances.site-a.initech"} {
		if _, err := cjs.Publish(short(), subj, []byte("{}")); err == nil {
			t.Errorf("the console published on %s", subj)
		}
	}
	for _, s := range []string{"M365_JOBS", "M365_AUDIT", "M365_JOBS_site-a"} {
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
	// The site pool's consumer is its workers' as well.
	if err := cjs.DeleteConsumer(short(), "M365_JOBS_site-a", "m365_pool_site-a"); err == nil {
		t.Error("the console deleted the site pool's consumer")
	}
	if _, err := cjs.UpdateConsumer(short(), "M365_JOBS_site-a", jetstream.ConsumerConfig{Durable: "m365_pool_site-a", FilterSubject: "m365.jobs.site-a.>", AckPolicy: jetstream.AckExplicitPolicy}); err == nil {
		t.Error("the console changed the site pool's consumer")
	}
	if _, err := cjs.CreateConsumer(short(), "M365_JOBS_site-a", jetstream.ConsumerConfig{Name: "m365_pool_site-a", FilterSubject: "m365.jobs.site-a.>", AckPolicy: jetstream.AckExplicitPolicy}); err == nil {
		t.Error("the console created a consumer in the site pool consumer's name")
	}
	if pc, err := cjs.Consumer(short(), "M365_JOBS_site-a", "m365_pool_site-a"); err != nil {
		t.Errorf("the console reads the site pool's consumer information: %v", err)
	} else if b, err := pc.Fetch(1, jetstream.FetchMaxWait(time.Second)); err == nil {
		for range b.Messages() {
			t.Error("the console pulled a job from the site pool's consumer")
		}
	}
	// A site the console is not given (site-b, set up all the same).
	if _, err := cjs.Stream(short(), "M365_JOBS_site-b"); err == nil {
		t.Error("the console read site-b's jobs stream, which its role does not name")
	}
	if _, err := cjs.Consumer(short(), "M365_JOBS_site-b", "m365_pool_site-b"); err == nil {
		t.Error("the console read site-b's pool consumer, which its role does not name")
	}
	mu.Lock()
	pulled := strings.Join(violations, "\n")
	mu.Unlock()
	for _, refused := range []string{"CONSUMER.MSG.NEXT.M365_JOBS.m365_pool_default", "CONSUMER.MSG.NEXT.M365_JOBS_site-a.m365_pool_site-a",
		"STREAM.INFO.M365_JOBS_site-b", "CONSUMER.INFO.M365_JOBS_site-b.m365_pool_site-b"} {
		if !strings.Contains(pulled, refused) {
			t.Errorf("%s was not refused with a permission violation: %q", refused, pulled)
		}
	}
}

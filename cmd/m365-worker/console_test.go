package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/console"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// consoleRun is `run` with its console, as its start printed it.
type consoleRun struct {
	proc             *started
	nats, url, once  string
	operator, viewer string // the demo tenant's users with each role
	shots            string
	t                *testing.T
}

func startConsoleRun(t *testing.T) *consoleRun {
	t.Helper()
	addr, simAddr, consoleAddr := freePort(t), freePort(t), freePort(t)
	s := start(t, "run", "--data-dir", filepath.Join(t.TempDir(), "data"), "--nats-listen", addr, "--graphsim-listen", simAddr, "--console-listen", consoleAddr)
	c := &consoleRun{proc: s, t: t, shots: screenshotDir(t)}
	c.nats = strings.Fields(strings.TrimPrefix(s.waitLine(t, "NATS with JetStream listening on"), "NATS with JetStream listening on "))[0]
	line := s.waitLine(t, "Console at ")
	c.url = strings.TrimSuffix(strings.Fields(line)[2], ";")
	c.once = line[strings.LastIndex(line, " ")+1:]
	who := strings.Fields(s.waitLine(t, "or through the simulator's tenant as"))
	c.operator, c.viewer = who[len(who)-5], who[len(who)-2]
	s.waitLine(t, "demo indicators:")
	return c
}

// shot saves the page's full screenshot as <name>.png.
func (c *consoleRun) shot(ctx context.Context, name string) {
	c.t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		c.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(c.shots, name+".png"), png, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// signIn signs in through the simulator's OpenID Connect sign-in page,
// starting from path, and returns the role the console shows.
func (c *consoleRun) signIn(ctx context.Context, path, upn, shotName string) string {
	c.t.Helper()
	err := chromedp.Do(ctx, chromedp.Navigate(c.url+path), chromedp.WaitVisible(chromedp.ID("username")))
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		c.t.Fatalf("open %s unauthenticated: %v", path, err)
	}
	if !strings.Contains(loc, "/oauth2/v2.0/authorize?") || !strings.Contains(loc, "code_challenge_method=S256") {
		c.t.Fatalf("an unauthenticated %s went to %s, not the issuer's sign-in with PKCE", path, loc)
	}
	if shotName != "" {
		c.shot(ctx, shotName)
	}
	err = chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("username"), upn), chromedp.Click(chromedp.ID("signin")), chromedp.WaitVisible(chromedp.ID("role")))
	role := text(c.t, ctx, "role")
	loc, _ = chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		c.t.Fatalf("sign in as %s: %v", upn, err)
	}
	if loc != c.url+path {
		c.t.Errorf("after signing in at %s the browser is at %s", path, loc)
	}
	return role
}

// waitText reloads path until the element's text contains want (a
// condition, not a time: the deadline only ends a stuck test).
func (c *consoleRun) waitText(ctx context.Context, path, sel, want string) string {
	c.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var got string
	for {
		err := chromedp.Do(ctx, chromedp.Navigate(c.url+path), chromedp.WaitReady(chromedp.CSS("body")))
		if err == nil {
			got, err = chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`(document.querySelector(%q)||{}).textContent||""`, sel)))
		}
		if err == nil && strings.Contains(got, want) {
			return got
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: %s never showed %q (last: %q, %v)", path, sel, want, got, err)
		}
	}
}

// post sends a POST from the page (as a script on the console's origin
// would) and returns the status; csrf is the token sent, if any.
func post(t *testing.T, ctx context.Context, path, body string) int {
	t.Helper()
	js := fmt.Sprintf(`fetch(%q, {method: "POST", headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: %q, redirect: "manual"}).then(r => r.status)`, path, body)
	status, err := chromedp.Run(ctx, chromedp.Evaluate[int](js, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	return status
}

func csrfOf(t *testing.T, ctx context.Context) string {
	t.Helper()
	tok, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('meta[name=csrf]').content`))
	if err != nil || tok == "" {
		t.Fatalf("the page has no CSRF token: %v", err)
	}
	return tok
}

// The operator console against the embedded default, in a real headless
// Chromium: sign in through the simulator's OIDC, see demo healthy, find a
// failing job under Failures, replay every matching record after a dry run
// and a typed confirmation, see the replays' results; a viewer's replay is
// refused, a POST without the CSRF token is refused, an unauthenticated
// request goes to sign-in. Screenshots: $CONSOLE_SCREENSHOTS or
// /tmp/console-shots.
func TestConsoleInABrowser(t *testing.T) {
	chrome := chromium(t)
	c := startConsoleRun(t)
	op := browser(t, chrome)

	if role := c.signIn(op, "/failures", c.operator, "01-signin"); role != "operator" {
		t.Fatalf("%s signed in as %q, want operator", c.operator, role)
	}
	c.waitText(op, "/instances/demo", "#health", "healthy")
	// The Graph budget the demo's first round used (250 users: 5,000
	// resource units per 10 s).
	c.waitText(op, "/instances/demo", "#budget", "of the tenant's 5000 per 10 s (250 users)")
	c.shot(op, "02-instance-demo")

	// Keyboard: the first Tab reaches the skip link; "Sync now" asks for a round.
	if err := chromedp.Do(op, chromedp.KeyEvent("\t")); err != nil {
		t.Fatal(err)
	}
	if focused, err := chromedp.Run(op, chromedp.Evaluate[string](`document.activeElement.textContent`)); err != nil || focused != "Skip to content" {
		t.Errorf("the first Tab focuses %q (%v), want the skip link", focused, err)
	}
	if err := chromedp.Do(op, chromedp.Click(chromedp.ID("sync-now")), chromedp.WaitVisible(chromedp.ID("synced"))); err != nil {
		t.Fatal(err)
	}
	synced := text(t, op, "synced")
	jobID := strings.TrimSuffix(synced[strings.LastIndex(synced, " ")+1:], ".")
	c.waitText(op, "/jobs?id="+jobID, "#where", "succeeded")
	c.shot(op, "02b-sync-now-succeeded")
	c.waitText(op, "/", "[data-live=healthy]", "1")
	c.shot(op, "03-overview")

	// Tevyra publishes two jobs that fail for good: a licence that does not exist.
	nc, err := nats.Connect(c.nats)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, user := range []string{c.operator, c.viewer} {
		job := fmt.Sprintf(`{"schema_version":1,"id":"console-%d","instance":"demo","action":"microsoft-365.assign_license","params":{"user":%q,"sku":"NOT_A_SKU"}}`, i, user)
		if _, err := js.Publish(ctx, "m365.jobs.default.demo.action.assign_license", []byte(job)); err != nil {
			t.Fatal(err)
		}
	}
	filter := "/failures?instance=demo&code=sku_not_found"
	c.waitText(op, filter, "#count", "2")
	page := text(t, op, "failures")
	if !strings.Contains(page, "console-0") || strings.Contains(page, c.operator) {
		t.Errorf("the failures list should show console-0 with its user masked:\n%s", page)
	}
	c.shot(op, "04-failures")

	// One record: the user masked until the operator reveals it (audited).
	if err := chromedp.Do(op, chromedp.Click(chromedp.Search(`//a[text()="console-0"]`)), chromedp.WaitVisible(chromedp.ID("job"))); err != nil {
		t.Fatal(err)
	}
	job := text(t, op, "job")
	if strings.Contains(job, c.operator) || !strings.Contains(job, "NOT_A_SKU") {
		t.Errorf("the record's job should show the SKU and mask the user:\n%s", job)
	}
	c.shot(op, "05-failure-masked")
	if err := chromedp.Do(op, chromedp.Click(chromedp.ID("reveal")), chromedp.WaitNotPresent(chromedp.ID("reveal"))); err != nil {
		t.Fatal(err)
	}
	job = text(t, op, "job")
	if !strings.Contains(job, c.operator) {
		t.Errorf("revealed, the job should show the user %s:\n%s", c.operator, job)
	}
	if n := text(t, op, "revealed"); !strings.Contains(n, "recorded in the audit") {
		t.Errorf("the revealed page should say the reveal is audited: %q", n)
	}
	c.shot(op, "06-failure-revealed")

	// A state change without the CSRF token is refused.
	if st := post(t, op, "/replay", "instance=demo&code=sku_not_found&confirm=replay+2"); st != 403 {
		t.Errorf("a replay without the CSRF token answered %d, want 403", st)
	}
	if st := post(t, op, "/replay", "csrf=forged&instance=demo&code=sku_not_found&confirm=replay+2"); st != 403 {
		t.Errorf("a replay with a forged CSRF token answered %d, want 403", st)
	}

	// Replay every matching record: a dry run, then the typed confirmation.
	err = chromedp.Do(op, chromedp.Navigate(c.url+filter), chromedp.Click(chromedp.ID("replay-matching")), chromedp.WaitVisible(chromedp.ID("match-count")))
	if count := text(t, op, "match-count"); err != nil || count != "2" {
		t.Fatalf("the dry run counts %q (%v), want 2", count, err)
	}
	c.shot(op, "07-replay-dry-run")
	err = chromedp.Do(op, chromedp.SendKeys(chromedp.ID("confirm"), "replay 2"), chromedp.Click(chromedp.ID("confirm-replay")), chromedp.WaitVisible(chromedp.ID("replays")))
	if err != nil {
		t.Fatal(err)
	}
	replayURL, _ := chromedp.Run(op, chromedp.Location())
	c.waitText(op, strings.TrimPrefix(replayURL, c.url), "#state", "finished")
	results, state := text(t, op, "replays"), text(t, op, "progress")
	if strings.Count(results, "failed: sku_not_found") != 2 || !strings.Contains(results, "console-0~replay-") || !strings.Contains(state, "2 of 2 replayed") {
		t.Errorf("the replay page should show both replays' results:\n%s\n%s", state, results)
	}
	c.shot(op, "08-replay-results")
	audit := c.waitText(op, "/audit", "#audit", "replay")
	if !strings.Contains(audit, "reveal") || !strings.Contains(audit, c.operator) || !strings.Contains(audit, "2 records") {
		t.Errorf("the audit should show the reveal and the replay by %s:\n%s", c.operator, audit)
	}
	c.shot(op, "09-audit")
	c.waitText(op, "/jobs?id=console-0", "#where", "failed")
	c.shot(op, "10-jobs")

	// At a phone's width.
	if err := chromedp.Do(op, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile), chromedp.Navigate(c.url+filter), chromedp.WaitVisible(chromedp.ID("failures"))); err != nil {
		t.Fatal(err)
	}
	c.shot(op, "11-failures-phone")

	// A viewer sees the failures but may not replay them.
	viewer := browser(t, chrome)
	if role := c.signIn(viewer, filter, c.viewer, ""); role != "viewer" {
		t.Fatalf("%s signed in as %q, want viewer", c.viewer, role)
	}
	buttons, err := chromedp.Run(viewer, chromedp.Evaluate[int](`document.querySelectorAll('#replay-matching, #reveal, #sync-now').length`))
	if err != nil || buttons != 0 {
		t.Errorf("a viewer's page shows %d operator buttons (%v)", buttons, err)
	}
	tok := csrfOf(t, viewer)
	if st := post(t, viewer, "/replay", "csrf="+tok+"&instance=demo&code=sku_not_found&confirm=replay+2"); st != 403 {
		t.Errorf("a viewer's replay answered %d, want 403", st)
	}
	if st := post(t, viewer, "/instances/demo/sync", "csrf="+tok); st != 403 {
		t.Errorf("a viewer's sync now answered %d, want 403", st)
	}
	c.shot(viewer, "12-viewer-failures")

	// Nobody signed in: every page goes to sign-in.
	anon := browser(t, chrome)
	for _, p := range []string{"/", "/audit", "/failures/1"} {
		err := chromedp.Do(anon, chromedp.Navigate(c.url+p), chromedp.WaitVisible(chromedp.ID("username")))
		loc, _ := chromedp.Run(anon, chromedp.Location())
		if err != nil || !strings.Contains(loc, "/oauth2/v2.0/authorize?") {
			t.Errorf("unauthenticated %s: at %s (%v), want the sign-in", p, loc, err)
		}
	}
	t.Logf("screenshots in %s", c.shots)
}

// text is the text of the element with the id.
func text(t *testing.T, ctx context.Context, id string) string {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID(id)))
	if err != nil {
		t.Fatalf("the text of #%s: %v", id, err)
	}
	return v
}

// `m365-worker console` as a process: it refuses to start without sign-in
// or on plain HTTP off loopback; started, it sends a page request to
// sign-in and says so when the issuer cannot be reached.
func TestConsoleCommand(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"console"}, "the console needs sign-in"},
		{[]string{"console", "--oidc-tenant", "contoso.onmicrosoft.com", "--oidc-client-id", "x", "--listen", "0.0.0.0:9470"}, "plain HTTP off loopback"},
	} {
		cmd := exec.Command(binary, c.args...)
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), c.want) {
			t.Errorf("%v: exit %d, want 2 with %q:\n%s", c.args, code, c.want, out)
		}
	}
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	if err := console.EnsureAuditStream(context.Background(), js, srv.Topology, 1); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	p := start(t, "console", "--nats", srv.URL, "--listen", addr, "--oidc-issuer", "https://127.0.0.1:1/none", "--oidc-client-id", "console")
	p.waitLine(t, "console at http://"+addr)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get("http://" + addr + "/failures?code=x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login?next=%2Ffailures%3Fcode%3Dx" {
		t.Errorf("an unauthenticated page answered %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, err = client.Get("http://" + addr + "/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("sign-in with the issuer down answered %d, want 502", resp.StatusCode)
	}
}

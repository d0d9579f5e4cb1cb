package console_test

import (
	"context"
	"crypto/tls"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/graphsim/graphsimtest"
	"github.com/tevyra/m365-worker/internal/console"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// env is a console on in-process JetStream, signing in at the simulator.
type env struct {
	t        *testing.T
	url      string
	js       jetstream.JetStream
	sim      *graphsim.Server
	users    []string // operator, viewer, no role
	rootCAs  *tlsRoots
	instance string
}

type tlsRoots struct{ hs *httptest.Server }

func newEnv(t *testing.T) *env { return newEnvWith(t, nil) }

// newEnvWith is newEnv with the console's sign-in configuration changed by
// oidc (nil: app roles, as Entra sends them).
func newEnvWith(t *testing.T, oidc func(c *console.OIDCConfig, snap *graphsim.Snapshot)) *env {
	t.Helper()
	return newEnvSites(t, oidc)
}

// newEnvSites is newEnvWith with customer sites' pools: setup gives each
// its own jobs stream, and the console follows them (Topology.SitePools).
func newEnvSites(t *testing.T, oidc func(c *console.OIDCConfig, snap *graphsim.Snapshot), sitePools ...string) *env {
	t.Helper()
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	topo := srv.Topology
	if len(sitePools) > 0 {
		if err := worker.SetupWith(ctx, js, topo, worker.SetupOptions{SitePools: sitePools}); err != nil {
			t.Fatal(err)
		}
		topo.SitePools = sitePools
	}
	if err := console.EnsureAuditStream(ctx, js, topo, 1); err != nil {
		t.Fatal(err)
	}
	sim := graphsimtest.Start(t, graphsim.Options{Users: 5, Groups: 2})
	cred := sim.Credentials()[0]
	snap, err := sim.Export(cred.TenantID)
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	for _, u := range snap.Users {
		if u.AccountEnabled && len(users) < 3 {
			users = append(users, strings.ToLower(u.UserPrincipalName))
		}
	}
	var h http.Handler
	hs := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(hs.Close)
	if err := sim.AddSignInApp(cred.TenantID, graphsim.SignInApp{ClientID: "console-test", RedirectURIs: []string{hs.URL + "/auth/callback"},
		Roles: map[string][]string{users[0]: {"M365Worker.Operator"}, users[1]: {"M365Worker.Viewer"}, users[2]: {"Something.Else"}}}); err != nil {
		t.Fatal(err)
	}
	store, err := worker.OpenInstances(ctx, js, topo)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, worker.Instance{ID: "acme", Pool: "default", TenantID: cred.TenantID, ClientID: cred.ClientID, FederatedCredential: true}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	oc := console.OIDCConfig{Issuer: sim.SignInIssuer(cred.TenantID), ClientID: "console-test", HTTPClient: sim.Client()}
	if oidc != nil {
		oidc(&oc, snap)
	}
	cs, err := console.New(cctx, console.Config{URL: hs.URL, Topology: topo, Refresh: 100 * time.Millisecond, OIDC: oc}, js, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	h = cs
	return &env{t: t, url: hs.URL, js: js, sim: sim, users: users, rootCAs: &tlsRoots{hs}, instance: "acme"}
}

// browser is a client with its own cookies that trusts the console and the
// simulator, and does not follow redirects (each hop is checked).
func (e *env) browser() *http.Client {
	pool := e.sim.CertPool().Clone()
	pool.AddCert(e.rootCAs.hs.Certificate())
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func do(t *testing.T, c *http.Client, method, u string, form url.Values) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, u, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// startSignIn goes from the console to the simulator's sign-in form and
// returns the form's action and fields.
func (e *env) startSignIn(c *http.Client) (string, url.Values) {
	e.t.Helper()
	resp, _ := do(e.t, c, "GET", e.url+"/", nil)
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/login") {
		e.t.Fatalf("an unauthenticated page answered %d to %s, want the sign-in", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, _ = do(e.t, c, "GET", e.url+resp.Header.Get("Location"), nil)
	authorize := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusFound || !strings.Contains(authorize, "code_challenge_method=S256") {
		e.t.Fatalf("/login answered %d to %s, want the issuer with PKCE", resp.StatusCode, authorize)
	}
	resp, page := do(e.t, c, "GET", authorize, nil)
	if resp.StatusCode != 200 {
		e.t.Fatalf("the sign-in page: %d %s", resp.StatusCode, page)
	}
	return authorize, formFields(e.t, page)
}

// signIn signs in as upn and returns the callback's answer.
func (e *env) signIn(c *http.Client, upn string) *http.Response {
	e.t.Helper()
	action, fields := e.startSignIn(c)
	fields.Set("username", upn)
	resp, _ := do(e.t, c, "POST", action, fields)
	if resp.StatusCode != http.StatusFound {
		e.t.Fatalf("signing in as %s at the simulator answered %d", upn, resp.StatusCode)
	}
	resp, _ = do(e.t, c, "GET", resp.Header.Get("Location"), nil)
	return resp
}

// formFields are a page's hidden inputs.
func formFields(t *testing.T, page string) url.Values {
	t.Helper()
	v := url.Values{}
	for _, m := range hiddenRE.FindAllStringSubmatch(page, -1) {
		v.Set(html.UnescapeString(m[1]), html.UnescapeString(m[2]))
	}
	if v.Get("state") == "" {
		t.Fatalf("the sign-in form carries no state:\n%s", page)
	}
	return v
}

var hiddenRE = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)

var csrfRE = regexp.MustCompile(`name="csrf" content="([^"]+)"`)

func (e *env) csrf(c *http.Client) string {
	e.t.Helper()
	_, page := do(e.t, c, "GET", e.url+"/audit", nil)
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		e.t.Fatalf("no CSRF token on the page:\n%s", page)
	}
	return m[1]
}

func TestSignInRolesAndRefusals(t *testing.T) {
	e := newEnv(t)
	op := e.browser()
	if resp := e.signIn(op, e.users[0]); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("the operator's callback answered %d to %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if _, page := do(t, op, "GET", e.url+"/", nil); !strings.Contains(page, `<span id="role">operator</span>`) {
		t.Errorf("the operator's overview:\n%s", page)
	}
	viewer := e.browser()
	e.signIn(viewer, e.users[1])
	if _, page := do(t, viewer, "GET", e.url+"/", nil); !strings.Contains(page, `<span id="role">viewer</span>`) {
		t.Errorf("the viewer's overview:\n%s", page)
	}

	// Signed in, but with no console role: refused, and no session.
	none := e.browser()
	if resp := e.signIn(none, e.users[2]); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a user without a console role got %d, want 403", resp.StatusCode)
	}
	if resp, _ := do(t, none, "GET", e.url+"/failures", nil); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("after a refused sign-in a page answered %d, want a redirect to sign-in", resp.StatusCode)
	}

	// A sign-in finished in another browser than the one that started it
	// (a login CSRF), or a second time, is refused.
	a := e.browser()
	action, fields := e.startSignIn(a)
	fields.Set("username", e.users[0])
	resp, _ := do(t, a, "POST", action, fields)
	callback := resp.Header.Get("Location")
	if resp, _ := do(t, e.browser(), "GET", callback, nil); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a callback in another browser answered %d, want 400", resp.StatusCode)
	}
	if resp, _ := do(t, a, "GET", callback, nil); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("the callback after its state was spent answered %d, want 400", resp.StatusCode)
	}

	// A code that is not the issuer's is refused by the issuer.
	b := e.browser()
	action, fields = e.startSignIn(b)
	fields.Set("username", e.users[0])
	resp, _ = do(t, b, "POST", action, fields)
	u, _ := url.Parse(resp.Header.Get("Location"))
	q := u.Query()
	q.Set("code", "forged")
	u.RawQuery = q.Encode()
	if resp, _ := do(t, b, "GET", u.String(), nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a forged code answered %d, want 401", resp.StatusCode)
	}
}

func TestStateChangesNeedCSRFAndAnOperator(t *testing.T) {
	e := newEnv(t)
	op, viewer := e.browser(), e.browser()
	e.signIn(op, e.users[0])
	e.signIn(viewer, e.users[1])
	opToken, viewerToken := e.csrf(op), e.csrf(viewer)
	cases := []struct {
		who    string
		c      *http.Client
		path   string
		form   url.Values
		status int
	}{
		{"operator without the token", op, "/instances/acme/sync", url.Values{}, 403},
		{"operator with the viewer's token", op, "/instances/acme/sync", url.Values{"csrf": {viewerToken}}, 403},
		{"viewer with its token", viewer, "/instances/acme/sync", url.Values{"csrf": {viewerToken}}, 403},
		{"viewer's replay", viewer, "/replay", url.Values{"csrf": {viewerToken}}, 403},
		{"viewer's reveal", viewer, "/failures/1/reveal", url.Values{"csrf": {viewerToken}}, 403},
		{"signed out", e.browser(), "/replay", url.Values{}, 401},
		{"operator with its token", op, "/instances/acme/sync", url.Values{"csrf": {opToken}}, 303},
	}
	for _, c := range cases {
		if resp, body := do(t, c.c, "POST", e.url+c.path, c.form); resp.StatusCode != c.status {
			t.Errorf("%s: POST %s answered %d, want %d\n%s", c.who, c.path, resp.StatusCode, c.status, body)
		}
	}
	jobsNow := func() int { return len(workertest.Messages(t, e.js, "M365_JOBS", "m365.jobs.default.acme.sync")) }
	if n := jobsNow(); n != 1 {
		t.Errorf("the jobs stream holds %d jobs, want the operator's one sync", n)
	}

	// An action whose audit record cannot be stored is not done.
	if err := e.js.DeleteStream(context.Background(), "M365_AUDIT"); err != nil {
		t.Fatal(err)
	}
	if resp, body := do(t, op, "POST", e.url+"/instances/acme/sync", url.Values{"csrf": {opToken}}); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "nothing was done") {
		t.Errorf("sync now without the audit stream answered %d:\n%s", resp.StatusCode, body)
	}
	if n := jobsNow(); n != 1 {
		t.Errorf("a sync was published without its audit record (%d jobs)", n)
	}
}

// Roles from group membership: the groups claim (object ids) instead of
// app roles.
func TestRolesFromGroups(t *testing.T) {
	var member, outsider string
	e := newEnvWith(t, func(c *console.OIDCConfig, snap *graphsim.Snapshot) {
		g := snap.Groups[0]
		in := map[string]bool{}
		for _, id := range g.Members {
			in[id] = true
		}
		for _, u := range snap.Users {
			switch {
			case !u.AccountEnabled:
			case in[u.ID] && member == "":
				member = u.UserPrincipalName
			case !in[u.ID] && outsider == "":
				outsider = u.UserPrincipalName
			}
		}
		c.RoleClaim, c.Operators = "groups", []string{g.ID}
	})
	if member == "" || outsider == "" {
		t.Fatalf("the seeded tenant needs a member and a non-member of its first group (%q, %q)", member, outsider)
	}
	op := e.browser()
	if resp := e.signIn(op, member); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("a member of the operators' group got %d", resp.StatusCode)
	}
	if _, page := do(t, op, "GET", e.url+"/", nil); !strings.Contains(page, `<span id="role">operator</span>`) {
		t.Errorf("the group member is not an operator:\n%s", page)
	}
	if resp := e.signIn(e.browser(), outsider); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a user outside the group got %d, want 403", resp.StatusCode)
	}
}

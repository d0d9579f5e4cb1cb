package graphsim_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tevyra/m365-worker/graphsim"
)

// raw is a plain HTTP client for one tenant's app, for the tests that look at
// the wire (throttling headers, delta tokens, status codes).
type raw struct {
	t     testing.TB
	sim   *graphsim.Server
	cred  graphsim.Credential
	hc    *http.Client
	token string
}

func newRaw(t testing.TB, sim *graphsim.Server, cred graphsim.Credential) *raw {
	r := &raw{t: t, sim: sim, cred: cred, hc: sim.Client()}
	r.token = r.getToken(cred.ClientSecret)
	return r
}

func (r *raw) tokenRequest(form url.Values) (int, map[string]any) {
	r.t.Helper()
	resp, err := r.hc.PostForm(r.cred.Authority+"/"+r.cred.TenantID+"/oauth2/v2.0/token", form)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

func (r *raw) getToken(secret string) string {
	r.t.Helper()
	code, body := r.tokenRequest(url.Values{"grant_type": {"client_credentials"}, "client_id": {r.cred.ClientID}, "client_secret": {secret}, "scope": {r.cred.GraphRoot + "/.default"}})
	if code != 200 {
		r.t.Fatalf("token: %d %v", code, body)
	}
	return body["access_token"].(string)
}

// do sends a Graph request; path is relative to /v1.0 or a full URL.
func (r *raw) do(method, path string, body any, hdr ...string) (*http.Response, []byte) {
	r.t.Helper()
	u := path
	if !strings.HasPrefix(path, "https://") {
		p, q, _ := strings.Cut(path, "?")
		u = r.cred.GraphRoot + "/v1.0" + p
		if q != "" {
			vals, err := url.ParseQuery(q)
			if err != nil {
				r.t.Fatal(err)
			}
			u += "?" + strings.ReplaceAll(vals.Encode(), "+", "%20")
		}
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, _ := http.NewRequestWithContext(context.Background(), method, u, rd)
	req.Header.Set("Authorization", "Bearer "+r.token)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b
}

func (r *raw) json(method, path string, body any, want int, hdr ...string) map[string]any {
	r.t.Helper()
	resp, b := r.do(method, path, body, hdr...)
	if resp.StatusCode != want {
		r.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	var m map[string]any
	if len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			r.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return m
}

func graphErr(t testing.TB, b []byte) (code, msg string) {
	t.Helper()
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("not a Graph error: %s", b)
	}
	return e.Error.Code, e.Error.Message
}

func start(t testing.TB, o graphsim.Options) *graphsim.Server {
	t.Helper()
	sim, err := graphsim.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	return sim
}

func TestCountAndQueryRules(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 120, Groups: 5, NoThrottling: true})
	r := newRaw(t, sim, sim.Credentials()[0])

	resp, b := r.do("GET", "/users/$count", nil)
	if code, msg := graphErr(t, b); resp.StatusCode != 400 || code != "Request_BadRequest" || msg != "$count is not currently supported." {
		t.Errorf("$count without ConsistencyLevel: %d %s", resp.StatusCode, b)
	}
	resp, b = r.do("GET", "/users/$count", nil, "ConsistencyLevel", "eventual")
	if resp.StatusCode != 200 || string(b) != "120" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("$count: %d %q %s", resp.StatusCode, b, resp.Header.Get("Content-Type"))
	}
	// $count=true is ignored without the header, honoured with it, page one only.
	m := r.json("GET", "/users?$count=true&$top=50", nil, 200)
	if _, ok := m["@odata.count"]; ok {
		t.Error("@odata.count without ConsistencyLevel")
	}
	m = r.json("GET", "/users?$count=true&$top=50", nil, 200, "ConsistencyLevel", "eventual")
	if m["@odata.count"] != float64(120) {
		t.Errorf("@odata.count = %v", m["@odata.count"])
	}
	next := m["@odata.nextLink"].(string)
	m2 := r.json("GET", next, nil, 200, "ConsistencyLevel", "eventual")
	if _, ok := m2["@odata.count"]; ok {
		t.Error("@odata.count on page two")
	}
	// Paging walks every user exactly once.
	seen := map[string]bool{}
	link := "/users?$select=id,accountEnabled&$top=7"
	for link != "" {
		m := r.json("GET", link, nil, 200)
		for _, v := range m["value"].([]any) {
			id := v.(map[string]any)["id"].(string)
			if seen[id] {
				t.Fatalf("user %s twice", id)
			}
			seen[id] = true
			if _, ok := v.(map[string]any)["displayName"]; ok {
				t.Fatal("$select ignored")
			}
		}
		link, _ = m["@odata.nextLink"].(string)
	}
	if len(seen) != 120 {
		t.Errorf("paged %d users", len(seen))
	}
	resp, b = r.do("GET", "/users?$top=1000", nil)
	if code, _ := graphErr(t, b); resp.StatusCode != 400 || code != "Request_UnsupportedQuery" {
		t.Errorf("$top=1000: %d %s", resp.StatusCode, b)
	}
	// Advanced filter: needs ConsistencyLevel and $count=true.
	resp, _ = r.do("GET", "/users?$filter=assignedLicenses/$count ne 0", nil)
	if resp.StatusCode != 400 {
		t.Errorf("advanced filter without eventual: %d", resp.StatusCode)
	}
	m = r.json("GET", "/users?$filter=assignedLicenses/$count ne 0&$count=true&$select=id,assignedLicenses", nil, 200, "ConsistencyLevel", "eventual")
	snap, _ := sim.Export(r.cred.TenantID)
	licensed := 0
	for _, u := range snap.Users {
		if len(u.AssignedLicenses) > 0 {
			licensed++
		}
	}
	if m["@odata.count"] != float64(licensed) || licensed == 0 {
		t.Errorf("licensed users: %v, ground truth %d", m["@odata.count"], licensed)
	}
	enabled := 0
	for _, u := range snap.Users {
		if u.AccountEnabled {
			enabled++
		}
	}
	resp, b = r.do("GET", "/users/$count?$filter=accountEnabled eq true", nil, "ConsistencyLevel", "eventual")
	if string(b) != fmt.Sprint(enabled) {
		t.Errorf("enabled users %s, ground truth %d", b, enabled)
	}
	u := snap.Users[3]
	m = r.json("GET", "/users?$filter=userPrincipalName eq '"+u.UserPrincipalName+"'", nil, 200)
	if vs := m["value"].([]any); len(vs) != 1 || vs[0].(map[string]any)["id"] != u.ID {
		t.Errorf("filter by UPN: %v", m["value"])
	}
	m = r.json("GET", "/groups?$filter=startswith(displayName,'SG ')&$select=id,displayName", nil, 200)
	for _, v := range m["value"].([]any) {
		if !strings.HasPrefix(v.(map[string]any)["displayName"].(string), "SG ") {
			t.Errorf("startswith: %v", v)
		}
	}
	// Headers: request-id, echoed client-request-id, RU charged.
	resp, _ = r.do("GET", "/users?$select=id", nil, "client-request-id", "abc-123")
	if resp.Header.Get("request-id") == "" || resp.Header.Get("client-request-id") != "abc-123" || resp.Header.Get("x-ms-resource-unit") != "1" {
		t.Errorf("headers: %v", resp.Header)
	}
	resp, _ = r.do("GET", "/subscribedSkus", nil)
	if resp.Header.Get("x-ms-resource-unit") != "3" {
		t.Errorf("subscribedSkus RU %s", resp.Header.Get("x-ms-resource-unit"))
	}
}

// Sizes seeds one tenant per entry, each of its own size.
func TestTenantsOfMixedSizes(t *testing.T) {
	sim, err := graphsim.Start(graphsim.Options{Sizes: []graphsim.TenantSize{{Users: 5, Groups: 1}, {Users: 40, Groups: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	creds := sim.Credentials()
	if len(creds) != 2 {
		t.Fatalf("%d tenants seeded, want 2", len(creds))
	}
	for i, want := range []int{5, 40} {
		n := 0
		if err := sim.Mutate(creds[i].TenantID, func(a *graphsim.Admin) error { n = a.Tenant().UserCount(); return nil }); err != nil {
			t.Fatal(err)
		}
		if n != want {
			t.Errorf("tenant %d has %d users, want %d", i, n, want)
		}
	}
}

// Graph answers over HTTP/2: a client set up as the workers' (the default
// transport with the tenant's TLS roots) multiplexes its requests on one
// connection instead of opening one per request in flight.
func TestAnswersOverHTTP2(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 3, Groups: 1, NoThrottling: true})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(sim.CAPEM())
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(sim.URL() + "/v1.0/users")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Errorf("answered over %s, want HTTP/2", resp.Proto)
	}
}

// A list filtered by a UPN prefix (a full round's segment) pages through
// exactly the users whose UPN starts with it, in either case, from the
// index by first character, and sees a user created after the index was
// built.
func TestUPNSegmentsMatchTheirPrefix(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 300, Groups: 2, NoThrottling: true})
	cred := sim.Credentials()[0]
	r := newRaw(t, sim, cred)
	segment := func(prefix string) map[string]bool {
		got := map[string]bool{}
		link := "/users?$select=id,userPrincipalName&$top=7&$filter=" + url.QueryEscape("startswith(userPrincipalName,'"+prefix+"')")
		for link != "" {
			m := r.json("GET", link, nil, 200)
			for _, v := range m["value"].([]any) {
				u := v.(map[string]any)
				if got[u["id"].(string)] {
					t.Fatalf("segment %q: %s twice", prefix, u["id"])
				}
				got[u["id"].(string)] = true
			}
			link, _ = m["@odata.nextLink"].(string)
		}
		return got
	}
	want := func(prefix string) map[string]bool {
		snap, err := sim.Export(cred.TenantID)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, u := range snap.Users {
			if strings.HasPrefix(strings.ToLower(u.UserPrincipalName), strings.ToLower(prefix)) {
				out[u.ID] = true
			}
		}
		return out
	}
	for _, p := range []string{"a", "A", "al", "z", "9"} {
		if got, w := segment(p), want(p); !maps.Equal(got, w) {
			t.Errorf("segment %q: %d users, want %d", p, len(got), len(w))
		}
	}
	_ = sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error { a.CreateUser("aaron.new", "Aaron New"); return nil })
	if got, w := segment("a"), want("a"); !maps.Equal(got, w) || len(w) == 0 {
		t.Errorf("after a new user, segment a: %d users, want %d", len(got), len(w))
	}
}

package graphclient_test

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

func TestEndpointOverridesNeedTheOptIn(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 5, Groups: 1, NoThrottling: true})
	full := simConfig(sim, 0)
	cases := []struct {
		name   string
		edit   func(*graphclient.Config)
		fields []string
	}{
		{"all three", func(*graphclient.Config) {}, []string{"authority", "graph_root", "ca_pem"}},
		{"authority", func(c *graphclient.Config) { c.GraphRoot, c.CAPEM = "", nil }, []string{"authority"}},
		{"graph_root", func(c *graphclient.Config) { c.Authority, c.CAPEM = "", nil }, []string{"graph_root"}},
		{"ca_pem", func(c *graphclient.Config) { c.Authority, c.GraphRoot = "", "" }, []string{"ca_pem"}},
	}
	for _, tc := range cases {
		cfg := full
		tc.edit(&cfg)
		_, err := graphclient.NewPool(graphclient.PoolConfig{}).Client(cfg)
		var oe *graphclient.EndpointOverrideError
		if !errors.Is(err, graphclient.ErrEndpointOverride) || !errors.As(err, &oe) {
			t.Errorf("%s: want an endpoint override refusal, got %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(oe.Fields, tc.fields) || oe.Instance != cfg.Instance || !strings.Contains(err.Error(), "AllowEndpointOverrides") {
			t.Errorf("%s: %+v: %v", tc.name, oe, err)
		}
	}
	// National clouds come from the built-in table, and a proxy is always
	// allowed.
	for _, cloud := range []string{"", "global", "usgov", "usgov-dod", "china"} {
		cfg := graphclient.Config{Instance: "nc-" + cloud, TenantID: full.TenantID, ClientID: full.ClientID, ClientSecret: "s", Cloud: cloud, HTTPProxy: "http://127.0.0.1:3128"}
		if _, err := graphclient.NewPool(graphclient.PoolConfig{}).Client(cfg); err != nil {
			t.Errorf("cloud %q: %v", cloud, err)
		}
	}
	// With the opt-in, the overrides work.
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), full)
	if _, err := c.SubscribedSKUs(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// recorder is a second server (not the instance's Graph host) that records
// the requests reaching it and whether they carried a bearer token. It
// answers like a delta page that ends the round, so a client that follows a
// link to it succeeds.
type recorder struct {
	*httptest.Server
	mu       sync.Mutex
	requests int
	tokens   []string
}

func startRecorder(t *testing.T, tlsOn bool) *recorder {
	t.Helper()
	r := &recorder{}
	h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.requests++
		if a := req.Header.Get("Authorization"); a != "" {
			r.tokens = append(r.tokens, a)
		}
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"value":[],"@odata.deltaLink":"` + r.URL + `/v1.0/users/delta?$deltatoken=x"}`))
	})
	if tlsOn {
		r.Server = httptest.NewTLSServer(h)
	} else {
		r.Server = httptest.NewServer(h)
	}
	t.Cleanup(r.Close)
	return r
}

func (r *recorder) seen() (int, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests, append([]string(nil), r.tokens...)
}

// trustingBoth is the simulator tenant's configuration trusting the
// recorder's certificate too: a request to it would succeed, so only the
// client's own checks keep the token from it.
func trustingBoth(sim *graphsim.Server, r *recorder) graphclient.Config {
	cfg := simConfig(sim, 0)
	if r.TLS != nil {
		cfg.CAPEM = append(append([]byte{}, cfg.CAPEM...), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate().Raw})...)
	}
	return cfg
}

func setFaults(t *testing.T, sim *graphsim.Server, f graphsim.ResponseFaults) {
	t.Helper()
	if err := sim.Mutate(sim.Credentials()[0].TenantID, func(a *graphsim.Admin) error { a.SetResponseFaults(f); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestNextLinkToAnotherHostGetsNoToken(t *testing.T) {
	for _, tlsOn := range []bool{true, false} {
		name := map[bool]string{true: "https", false: "http"}[tlsOn]
		t.Run(name, func(t *testing.T) {
			sim := startSim(t, graphsim.Options{Users: 30, Groups: 2, NoThrottling: true, DeltaPageSize: 10})
			other := startRecorder(t, tlsOn)
			c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, MaxAttempts: 1}), trustingBoth(sim, other))
			setFaults(t, sim, graphsim.ResponseFaults{NextLinkTo: other.URL})
			_, err := c.UserDelta(context.Background(), "", func([]graphclient.UserChange) error { return nil })
			t.Log(err)
			n, tokens := other.seen()
			if len(tokens) > 0 {
				t.Fatalf("the other host got the bearer token (%d requests)", n)
			}
			if n > 0 {
				t.Errorf("the other host got %d requests", n)
			}
			if !errors.Is(err, graphclient.ErrForeignHost) || errors.Is(err, graphclient.ErrDeltaExpired) || !strings.Contains(err.Error(), other.URL) {
				t.Errorf("want a foreign-host error naming %s, got %v", other.URL, err)
			}
			var ge *graphclient.Error
			if errors.As(err, &ge) && ge.Retryable() {
				t.Errorf("a foreign link is retryable: %v", err)
			}
		})
	}
}

func TestRedirects(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 12, Groups: 2, NoThrottling: true})
	other := startRecorder(t, true)
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, MaxAttempts: 1}), trustingBoth(sim, other))
	ctx := context.Background()
	snap, _ := sim.Export(sim.Credentials()[0].TenantID)
	user := snap.Users[0].ID
	bulk := func() error {
		_, err := c.UserDelta(ctx, "", func([]graphclient.UserChange) error { return nil })
		return err
	}
	sdk := func() error { _, err := c.GetUser(ctx, user); return err }

	// To another host: not followed, by either path.
	setFaults(t, sim, graphsim.ResponseFaults{RedirectTo: other.URL})
	for name, call := range map[string]func() error{"bulk": bulk, "sdk": sdk} {
		err := call()
		t.Logf("%s: %v", name, err)
		if n, tokens := other.seen(); n > 0 || len(tokens) > 0 {
			t.Fatalf("%s: the redirect to the other host was followed (%d requests, %d with a token)", name, n, len(tokens))
		}
		if !errors.Is(err, graphclient.ErrForeignHost) {
			t.Errorf("%s: want a foreign-host error, got %v", name, err)
		}
	}
	// On the same host over https: followed.
	setFaults(t, sim, graphsim.ResponseFaults{RedirectTo: sim.URL()})
	for name, call := range map[string]func() error{"bulk": bulk, "sdk": sdk} {
		if err := call(); err != nil {
			t.Errorf("%s: a redirect on the Graph host: %v", name, err)
		}
	}
	// A loop ends after a few.
	setFaults(t, sim, graphsim.ResponseFaults{RedirectLoop: true})
	for name, call := range map[string]func() error{"bulk": bulk, "sdk": sdk} {
		before := sim.Requests.Load()
		err := call()
		t.Logf("%s: %v", name, err)
		if n := sim.Requests.Load() - before; err == nil || n > 4 {
			t.Errorf("%s: a redirect loop: %d requests, %v", name, n, err)
		}
	}
}

func TestStoredForeignDeltaLinkMeansAFullRound(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 12, Groups: 3, NoThrottling: true})
	other := startRecorder(t, true)
	plain := startRecorder(t, false)
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, MaxAttempts: 1}), trustingBoth(sim, other))
	ctx := context.Background()
	graphHost := strings.TrimPrefix(sim.URL(), "https://")
	links := []string{
		other.URL + "/v1.0/users/delta?$deltatoken=stolen",
		plain.URL + "/v1.0/users/delta?$deltatoken=stolen",
		"http://" + graphHost + "/v1.0/users/delta?$deltatoken=x",
		"https://" + graphHost + "@" + strings.TrimPrefix(other.URL, "https://") + "/v1.0/users/delta",
	}
	for _, link := range links {
		if c.OwnsLink(link) {
			t.Errorf("OwnsLink(%s)", link)
		}
		_, uerr := c.UserDelta(ctx, link, func([]graphclient.UserChange) error { return nil })
		_, gerr := c.GroupDelta(ctx, strings.Replace(link, "/users/", "/groups/", 1), func([]graphclient.GroupChange) error { return nil })
		t.Log(uerr)
		for _, err := range []error{uerr, gerr} {
			if !errors.Is(err, graphclient.ErrDeltaExpired) || !errors.Is(err, graphclient.ErrForeignHost) {
				t.Errorf("%s: want an expired-and-foreign delta link, got %v", link, err)
			}
		}
	}
	for _, r := range []*recorder{other, plain} {
		if n, tokens := r.seen(); n > 0 || len(tokens) > 0 {
			t.Errorf("%s got %d requests, %d with a token", r.URL, n, len(tokens))
		}
	}
	if !c.OwnsLink(sim.URL() + "/v1.0/users/delta?$deltatoken=x") {
		t.Error("the Graph host's own link is not owned")
	}
	// What the sync does on ErrDeltaExpired: a full round, which reads
	// every user and group.
	users, groups := 0, 0
	if _, err := c.UserDelta(ctx, "", func(p []graphclient.UserChange) error { users += len(p); return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GroupDelta(ctx, "", func(p []graphclient.GroupChange) error { groups += len(p); return nil }); err != nil {
		t.Fatal(err)
	}
	if users != 12 || groups != 3 {
		t.Errorf("the full round read %d users, %d groups", users, groups)
	}
}

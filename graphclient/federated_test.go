package graphclient_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

const saSubject = "system:serviceaccount:m365:m365-worker"

// A federated credential: the pool's token, signed by an issuer the app
// trusts, is exchanged for the app's token; no secret exists. Each
// mismatch Entra checks is refused with its AADSTS code.
func TestFederatedCredential(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true})
	base := simConfig(sim, 0)
	cluster, err := sim.NewIssuer("cluster")
	if err != nil {
		t.Fatal(err)
	}
	rogue, _ := sim.NewIssuer("rogue")
	_ = sim.Mutate(base.TenantID, func(a *graphsim.Admin) error {
		a.App(base.ClientID).Federated = []graphsim.FederatedCredential{{Issuer: cluster.URL(), Subject: saSubject, Audiences: []string{graphsim.FederationAudience}}}
		return nil
	})
	cfg := base
	cfg.ClientSecret, cfg.Federated = "", true
	dir := t.TempDir()
	call := func(token string) error {
		path := filepath.Join(dir, "token")
		if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, FederatedTokenFile: path}), cfg)
		_, err := c.SubscribedSKUs(context.Background())
		return err
	}
	if err := call(cluster.Mint(saSubject, []string{graphsim.FederationAudience}, 10*time.Minute)); err != nil {
		t.Fatalf("a valid federated token: %v", err)
	}
	for name, c := range map[string]struct {
		token, code string
	}{
		"wrong issuer":   {rogue.Mint(saSubject, []string{graphsim.FederationAudience}, 10*time.Minute), "AADSTS700211"},
		"wrong subject":  {cluster.Mint("system:serviceaccount:other:other", []string{graphsim.FederationAudience}, 10*time.Minute), "AADSTS700213"},
		"wrong audience": {cluster.Mint(saSubject, []string{"api://something-else"}, 10*time.Minute), "AADSTS700212"},
		"expired":        {cluster.Mint(saSubject, []string{graphsim.FederationAudience}, -time.Minute), "AADSTS700024"},
		"forged":         {cluster.Mint(saSubject, []string{graphsim.FederationAudience}, 10*time.Minute)[:40] + rogue.Mint(saSubject, []string{graphsim.FederationAudience}, time.Minute)[40:], ""},
	} {
		err := call(c.token)
		var ge *graphclient.Error
		if !errors.Is(err, graphclient.ErrAuth) || !errors.As(err, &ge) || (c.code != "" && ge.Code != c.code) || ge.Hint == "" && c.code != "" {
			t.Errorf("%s: %v, want %s", name, err, c.code)
		}
	}
	// No token file configured: a clear auth failure, not a retry loop.
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), cfg)
	if _, err := c.SubscribedSKUs(context.Background()); !errors.Is(err, graphclient.ErrAuth) {
		t.Errorf("no federated token file: %v", err)
	}
}

// The app registration's secrets and certificates, with their ends, read
// from Graph.
func TestAppCredentials(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true})
	cfg := simConfig(sim, 0)
	ends := time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)
	_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error { a.App(cfg.ClientID).SecretEnds = ends; return nil })
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), cfg)
	creds, err := c.AppCredentials(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(creds) != 1 || !creds[0].Secret || creds[0].Hint != cfg.ClientSecret[:3] || !creds[0].Ends.Equal(ends) {
		t.Fatalf("app credentials %+v, want the secret %s… ending %s", creds, cfg.ClientSecret[:3], ends)
	}
}

// A rotated secret makes a new client with a credential of its own: its
// first call takes a new token, none of the old credential's is reused.
func TestRotatedSecretTakesANewToken(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true})
	cfg := simConfig(sim, 0)
	const rotated = "r0tated~secret.value-0123456789abcdef"
	_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error {
		a.App(cfg.ClientID).MoreSecrets = []graphsim.AppSecret{{Value: rotated}}
		return nil
	})
	pool := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true})
	old := newClient(t, pool, cfg)
	if _, err := old.SubscribedSKUs(context.Background()); err != nil {
		t.Fatal(err)
	}
	cfg.ClientSecret = rotated
	c := newClient(t, pool, cfg)
	before := sim.Tokens.Load()
	if _, err := c.SubscribedSKUs(context.Background()); err != nil || c == old {
		t.Fatalf("after the rotation: %v (same client %v)", err, c == old)
	}
	if n := sim.Tokens.Load() - before; n != 1 {
		t.Fatalf("%d token requests for the rotated secret's first call, want 1 (a fresh token)", n)
	}
	if len(pool.Stats()) != 1 {
		t.Fatalf("the pool keeps %d clients for one instance", len(pool.Stats()))
	}
}

// The pool's federated token from a managed identity: azidentity asks the
// machine's identity endpoint (here App Service's, IDENTITY_ENDPOINT and
// IDENTITY_HEADER) for a token for api://AzureADTokenExchange, which the
// app's federated credential trusts.
func TestFederatedCredentialFromManagedIdentity(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true})
	cfg := simConfig(sim, 0)
	mi, _ := sim.NewIssuer("managed")
	const miSubject = "5c1e2f3a-0b4d-4e6f-8a9b-1c2d3e4f5a6b" // the identity's object id
	_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error {
		a.App(cfg.ClientID).Federated = []graphsim.FederatedCredential{{Issuer: mi.URL(), Subject: miSubject}}
		return nil
	})
	asked := make(chan string, 4)
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-IDENTITY-HEADER") != "the-header" {
			http.Error(w, "no identity header", http.StatusUnauthorized)
			return
		}
		asked <- r.URL.Query().Get("resource")
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"access_token": mi.Mint(miSubject, []string{graphsim.FederationAudience}, time.Hour),
			"expires_on": strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10), "resource": graphsim.FederationAudience, "token_type": "Bearer"})
	}))
	defer endpoint.Close()
	t.Setenv("IDENTITY_ENDPOINT", endpoint.URL)
	t.Setenv("IDENTITY_HEADER", "the-header")
	cfg.ClientSecret, cfg.Federated = "", true
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, FederatedManagedIdentity: "system"}), cfg)
	if _, err := c.SubscribedSKUs(context.Background()); err != nil {
		t.Fatalf("with the managed identity's token: %v", err)
	}
	if res := <-asked; res != graphsim.FederationAudience {
		t.Fatalf("the managed identity was asked for %q, want %s", res, graphsim.FederationAudience)
	}
}

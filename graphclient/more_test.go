package graphclient_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

func TestCertificateConfigAndTokenCache(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true})
	base := simConfig(sim, 0)
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "m365-worker"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	app := &graphsim.App{ClientID: "33333333-3333-4333-8333-333333333333", CertPEM: certPEM, Roles: graphsim.ReadOnlyPermissions}
	_ = sim.Mutate(base.TenantID, func(a *graphsim.Admin) error { a.AddApp(app); return nil })
	cfg := graphclient.Config{Instance: "cert", TenantID: base.TenantID, ClientID: app.ClientID, CertificatePEM: certPEM, PrivateKeyPEM: keyPEM,
		Authority: base.Authority, GraphRoot: base.GraphRoot, CAPEM: base.CAPEM}
	pool := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true})
	c := newClient(t, pool, cfg)
	before := sim.Tokens.Load()
	for i := 0; i < 5; i++ {
		if _, err := c.SubscribedSKUs(context.Background()); err != nil {
			t.Fatalf("call %d with a certificate: %v", i, err)
		}
	}
	if n := sim.Tokens.Load() - before; n != 1 {
		t.Errorf("%d token requests for 5 calls: tokens are not cached", n)
	}
	// The same instance and configuration give the same client.
	if c2 := newClient(t, pool, cfg); c2 != c {
		t.Error("the pool built a second client for an unchanged configuration")
	}
}

func TestOneRetryLayer(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true, Faults: graphsim.Faults{Rate503: 1}})
	cfg := simConfig(sim, 0)
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, MaxAttempts: 3}), cfg)
	_, err := c.SubscribedSKUs(context.Background())
	if !errors.Is(err, graphclient.ErrUnavailable) {
		t.Fatalf("every response 503: %v", err)
	}
	// Three attempts by our transport, none added by the SDK's retry
	// handler (it would make 3 × 4).
	if s := c.Stats(); s.Requests != 3 || s.Retries != 2 {
		t.Errorf("stats %+v for MaxAttempts 3", s)
	}
}

func TestClouds(t *testing.T) {
	for name, root := range map[string]string{"global": "https://graph.microsoft.com", "usgov": "https://graph.microsoft.us",
		"usgov-dod": "https://dod-graph.microsoft.us", "china": "https://microsoftgraph.chinacloudapi.cn", "": "https://graph.microsoft.com"} {
		c, err := graphclient.LookupCloud(name)
		if err != nil || c.GraphRoot != root {
			t.Errorf("%q: %+v %v", name, c, err)
		}
	}
	if _, err := graphclient.LookupCloud("mars"); err == nil {
		t.Error("unknown cloud accepted")
	}
	if graphclient.RUBudget(49) != 3500 || graphclient.RUBudget(500) != 5000 || graphclient.RUBudget(501) != 8000 {
		t.Error("size classes")
	}
}

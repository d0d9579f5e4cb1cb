package handlers_test

import (
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// The proxy's credentials are opened for the instance's http_proxy field and
// put back into the proxy URL only in the Graph client's configuration.
func TestClientConfigOpensProxyCredentials(t *testing.T) {
	kp, _ := nkeys.CreateCurveKeys()
	pub, _ := kp.PublicKey()
	in := worker.Instance{ID: "acme", TenantID: "6e7b768e-07e2-4810-8459-485f84f8f204", ClientID: "1c4a6a0b-5f6d-4bb8-9f1e-2f7f0f6e4d11", HTTPProxy: "http://proxy.example:3128"}
	in.ClientSecret, _ = jobs.SealFor([]byte("s"), pub, in.SecretBinding(worker.FieldClientSecret))
	in.ProxyCredentials, _ = jobs.SealFor([]byte("puser:p@ss:word"), pub, in.SecretBinding(worker.FieldProxy))
	open := func(s *jobs.SealedSecret, b jobs.Binding) ([]byte, error) { return s.OpenFor(kp, b) }
	cfg, err := handlers.ClientConfig(&in, open, 0)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPProxy != "http://puser:p%40ss%3Aword@proxy.example:3128" {
		t.Errorf("proxy %q", cfg.HTTPProxy)
	}
	// Credentials sealed for another instance do not open here.
	other := in
	other.ID = "evil"
	if _, err := handlers.ClientConfig(&other, open, 0); err == nil {
		t.Error("another instance's proxy credentials opened")
	}
}

package graphsim_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tevyra/m365-worker/graphsim"
)

func TestTokenErrors(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 5, Groups: 1, NoThrottling: true})
	cred := sim.Credentials()[0]
	r := &raw{t: t, sim: sim, cred: cred, hc: sim.Client()}
	form := func(clientID, secret string) url.Values {
		return url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret}, "scope": {cred.GraphRoot + "/.default"}}
	}
	for _, c := range []struct {
		name   string
		tenant string
		form   url.Values
		status int
		aadsts string
	}{
		{"wrong secret", cred.TenantID, form(cred.ClientID, "nope"), 401, "AADSTS7000215"},
		{"unknown client", cred.TenantID, form("00000000-0000-0000-0000-000000000001", "x"), 400, "AADSTS700016"},
		{"unknown tenant", "11111111-1111-1111-1111-111111111111", form(cred.ClientID, cred.ClientSecret), 400, "AADSTS90002"},
		{"by domain", cred.Domain, form(cred.ClientID, cred.ClientSecret), 200, ""},
	} {
		r.cred.TenantID = c.tenant
		code, body := r.tokenRequest(c.form)
		if code != c.status {
			t.Errorf("%s: %d %v", c.name, code, body)
			continue
		}
		if c.aadsts != "" && !strings.HasPrefix(body["error_description"].(string), c.aadsts+":") {
			t.Errorf("%s: %v", c.name, body)
		}
	}

	// azidentity reports the AADSTS code of a wrong secret.
	bad, _ := azidentity.NewClientSecretCredential(cred.TenantID, cred.ClientID, "wrong", &azidentity.ClientSecretCredentialOptions{
		ClientOptions: azcore.ClientOptions{Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: cred.Authority + "/"}, Transport: sim.Client()}, DisableInstanceDiscovery: true})
	_, err := bad.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{cred.GraphRoot + "/.default"}})
	var ae *azidentity.AuthenticationFailedError
	if !errors.As(err, &ae) || !strings.Contains(err.Error(), "AADSTS7000215") {
		t.Errorf("azidentity error: %v", err)
	}
	r.cred = cred
	_ = sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error { a.App("").Disabled = true; return nil })
	if code, body := r.tokenRequest(form(cred.ClientID, cred.ClientSecret)); code != 400 || !strings.Contains(body["error_description"].(string), "AADSTS7000112") {
		t.Errorf("disabled app: %d %v", code, body)
	}
}

func TestGraphRejectsBadTokens(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 5, Groups: 1, NoThrottling: true, TimeScale: 3600, TokenLifetime: time.Hour})
	other := start(t, graphsim.Options{Users: 5, Groups: 1, NoThrottling: true, Seed: 2})
	cred := sim.Credentials()[0]
	r := newRaw(t, sim, cred)
	for _, c := range []struct {
		name, token string
	}{
		{"missing", ""},
		{"garbage", "abc.def.ghi"},
		{"foreign", newRaw(t, other, other.Credentials()[0]).token},
	} {
		r2 := *r
		r2.token = c.token
		resp, b := r2.do("GET", "/users", nil)
		if code, _ := graphErr(t, b); resp.StatusCode != 401 || code != "InvalidAuthenticationToken" {
			t.Errorf("%s token: %d %s", c.name, resp.StatusCode, b)
		}
	}
	// At 3600× an hour-long token expires within a second or two.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, b := r.do("GET", "/users", nil)
		if resp.StatusCode == 401 {
			if _, msg := graphErr(t, b); !strings.Contains(msg, "expired") {
				t.Errorf("expired token: %s", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("token never expired")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestCertificateCredential(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 5, Groups: 1, NoThrottling: true})
	cred := sim.Credentials()[0]
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "m365-worker"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	cert, _ := x509.ParseCertificate(der)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	app := &graphsim.App{ClientID: "22222222-2222-4222-8222-222222222222", CertPEM: certPEM, Roles: graphsim.ReadOnlyPermissions}
	_ = sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error { a.AddApp(app); return nil })

	cc, err := azidentity.NewClientCertificateCredential(cred.TenantID, app.ClientID, []*x509.Certificate{cert}, key, &azidentity.ClientCertificateCredentialOptions{
		ClientOptions: azcore.ClientOptions{Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: cred.Authority + "/"}, Transport: sim.Client()}, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cc.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{cred.GraphRoot + "/.default"}})
	if err != nil {
		t.Fatalf("certificate credential: %v", err)
	}
	r := &raw{t: t, sim: sim, cred: cred, hc: sim.Client(), token: tok.Token}
	if resp, b := r.do("GET", "/users?$select=id", nil); resp.StatusCode != 200 {
		t.Fatalf("read with a certificate token: %d %s", resp.StatusCode, b)
	}
	// A certificate that is not the app's registered one is refused by the
	// simulator's signature check.
	otherKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	otherDER, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &otherKey.PublicKey, otherKey)
	otherCert, _ := x509.ParseCertificate(otherDER)
	bad, err := azidentity.NewClientCertificateCredential(cred.TenantID, app.ClientID, []*x509.Certificate{otherCert}, otherKey, &azidentity.ClientCertificateCredentialOptions{
		ClientOptions: azcore.ClientOptions{Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: cred.Authority + "/"}, Transport: sim.Client()}, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{cred.GraphRoot + "/.default"}}); err == nil || !strings.Contains(err.Error(), "AADSTS700027") {
		t.Errorf("an assertion signed by an unregistered certificate: %v", err)
	}
}

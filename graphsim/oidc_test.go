package graphsim_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/graphsim/graphsimtest"
)

// The simulator as an OpenID Connect issuer: authorization code with PKCE
// for a registered sign-in app, an ID token with the user's app roles and
// groups signed by the keys it publishes; and Entra's refusals.
func TestSignInWithPKCE(t *testing.T) {
	sim := graphsimtest.Start(t, graphsim.Options{Users: 5, Groups: 2})
	cred := sim.Credentials()[0]
	snap, _ := sim.Export(cred.TenantID)
	upn := snap.Users[0].UserPrincipalName
	const redirect = "http://127.0.0.1:9470/auth/callback"
	if err := sim.AddSignInApp(cred.TenantID, graphsim.SignInApp{ClientID: "console", RedirectURIs: []string{redirect},
		Roles: map[string][]string{strings.ToLower(upn): {"M365Worker.Operator"}}}); err != nil {
		t.Fatal(err)
	}
	c := sim.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	issuer := sim.SignInIssuer(cred.TenantID)
	var disc struct{ AuthorizationEndpoint, TokenEndpoint, JWKSURI string }
	var raw map[string]any
	getJSON(t, c, issuer+"/.well-known/openid-configuration", &raw)
	disc.AuthorizationEndpoint, _ = raw["authorization_endpoint"].(string)
	disc.TokenEndpoint, _ = raw["token_endpoint"].(string)
	disc.JWKSURI, _ = raw["jwks_uri"].(string)
	if raw["issuer"] != issuer || disc.AuthorizationEndpoint == "" {
		t.Fatalf("discovery: %v", raw)
	}
	verifier := "a-verifier-of-at-least-43-characters-0123456789"
	sum := sha256.Sum256([]byte(verifier))
	authorize := func(redirectURI, user string) *http.Response {
		t.Helper()
		q := url.Values{"client_id": {"console"}, "redirect_uri": {redirectURI}, "response_type": {"code"}, "scope": {"openid profile"},
			"state": {"s1"}, "nonce": {"n1"}, "code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"}, "username": {user}}
		resp, err := c.PostForm(disc.AuthorizationEndpoint, q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := authorize("https://evil.example/cb", upn); resp.StatusCode != 400 {
		t.Errorf("an unregistered redirect URI answered %d", resp.StatusCode)
	}
	if resp := authorize(redirect, "nobody@contoso.com"); resp.StatusCode != 400 {
		t.Errorf("an unknown user answered %d", resp.StatusCode)
	}
	resp := authorize(redirect, upn)
	back, _ := url.Parse(resp.Header.Get("Location"))
	code := back.Query().Get("code")
	if resp.StatusCode != http.StatusFound || code == "" || back.Query().Get("state") != "s1" {
		t.Fatalf("sign-in answered %d to %s", resp.StatusCode, back)
	}
	redeem := func(code, verifier string) (int, map[string]any) {
		resp, err := c.PostForm(disc.TokenEndpoint, url.Values{"grant_type": {"authorization_code"}, "client_id": {"console"},
			"redirect_uri": {redirect}, "code": {code}, "code_verifier": {verifier}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	if st, out := redeem(code, "another-verifier-of-at-least-43-characters-xyz"); st != 400 || out["error"] != "invalid_grant" {
		t.Errorf("a wrong PKCE verifier: %d %v", st, out)
	}
	// The refused attempt spent the code, as Entra does: sign in again.
	back, _ = url.Parse(authorize(redirect, upn).Header.Get("Location"))
	code = back.Query().Get("code")
	st, out := redeem(code, verifier)
	if st != 200 {
		t.Fatalf("redeem: %d %v", st, out)
	}
	idt, _ := out["id_token"].(string)
	parts := strings.Split(idt, ".")
	if len(parts) != 3 {
		t.Fatalf("id_token %q", idt)
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims map[string]any
	_ = json.Unmarshal(b, &claims)
	if claims["iss"] != issuer || claims["aud"] != "console" || claims["nonce"] != "n1" || claims["preferred_username"] != upn ||
		!strings.Contains(string(b), `"roles":["M365Worker.Operator"]`) {
		t.Errorf("claims: %s", b)
	}
	if st, _ := redeem(code, verifier); st != 400 {
		t.Errorf("a code redeemed twice answered %d", st)
	}
	var keys struct {
		Keys []map[string]string `json:"keys"`
	}
	getJSON(t, c, disc.JWKSURI, &keys)
	if len(keys.Keys) != 1 || keys.Keys[0]["kty"] != "RSA" || keys.Keys[0]["n"] == "" {
		t.Errorf("keys: %v", keys)
	}
}

func getJSON(t *testing.T, c *http.Client, u string, v any) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || json.Unmarshal(b, v) != nil {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, b)
	}
}

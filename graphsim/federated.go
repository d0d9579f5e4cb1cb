package graphsim

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"time"
)

// FederatedCredential is a federated identity credential of an app
// registration (workload identity federation): the app trusts tokens that
// Issuer signs for Subject with one of Audiences
// (api://AzureADTokenExchange by default), presented as client
// assertions.
type FederatedCredential struct {
	Issuer    string
	Subject   string
	Audiences []string
}

// FederationAudience is the audience Entra expects in a federated token.
const FederationAudience = "api://AzureADTokenExchange"

// Issuer is a local OpenID Connect issuer for tests: the stand-in for a
// Kubernetes cluster's service-account issuer or a managed identity. The
// simulator serves its discovery document and keys at URL(), and its
// token endpoint verifies federated assertions against them as Entra does.
type Issuer struct {
	url string
	key *rsa.PrivateKey
	kid string
}

// NewIssuer starts serving an issuer named name (letters and digits).
func (s *Server) NewIssuer(name string) (*Issuer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	iss := &Issuer{url: s.URL() + "/_issuers/" + name, key: key, kid: name + "-1"}
	s.issuersMu.Lock()
	if s.issuers == nil {
		s.issuers = map[string]*Issuer{}
	}
	s.issuers[name] = iss
	s.issuersMu.Unlock()
	return iss, nil
}

// URL is the issuer (the iss claim).
func (i *Issuer) URL() string { return i.url }

// Mint signs a token for sub with the audiences, valid for ttl (negative:
// already expired).
func (i *Issuer) Mint(sub string, aud []string, ttl time.Duration) string {
	now := time.Now()
	return i.Sign(map[string]any{"iss": i.url, "sub": sub, "aud": aud, "iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(ttl).Unix()})
}

// Sign signs arbitrary claims (RS256, the issuer's key id).
func (i *Issuer) Sign(claims map[string]any) string {
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": i.kid})
	c, _ := json.Marshal(claims)
	in := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	sum := sha256.Sum256([]byte(in))
	sig, _ := rsa.SignPKCS1v15(rand.Reader, i.key, crypto.SHA256, sum[:])
	return in + "." + b64.EncodeToString(sig)
}

// serveIssuer answers an issuer's discovery document and keys.
func (s *Server) serveIssuer(w http.ResponseWriter, r *http.Request) {
	name, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/_issuers/"), "/")
	s.issuersMu.Lock()
	iss := s.issuers[name]
	s.issuersMu.Unlock()
	switch {
	case iss == nil:
		http.NotFound(w, r)
	case rest == ".well-known/openid-configuration":
		writeJSON(w, 200, map[string]any{"issuer": iss.url, "jwks_uri": iss.url + "/openid/v1/jwks",
			"response_types_supported": []string{"id_token"}, "subject_types_supported": []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256"}})
	case rest == "openid/v1/jwks":
		pub := iss.key.PublicKey
		writeJSON(w, 200, map[string]any{"keys": []any{map[string]any{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": iss.kid,
			"n": b64.EncodeToString(pub.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(pub.E)).Bytes())}}})
	default:
		http.NotFound(w, r)
	}
}

// assertion is a federated client assertion being verified.
type assertion struct {
	header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	claims struct {
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Aud json.RawMessage `json:"aud"`
		Exp int64           `json:"exp"`
		Nbf int64           `json:"nbf"`
	}
	parts []string
}

func parseAssertion(jwt string) (*assertion, bool) {
	a := &assertion{parts: strings.Split(jwt, ".")}
	if len(a.parts) != 3 {
		return nil, false
	}
	hb, err1 := b64.DecodeString(a.parts[0])
	cb, err2 := b64.DecodeString(a.parts[1])
	if err1 != nil || err2 != nil || json.Unmarshal(hb, &a.header) != nil || json.Unmarshal(cb, &a.claims) != nil {
		return nil, false
	}
	return a, true
}

func (a *assertion) audiences() []string {
	var one string
	if json.Unmarshal(a.claims.Aud, &one) == nil {
		return []string{one}
	}
	var many []string
	_ = json.Unmarshal(a.claims.Aud, &many)
	return many
}

// aadRefusal is an AADSTS refusal of the token endpoint.
type aadRefusal struct {
	status int
	code   string
	aadsts int
	desc   string
}

// verifyFederated checks a federated assertion as Entra does: a federated
// credential of the app for its issuer, the signature against the keys
// the issuer publishes, then subject, audience and validity.
func (s *Server) verifyFederated(a *assertion, app *App) *aadRefusal {
	const check = " Please check your federated identity credential Subject, Audience and Issuer against the presented assertion."
	var byIssuer []FederatedCredential
	for _, f := range app.Federated {
		if f.Issuer == a.claims.Iss {
			byIssuer = append(byIssuer, f)
		}
	}
	if len(byIssuer) == 0 {
		return &aadRefusal{400, "invalid_request", 700211, fmt.Sprintf("No matching federated identity record found for presented assertion issuer '%s'.%s", a.claims.Iss, check)}
	}
	if r := s.verifySignature(a); r != nil {
		return r
	}
	var bySubject []FederatedCredential
	for _, f := range byIssuer {
		if f.Subject == a.claims.Sub {
			bySubject = append(bySubject, f)
		}
	}
	if len(bySubject) == 0 {
		return &aadRefusal{400, "invalid_request", 700213, fmt.Sprintf("No matching federated identity record found for presented assertion subject '%s'.%s", a.claims.Sub, check)}
	}
	aud := a.audiences()
	matched := false
	for _, f := range bySubject {
		want := f.Audiences
		if len(want) == 0 {
			want = []string{FederationAudience}
		}
		for _, x := range aud {
			matched = matched || contains(want, x)
		}
	}
	if !matched {
		return &aadRefusal{400, "invalid_request", 700212, fmt.Sprintf("No matching federated identity record found for presented assertion audience '%s'.%s", strings.Join(aud, ","), check)}
	}
	now := time.Now()
	if a.claims.Exp == 0 || now.After(time.Unix(a.claims.Exp, 0)) || a.claims.Nbf != 0 && now.Before(time.Unix(a.claims.Nbf, 0)) {
		return &aadRefusal{400, "invalid_client", 700024, fmt.Sprintf("Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s.",
			now.UTC().Format(time.RFC3339), time.Unix(a.claims.Nbf, 0).UTC().Format(time.RFC3339), time.Unix(a.claims.Exp, 0).UTC().Format(time.RFC3339))}
	}
	return nil
}

// jwksClient fetches issuers' keys: the system's roots and the
// simulator's own CA (its test issuers).
func (s *Server) jwksClient() *http.Client {
	s.issuersMu.Lock()
	defer s.issuersMu.Unlock()
	if s.keysClient == nil {
		s.keysClient = &http.Client{Timeout: 10 * time.Second, Transport: s.Client().Transport}
	}
	return s.keysClient
}

// verifySignature reads the issuer's discovery document and keys and checks
// the assertion's RS256 signature with the key its kid names.
func (s *Server) verifySignature(a *assertion) *aadRefusal {
	oidcFailed := &aadRefusal{400, "invalid_request", 50166, fmt.Sprintf("Request to External OIDC endpoint failed: the issuer '%s' publishes no usable signing keys.", a.claims.Iss)}
	var disc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	var jwks struct {
		Keys []struct{ Kid, Kty, N, E string } `json:"keys"`
	}
	hc := s.jwksClient()
	if getJSON(hc, strings.TrimSuffix(a.claims.Iss, "/")+"/.well-known/openid-configuration", &disc) != nil || disc.JWKSURI == "" || getJSON(hc, disc.JWKSURI, &jwks) != nil {
		return oidcFailed
	}
	badSig := &aadRefusal{401, "invalid_client", 700027, "Client assertion failed signature validation: no key of the issuer verifies it."}
	if a.header.Alg != "RS256" {
		return badSig
	}
	sig, err := b64.DecodeString(a.parts[2])
	if err != nil {
		return badSig
	}
	sum := sha256.Sum256([]byte(a.parts[0] + "." + a.parts[1]))
	for _, k := range jwks.Keys {
		if k.Kty != "RSA" || k.Kid != a.header.Kid {
			continue
		}
		n, err1 := b64.DecodeString(k.N)
		e, err2 := b64.DecodeString(k.E)
		if err1 != nil || err2 != nil {
			continue
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		if rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig) == nil {
			return nil
		}
	}
	return badSig
}

func getJSON(hc *http.Client, u string, v any) error {
	resp, err := hc.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

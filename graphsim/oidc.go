package graphsim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"html/template"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// SignInApp is an app registration people sign in to with OpenID Connect
// (authorization code with PKCE), as a web app registered in Entra ID: the
// simulator's /{tenant}/oauth2/v2.0/authorize asks who signs in (any
// enabled user of the tenant, no password) and its token endpoint answers
// the code with an ID token signed by the keys at
// /{tenant}/discovery/v2.0/keys.
type SignInApp struct {
	ClientID string
	// RedirectURIs are the app's registered reply URLs; a request naming
	// another is refused (AADSTS50011).
	RedirectURIs []string
	// Roles are the app roles assigned to users (user principal name →
	// roles), sent in the ID token's roles claim as Entra does.
	Roles map[string][]string
}

// signIn is the simulator's state for tenants' sign-in: one key for every
// tenant, the sign-in apps and the codes issued and not yet redeemed.
type signIn struct {
	mu    sync.Mutex
	key   *rsa.PrivateKey
	apps  map[string]*SignInApp // tenant id + "/" + client id
	codes map[string]*authCode
}

// authCode is an issued authorization code: single use, five minutes.
type authCode struct {
	tenant, clientID, redirect, challenge, nonce string
	user                                         *User
	roles, groups                                []string
	expires                                      time.Time
}

const signInKid = "graphsim-signin-1"

// AddSignInApp registers app in the tenant (id or domain) for sign-in.
func (s *Server) AddSignInApp(tenant string, app SignInApp) error {
	t := s.tenant(tenant)
	if t == nil {
		return fmt.Errorf("graphsim: no tenant %q", tenant)
	}
	s.signin.mu.Lock()
	defer s.signin.mu.Unlock()
	if s.signin.apps == nil {
		s.signin.apps = map[string]*SignInApp{}
		s.signin.codes = map[string]*authCode{}
	}
	s.signin.apps[t.ID+"/"+app.ClientID] = &app
	return nil
}

// SignInIssuer is the issuer of the tenant's ID tokens, as Entra names it
// (https://login.microsoftonline.com/{tenant id}/v2.0).
func (s *Server) SignInIssuer(tenant string) string {
	if t := s.tenant(tenant); t != nil {
		return s.URL() + "/" + t.ID + "/v2.0"
	}
	return ""
}

func (si *signIn) signer(iss string) (*Issuer, error) {
	si.mu.Lock()
	defer si.mu.Unlock()
	if si.key == nil {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		si.key = k
	}
	return &Issuer{url: iss, key: si.key, kid: signInKid}, nil
}

// serveSignIn answers the authorize endpoint (GET: the sign-in page; POST:
// the signed-in user, redirected back with a code) and the keys.
func (s *Server) serveSignIn(w http.ResponseWriter, r *http.Request, t *Tenant, rest string) {
	if t == nil {
		aadError(w, 400, "invalid_tenant", 90002, "Tenant not found.")
		return
	}
	signer, err := s.signin.signer(s.URL() + "/" + t.ID + "/v2.0")
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	if rest == "discovery/v2.0/keys" {
		pub := signer.key.PublicKey
		writeJSON(w, 200, map[string]any{"keys": []any{map[string]any{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": signer.kid,
			"n": b64.EncodeToString(pub.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(pub.E)).Bytes())}}})
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	q := r.Form
	s.signin.mu.Lock()
	app := s.signin.apps[t.ID+"/"+q.Get("client_id")]
	s.signin.mu.Unlock()
	switch {
	case app == nil:
		aadError(w, 400, "unauthorized_client", 700016, fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'.", q.Get("client_id"), t.Name))
		return
	case !slices.Contains(app.RedirectURIs, q.Get("redirect_uri")):
		aadError(w, 400, "invalid_request", 50011, fmt.Sprintf("The redirect URI '%s' specified in the request does not match the redirect URIs configured for the application '%s'.", q.Get("redirect_uri"), app.ClientID))
		return
	case q.Get("response_type") != "code" || !slices.Contains(strings.Fields(q.Get("scope")), "openid"):
		aadError(w, 400, "invalid_request", 900144, "The request must have response_type=code and the scope openid.")
		return
	case q.Get("code_challenge") == "" || q.Get("code_challenge_method") != "S256":
		aadError(w, 400, "invalid_request", 50148, "The code_challenge and code_challenge_method=S256 are required (PKCE).")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = signInPage.Execute(w, map[string]any{"Tenant": t.DefaultDomain(), "Form": q})
		return
	}
	s.issueCode(w, r, t, app)
}

// issueCode signs in the user named in the form and redirects back.
func (s *Server) issueCode(w http.ResponseWriter, r *http.Request, t *Tenant, app *SignInApp) {
	upn := strings.TrimSpace(r.PostForm.Get("username"))
	s.mu.Lock()
	u := t.users[t.upn[strings.ToLower(upn)]]
	var groups []string
	if u != nil {
		for id, g := range t.groups {
			if g.Members[u.ID] {
				groups = append(groups, id)
			}
		}
	}
	s.mu.Unlock()
	if u == nil || !u.AccountEnabled {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(400)
		_ = signInPage.Execute(w, map[string]any{"Tenant": t.DefaultDomain(), "Form": r.Form, "Error": "AADSTS50034: The user account " + upn + " does not exist in the directory or is disabled."})
		return
	}
	slices.Sort(groups)
	code := b64.EncodeToString(randomBytes(24))
	s.signin.mu.Lock()
	s.signin.codes[code] = &authCode{tenant: t.ID, clientID: app.ClientID, redirect: r.Form.Get("redirect_uri"), challenge: r.Form.Get("code_challenge"),
		nonce: r.Form.Get("nonce"), user: u, roles: app.Roles[strings.ToLower(u.UserPrincipalName)], groups: groups, expires: time.Now().Add(5 * time.Minute)}
	s.signin.mu.Unlock()
	back, _ := url.Parse(r.Form.Get("redirect_uri"))
	bq := back.Query()
	bq.Set("code", code)
	if st := r.Form.Get("state"); st != "" {
		bq.Set("state", st)
	}
	back.RawQuery = bq.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}

// codeToken redeems an authorization code: once, by the client it was
// issued to, with the same redirect URI and the PKCE verifier.
func (s *Server) codeToken(w http.ResponseWriter, r *http.Request, t *Tenant) {
	if t == nil {
		aadError(w, 400, "invalid_tenant", 90002, "Tenant not found.")
		return
	}
	f := r.PostForm
	s.signin.mu.Lock()
	c := s.signin.codes[f.Get("code")]
	delete(s.signin.codes, f.Get("code"))
	s.signin.mu.Unlock()
	sum := sha256.Sum256([]byte(f.Get("code_verifier")))
	switch {
	case c == nil || c.tenant != t.ID || time.Now().After(c.expires):
		aadError(w, 400, "invalid_grant", 70008, "The provided authorization code or refresh token has expired or was already redeemed.")
		return
	case c.clientID != f.Get("client_id") || c.redirect != f.Get("redirect_uri"):
		aadError(w, 400, "invalid_grant", 70002, "The client or redirect URI does not match the authorization request.")
		return
	case subtle.ConstantTimeCompare([]byte(b64.EncodeToString(sum[:])), []byte(c.challenge)) != 1:
		aadError(w, 400, "invalid_grant", 501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request.")
		return
	}
	signer, err := s.signin.signer(s.URL() + "/" + t.ID + "/v2.0")
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	now := time.Now()
	claims := map[string]any{"iss": signer.url, "aud": c.clientID, "sub": c.user.ID, "oid": c.user.ID, "tid": t.ID,
		"name": c.user.DisplayName, "preferred_username": c.user.UserPrincipalName, "iat": now.Unix(), "nbf": now.Unix(),
		"exp": now.Add(time.Hour).Unix(), "ver": "2.0"}
	if c.nonce != "" {
		claims["nonce"] = c.nonce
	}
	if len(c.roles) > 0 {
		claims["roles"] = c.roles
	}
	if len(c.groups) > 0 {
		claims["groups"] = c.groups
	}
	writeJSON(w, 200, map[string]any{"token_type": "Bearer", "scope": "openid profile", "expires_in": 3600,
		"id_token": signer.Sign(claims), "access_token": b64.EncodeToString(randomBytes(32))})
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

var signInPage = template.Must(template.New("signin").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in to {{.Tenant}} (graphsim)</title>
<style>body{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem}
input,button{font-size:1rem;padding:.5rem;width:100%;box-sizing:border-box;margin:.3rem 0}
.err{color:#a00}</style></head>
<body><h1>Sign in</h1><p>to <b>{{.Tenant}}</b> (Graph simulator: any enabled user, no password)</p>
{{with .Error}}<p class="err">{{.}}</p>{{end}}
<form method="post">
{{range $k, $v := .Form}}{{if ne $k "username"}}<input type="hidden" name="{{$k}}" value="{{index $v 0}}">{{end}}{{end}}
<label for="username">User principal name</label>
<input id="username" name="username" autocomplete="username" autofocus required>
<button id="signin" type="submit">Sign in</button>
</form></body></html>`))

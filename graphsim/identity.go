package graphsim

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// serveIdentity answers /{tenant}/v2.0/.well-known/openid-configuration and
// /{tenant}/oauth2/v2.0/token.
func (s *Server) serveIdentity(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) < 2 {
		http.NotFound(w, r)
		return
	}
	tenantKey := parts[0]
	rest := strings.Join(parts[1:], "/")
	t := s.tenant(tenantKey)
	switch {
	case rest == "v2.0/.well-known/openid-configuration" && r.Method == http.MethodGet:
		if t == nil {
			aadError(w, 400, "invalid_tenant", 90002, fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenantKey))
			return
		}
		base := s.URL() + "/" + tenantKey
		writeJSON(w, 200, map[string]any{
			"token_endpoint":                        base + "/oauth2/v2.0/token",
			"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
			"device_authorization_endpoint":         base + "/oauth2/v2.0/devicecode",
			"issuer":                                s.URL() + "/" + t.ID + "/v2.0",
			"jwks_uri":                              s.URL() + "/" + t.ID + "/discovery/v2.0/keys",
			"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
			"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
			"tenant_region_scope":                   "NA",
			"cloud_instance_name":                   "graphsim",
		})
	case rest == "oauth2/v2.0/authorize" || rest == "discovery/v2.0/keys":
		s.serveSignIn(w, r, t, rest)
	case rest == "oauth2/v2.0/token" && r.Method == http.MethodPost && r.FormValue("grant_type") == "authorization_code":
		s.codeToken(w, r, t)
	case rest == "oauth2/v2.0/token" && r.Method == http.MethodPost:
		s.Tokens.Add(1)
		s.sleep(s.opts.Latency.Token)
		s.token(w, r, t, tenantKey)
	default:
		http.NotFound(w, r)
	}
}

func aadError(w http.ResponseWriter, status int, code string, aadsts int, desc string) {
	writeJSON(w, status, map[string]any{
		"error":             code,
		"error_description": fmt.Sprintf("AADSTS%d: %s Trace ID: 00000000-0000-0000-0000-000000000000 Correlation ID: 00000000-0000-0000-0000-000000000000 Timestamp: %s", aadsts, desc, time.Now().UTC().Format("2006-01-02 15:04:05Z")),
		"error_codes":       []int{aadsts},
		"timestamp":         time.Now().UTC().Format("2006-01-02 15:04:05Z"),
		"trace_id":          "00000000-0000-0000-0000-000000000000",
		"correlation_id":    "00000000-0000-0000-0000-000000000000",
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) token(w http.ResponseWriter, r *http.Request, t *Tenant, tenantKey string) {
	if err := r.ParseForm(); err != nil {
		aadError(w, 400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
		return
	}
	if t == nil {
		aadError(w, 400, "invalid_request", 90002, fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenantKey))
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
		aadError(w, 400, "unsupported_grant_type", 70003, fmt.Sprintf("The app requested an unsupported grant type '%s'.", gt))
		return
	}
	// MSAL adds the OIDC scopes; one resource's /.default is required.
	scope, bad := "", false
	for _, sc := range strings.Fields(r.PostForm.Get("scope")) {
		switch {
		case strings.HasSuffix(sc, "/.default") && scope == "":
			scope = sc
		case sc == "openid" || sc == "offline_access" || sc == "profile":
		default:
			bad = true
		}
	}
	if scope == "" || bad {
		scope = r.PostForm.Get("scope")
		aadError(w, 400, "invalid_scope", 1002012, fmt.Sprintf("The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", scope))
		return
	}
	clientID := r.PostForm.Get("client_id")
	s.mu.Lock()
	app := t.apps[clientID]
	s.mu.Unlock()
	if app == nil {
		aadError(w, 400, "unauthorized_client", 700016, fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.", clientID, t.Name))
		return
	}
	if app.Disabled {
		aadError(w, 400, "unauthorized_client", 7000112, fmt.Sprintf("Application '%s' is disabled.", clientID))
		return
	}
	switch {
	case r.PostForm.Get("client_secret") != "":
		known, expired := app.checkSecret(r.PostForm.Get("client_secret"), time.Now())
		if !known {
			aadError(w, 401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '"+clientID+"'.")
			return
		}
		if expired {
			aadError(w, 401, "invalid_client", 7000222, "The provided client secret keys for app '"+clientID+"' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.")
			return
		}
	case r.PostForm.Get("client_assertion") != "":
		if r.PostForm.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
			aadError(w, 400, "invalid_request", 50027, "Invalid JWT token. The client_assertion_type is not supported.")
			return
		}
		a, ok := parseAssertion(r.PostForm.Get("client_assertion"))
		if !ok {
			aadError(w, 400, "invalid_request", 50027, "Invalid JWT token. The token is not in a valid format.")
			return
		}
		// An assertion the app signs itself names it as issuer (a
		// certificate); any other issuer is a federated credential's.
		if a.claims.Iss != clientID {
			if ref := s.verifyFederated(a, app); ref != nil {
				aadError(w, ref.status, ref.code, ref.aadsts, ref.desc)
				return
			}
			break
		}
		if err := verifyAssertion(r.PostForm.Get("client_assertion"), app, clientID); err != nil {
			aadError(w, 401, "invalid_client", 700027, "Client assertion failed signature validation. "+err.Error())
			return
		}
	default:
		aadError(w, 401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
		return
	}
	now := s.clock.now()
	c := tokenClaims{Aud: strings.TrimSuffix(scope, "/.default"), Iss: s.URL() + "/" + t.ID + "/v2.0", Tid: t.ID, AppID: clientID,
		Roles: append([]string(nil), app.Roles...), Iat: now.Unix(), Nbf: now.Unix(), Exp: now.Add(s.opts.TokenLifetime).Unix()}
	if app.UserAdmin {
		c.Wids = append(c.Wids, roleUserAdmin)
	}
	if app.PrivilegedAuthAdmin {
		c.Wids = append(c.Wids, rolePrivilegedAuthAdmin)
	}
	secs := int(s.clock.real(s.opts.TokenLifetime).Seconds())
	writeJSON(w, 200, map[string]any{"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": s.signToken(c)})
}

// verifyAssertion checks a client assertion JWT signed with the app's
// registered certificate (RS256 or PS256).
func verifyAssertion(jwt string, app *App, clientID string) error {
	if len(app.CertPEM) == 0 {
		return fmt.Errorf("no certificate is registered for the app")
	}
	blk, _ := pem.Decode(app.CertPEM)
	if blk == nil {
		return fmt.Errorf("registered certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return err
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("registered certificate has no RSA key")
	}
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return fmt.Errorf("malformed JWT")
	}
	var hdr struct {
		Alg string `json:"alg"`
	}
	hb, _ := b64.DecodeString(parts[0])
	_ = json.Unmarshal(hb, &hdr)
	sig, err := b64.DecodeString(parts[2])
	if err != nil {
		return fmt.Errorf("malformed signature")
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	switch hdr.Alg {
	case "RS256":
		err = rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig)
	case "PS256":
		err = rsa.VerifyPSS(pub, crypto.SHA256, sum[:], sig, nil)
	default:
		return fmt.Errorf("unsupported alg %q", hdr.Alg)
	}
	if err != nil {
		return fmt.Errorf("signature does not match the registered certificate")
	}
	var claims struct {
		Iss string `json:"iss"`
		Sub string `json:"sub"`
		Exp int64  `json:"exp"`
	}
	pb, _ := b64.DecodeString(parts[1])
	_ = json.Unmarshal(pb, &claims)
	if claims.Sub != clientID || claims.Iss != clientID {
		return fmt.Errorf("iss and sub must be the client id")
	}
	if claims.Exp != 0 && time.Unix(claims.Exp, 0).Before(time.Now()) {
		return fmt.Errorf("the assertion has expired")
	}
	return nil
}

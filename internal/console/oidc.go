package console

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/oauth2"
)

// provider is the OIDC issuer: its endpoints from discovery and its keys.
type provider struct {
	cfg      OIDCConfig
	redirect string
	mu       sync.Mutex
	oauth    *oauth2.Config
	jwksURI  string
	keys     map[string]*rsa.PublicKey
}

// discover reads the issuer's discovery document (once, on first use, so a
// console starts while its issuer is down).
func (p *provider) discover(ctx context.Context) (*oauth2.Config, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.oauth != nil {
		return p.oauth, nil
	}
	var doc struct {
		Issuer   string `json:"issuer"`
		AuthURL  string `json:"authorization_endpoint"`
		TokenURL string `json:"token_endpoint"`
		JWKSURI  string `json:"jwks_uri"`
	}
	if err := p.getJSON(ctx, strings.TrimRight(p.cfg.Issuer, "/")+"/.well-known/openid-configuration", &doc); err != nil {
		return nil, fmt.Errorf("read the OIDC issuer's discovery document: %w", err)
	}
	if doc.Issuer != p.cfg.Issuer {
		return nil, fmt.Errorf("the OIDC discovery document names the issuer %q, configured is %q", doc.Issuer, p.cfg.Issuer)
	}
	if doc.AuthURL == "" || doc.TokenURL == "" || doc.JWKSURI == "" {
		return nil, errors.New("the OIDC discovery document lacks authorization_endpoint, token_endpoint or jwks_uri")
	}
	p.jwksURI = doc.JWKSURI
	p.oauth = &oauth2.Config{ClientID: p.cfg.ClientID, ClientSecret: p.cfg.ClientSecret, RedirectURL: p.redirect,
		Scopes:   []string{"openid", "profile"},
		Endpoint: oauth2.Endpoint{AuthURL: doc.AuthURL, TokenURL: doc.TokenURL, AuthStyle: oauth2.AuthStyleInParams}}
	return p.oauth, nil
}

func (p *provider) getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := p.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
}

// authURL is where a browser signs in: state, nonce and the PKCE challenge.
func (p *provider) authURL(ctx context.Context, state, nonce, verifier string) (string, error) {
	o, err := p.discover(ctx)
	if err != nil {
		return "", err
	}
	return o.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("nonce", nonce)), nil
}

// identity is who signed in and the role values of the configured claim.
type identity struct {
	Subject, Name string
	Values        []string
}

// exchange redeems the code and verifies the ID token: signature by the
// issuer's keys (RS256), issuer, audience, expiry and nonce.
func (p *provider) exchange(ctx context.Context, code, verifier, nonce string) (*identity, error) {
	o, err := p.discover(ctx)
	if err != nil {
		return nil, err
	}
	tok, err := o.Exchange(context.WithValue(ctx, oauth2.HTTPClient, p.cfg.HTTPClient), code, oauth2.VerifierOption(verifier))
	if err != nil {
		return nil, fmt.Errorf("redeem the sign-in code: %w", err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return nil, errors.New("the issuer's token answer has no id_token")
	}
	claims := jwt.MapClaims{}
	_, err = jwt.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) { return p.key(ctx, t) },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(p.cfg.Issuer), jwt.WithAudience(p.cfg.ClientID), jwt.WithExpirationRequired())
	if err != nil {
		return nil, fmt.Errorf("the ID token is not valid: %w", err)
	}
	if n, _ := claims["nonce"].(string); n != nonce {
		return nil, errors.New("the ID token's nonce is not the one this sign-in sent")
	}
	id := &identity{}
	id.Subject, _ = claims["sub"].(string)
	id.Name, _ = claims["preferred_username"].(string)
	if id.Name == "" {
		id.Name, _ = claims["name"].(string)
	}
	switch v := claims[p.cfg.RoleClaim].(type) {
	case string:
		id.Values = []string{v}
	case []any:
		for _, x := range v {
			if s, ok := x.(string); ok {
				id.Values = append(id.Values, s)
			}
		}
	}
	return id, nil
}

// role is the console role the claim values give: operator wins.
func (p *provider) role(id *identity) string {
	for _, v := range id.Values {
		if slices.Contains(p.cfg.Operators, v) {
			return RoleOperator
		}
	}
	for _, v := range id.Values {
		if slices.Contains(p.cfg.Viewers, v) {
			return RoleViewer
		}
	}
	return ""
}

// key finds the token's signing key, fetching the keys again once for a
// key id not seen yet (the issuer rotated).
func (p *provider) key(ctx context.Context, t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	p.mu.Lock()
	k := p.keys[kid]
	p.mu.Unlock()
	if k != nil {
		return k, nil
	}
	var set struct {
		Keys []struct{ Kty, Kid, N, E string } `json:"keys"`
	}
	if err := p.getJSON(ctx, p.jwksURI, &set); err != nil {
		return nil, fmt.Errorf("read the issuer's keys: %w", err)
	}
	keys := map[string]*rsa.PublicKey{}
	for _, j := range set.Keys {
		n, err1 := base64.RawURLEncoding.DecodeString(j.N)
		e, err2 := base64.RawURLEncoding.DecodeString(j.E)
		if j.Kty != "RSA" || err1 != nil || err2 != nil {
			continue
		}
		keys[j.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	p.mu.Lock()
	p.keys = keys
	p.mu.Unlock()
	if k := keys[kid]; k != nil {
		return k, nil
	}
	return nil, fmt.Errorf("no key %q at the issuer", kid)
}

package console

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

func urlEscape(s string) string { return url.QueryEscape(s) }

// safeNext keeps a post-sign-in destination on this console.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

// login sends the browser to the issuer (authorization code with PKCE).
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	if s.oidc == nil {
		w.WriteHeader(http.StatusUnauthorized)
		s.render(w, r, nil, "error", "Sign in", map[string]any{"Message": "This console has no OpenID Connect issuer configured: open the one-time sign-in link its start printed."})
		return
	}
	verifier, nonce := oauth2.GenerateVerifier(), randomToken()
	state := s.sess.begin(w, verifier, nonce, safeNext(r.URL.Query().Get("next")))
	u, err := s.oidc.authURL(r.Context(), state, nonce, verifier)
	if err != nil {
		s.log.Error("console: sign-in", "error", err)
		w.WriteHeader(http.StatusBadGateway)
		s.render(w, r, nil, "error", "Sign in", map[string]any{"Message": "The sign-in issuer cannot be reached: " + err.Error()})
		return
	}
	http.Redirect(w, r, u, http.StatusFound)
}

// callback finishes a sign-in: the code redeemed, the ID token verified,
// the role from its claim.
func (s *Server) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	fail := func(status int, msg string) {
		w.WriteHeader(status)
		s.render(w, r, nil, "error", "Sign in", map[string]any{"Message": msg, "Retry": true})
	}
	if s.oidc == nil {
		fail(http.StatusNotFound, "No OpenID Connect issuer is configured.")
		return
	}
	p := s.sess.finish(w, r, q.Get("state"))
	if p == nil {
		fail(http.StatusBadRequest, "This sign-in was not started in this browser, or took longer than 10 minutes.")
		return
	}
	if e := q.Get("error"); e != "" {
		fail(http.StatusUnauthorized, fmt.Sprintf("The issuer refused the sign-in: %s: %s", e, q.Get("error_description")))
		return
	}
	id, err := s.oidc.exchange(r.Context(), q.Get("code"), p.verifier, p.nonce)
	if err != nil {
		s.log.Warn("console: sign-in refused", "error", err)
		fail(http.StatusUnauthorized, "Sign-in failed: "+err.Error())
		return
	}
	role := s.oidc.role(id)
	if role == "" {
		s.log.Info("console: signed in without a role", "who", id.Name)
		fail(http.StatusForbidden, fmt.Sprintf("%s has no console role: the %s claim must hold one of %s (operator) or %s (viewer).",
			id.Name, s.cfg.OIDC.RoleClaim, strings.Join(s.cfg.OIDC.Operators, ", "), strings.Join(s.cfg.OIDC.Viewers, ", ")))
		return
	}
	s.sess.start(w, id.Subject, id.Name, role)
	s.log.Info("console: signed in", "who", id.Name, "role", role)
	http.Redirect(w, r, p.next, http.StatusSeeOther)
}

// signInOnce spends a one-time link: an operator session.
func (s *Server) signInOnce(w http.ResponseWriter, r *http.Request) {
	if !s.sess.useOnce(r.URL.Query().Get("token")) {
		w.WriteHeader(http.StatusUnauthorized)
		s.render(w, r, nil, "error", "Sign in", map[string]any{"Message": "This one-time sign-in link was used already or has expired.", "Retry": s.oidc != nil})
		return
	}
	s.sess.start(w, "local", "local operator (one-time link)", RoleOperator)
	s.log.Info("console: signed in with the one-time link")
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, ss *session) {
	s.sess.end(w, ss)
	w.WriteHeader(http.StatusOK)
	s.render(w, r, nil, "error", "Signed out", map[string]any{"Message": "You are signed out.", "Retry": true})
}

// since is a short "how long ago".
func since(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	switch {
	case d < 0:
		return "in " + (-d).Round(time.Second).String()
	case d < time.Minute:
		return d.Round(time.Second).String() + " ago"
	case d < 48*time.Hour:
		return d.Round(time.Minute).String() + " ago"
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

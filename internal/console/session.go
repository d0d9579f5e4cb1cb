package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// Cookie names: __Host- cookies are Secure, for path / and this host only.
const (
	sessionCookie = "__Host-m365-console"
	loginCookie   = "__Host-m365-console-login"
)

// session is a signed-in person: who, their role, and the CSRF token every
// state change of theirs must carry.
type session struct {
	ID, Subject, Name, Role, CSRF string
	Expires                       time.Time
}

// pendingLogin is a sign-in on its way through the issuer, bound to the
// browser that started it by the login cookie.
type pendingLogin struct {
	bind, verifier, nonce, next string
	expires                     time.Time
}

// sessions holds the signed-in sessions, the sign-ins under way and the
// one-time sign-in links, in memory: a restarted console signs everyone out.
type sessions struct {
	ttl     time.Duration
	mu      sync.Mutex
	byID    map[string]*session
	pending map[string]*pendingLogin // by state
	once    map[string]time.Time     // one-time link tokens and their expiry
}

func newSessions(ttl time.Duration) *sessions {
	return &sessions{ttl: ttl, byID: map[string]*session{}, pending: map[string]*pendingLogin{}, once: map[string]time.Time{}}
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// start makes a session and sets its cookie.
func (s *sessions) start(w http.ResponseWriter, subject, name, role string) *session {
	ss := &session{ID: randomToken(), Subject: subject, Name: name, Role: role, CSRF: randomToken(), Expires: time.Now().Add(s.ttl)}
	s.mu.Lock()
	for id, old := range s.byID { // drop expired sessions
		if time.Now().After(old.Expires) {
			delete(s.byID, id)
		}
	}
	s.byID[ss.ID] = ss
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: ss.ID, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode, Expires: ss.Expires})
	return ss
}

// get is the request's session, nil when it has none or it expired.
func (s *sessions) get(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.byID[c.Value]
	if ss == nil || time.Now().After(ss.Expires) {
		delete(s.byID, c.Value)
		return nil
	}
	return ss
}

func (s *sessions) end(w http.ResponseWriter, ss *session) {
	s.mu.Lock()
	delete(s.byID, ss.ID)
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", Secure: true, HttpOnly: true, MaxAge: -1})
}

// begin records a sign-in under way and binds it to this browser.
func (s *sessions) begin(w http.ResponseWriter, verifier, nonce, next string) (state string) {
	state = randomToken()
	p := &pendingLogin{bind: randomToken(), verifier: verifier, nonce: nonce, next: next, expires: time.Now().Add(10 * time.Minute)}
	s.mu.Lock()
	for k, v := range s.pending { // drop abandoned sign-ins
		if time.Now().After(v.expires) {
			delete(s.pending, k)
		}
	}
	s.pending[state] = p
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: p.bind, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode, MaxAge: 600})
	return state
}

// finish takes the sign-in of state, if this browser started it.
func (s *sessions) finish(w http.ResponseWriter, r *http.Request, state string) *pendingLogin {
	c, err := r.Cookie(loginCookie)
	s.mu.Lock()
	p := s.pending[state]
	delete(s.pending, state)
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: "", Path: "/", Secure: true, HttpOnly: true, MaxAge: -1})
	if p == nil || err != nil || time.Now().After(p.expires) || subtle.ConstantTimeCompare([]byte(c.Value), []byte(p.bind)) != 1 {
		return nil
	}
	return p
}

// oneTime makes a one-time sign-in token that works once, within ttl, and
// signs its user in as an operator (Server.OneTimeLink).
func (s *sessions) oneTime(ttl time.Duration) string {
	t := randomToken()
	s.mu.Lock()
	s.once[t] = time.Now().Add(ttl)
	s.mu.Unlock()
	return t
}

// useOnce spends a one-time token.
func (s *sessions) useOnce(t string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.once[t]
	delete(s.once, t)
	return ok && time.Now().Before(exp)
}

// validCSRF reports whether the request carries the session's CSRF token
// (the form field csrf or the header X-CSRF-Token).
func (ss *session) validCSRF(r *http.Request) bool {
	t := r.PostFormValue("csrf")
	if t == "" {
		t = r.Header.Get("X-CSRF-Token")
	}
	return t != "" && subtle.ConstantTimeCompare([]byte(t), []byte(ss.CSRF)) == 1
}

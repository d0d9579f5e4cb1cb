package console

import (
	"context"
	"embed"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

//go:embed templates/*.html static/*
var assets embed.FS

// Server is a console: its handler serves the pages; one watcher per
// Server reads JetStream for every viewer.
type Server struct {
	cfg      Config
	js       jetstream.JetStream
	log      *slog.Logger
	w        *watcher
	sess     *sessions
	oidc     *provider
	pages    map[string]*template.Template
	mux      *http.ServeMux
	live     *broker
	batchMu  sync.Mutex
	batches  map[string]*batch
	batchSeq int
}

// New checks the configuration, starts the watcher (it runs until ctx
// ends) and returns the console. The audit stream must exist
// (EnsureAuditStream, the operator's setup).
func New(ctx context.Context, cfg Config, js jetstream.JetStream, log *slog.Logger) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if _, err := js.Stream(ctx, AuditStream(cfg.Topology)); err != nil {
		return nil, auditMissing(cfg, err)
	}
	s := &Server{cfg: cfg, js: js, log: log, sess: newSessions(cfg.SessionTTL), batches: map[string]*batch{}}
	if cfg.OIDC.Issuer != "" {
		s.oidc = &provider{cfg: cfg.OIDC, redirect: cfg.URL + "/auth/callback"}
	}
	var err error
	if s.pages, err = parsePages(); err != nil {
		return nil, err
	}
	s.w = newWatcher(cfg, js, log)
	if err := s.w.start(ctx); err != nil {
		return nil, err
	}
	s.live = newBroker(s.w)
	go s.live.run(ctx)
	s.routes()
	return s, nil
}

// OneTimeLink is a sign-in link that works once within ttl and makes whoever
// opens it an operator: `run` prints it for the person who started it.
func (s *Server) OneTimeLink(ttl time.Duration) string {
	return s.cfg.URL + "/signin/once?token=" + s.sess.oneTime(ttl)
}

// ServeHTTP serves the console with its security headers.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	if r.TLS != nil {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10) // forms are small
	s.mux.ServeHTTP(w, r)
}

func (s *Server) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	m.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /login", s.login)
	m.HandleFunc("GET /auth/callback", s.callback)
	m.HandleFunc("GET /signin/once", s.signInOnce)
	m.HandleFunc("POST /logout", s.authed(s.logout))
	m.HandleFunc("GET /{$}", s.authed(s.overview))
	m.HandleFunc("GET /instances", s.authed(s.instancesPage))
	m.HandleFunc("GET /instances/{id}", s.authed(s.instancePage))
	m.HandleFunc("POST /instances/{id}/sync", s.operator(s.syncNow))
	m.HandleFunc("GET /jobs", s.authed(s.jobsPage))
	m.HandleFunc("GET /failures", s.authed(s.failuresPage))
	m.HandleFunc("GET /failures/{seq}", s.authed(s.failurePage))
	m.HandleFunc("POST /failures/{seq}/reveal", s.operator(s.reveal))
	m.HandleFunc("POST /replay", s.operator(s.replay))
	m.HandleFunc("GET /replays/{id}", s.authed(s.replayPage))
	m.HandleFunc("GET /audit", s.authed(s.auditPage))
	m.HandleFunc("GET /events", s.authed(s.events))
	s.mux = m
}

type sessionHandler func(http.ResponseWriter, *http.Request, *session)

// authed serves only signed-in people; others go to sign-in (a page
// request) or get 401 (anything else). A POST must carry the session's
// CSRF token.
func (s *Server) authed(h sessionHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ss := s.sess.get(r)
		if ss == nil {
			if r.Method == http.MethodGet && !strings.HasPrefix(r.URL.Path, "/events") {
				http.Redirect(w, r, "/login?next="+urlEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Error(w, "sign in first", http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodGet && !ss.validCSRF(r) {
			s.refuse(w, r, ss, http.StatusForbidden, "This request has no valid CSRF token: reload the page and try again.")
			return
		}
		h(w, r, ss)
	}
}

// operator is authed for operators only.
func (s *Server) operator(h sessionHandler) http.HandlerFunc {
	return s.authed(func(w http.ResponseWriter, r *http.Request, ss *session) {
		if ss.Role != RoleOperator {
			s.refuse(w, r, ss, http.StatusForbidden, "Your role is "+ss.Role+": only an operator may do this.")
			return
		}
		h(w, r, ss)
	})
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, ss *session, status int, msg string) {
	s.log.Info("console: refused", "path", r.URL.Path, "who", ss.Name, "role", ss.Role, "status", status)
	w.WriteHeader(status)
	s.render(w, r, ss, "error", "Refused", map[string]any{"Message": msg})
}

// Counts are what the watcher holds: instances, failure records, results
// and jobs (what `bench console` waits for before it measures).
func (s *Server) Counts() (instances, failures, results, jobs int) {
	s.w.mu.RLock()
	defer s.w.mu.RUnlock()
	return len(s.w.instances), len(s.w.failures), len(s.w.results), len(s.w.jobs)
}

// Refresh reads the instances' sync state and the pools once, as the
// watcher does every Config.Refresh, and returns how long it took.
func (s *Server) Refresh(ctx context.Context) time.Duration {
	t0 := time.Now()
	s.w.refresh(ctx)
	return time.Since(t0)
}

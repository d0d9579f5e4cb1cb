// Package graphsim is a Microsoft Graph simulator for tests, demos and
// benchmarks: the identity endpoints and the parts of Graph v1.0 that
// m365-worker uses, with Graph's paging, delta, error, throttling and
// eventual-consistency behaviour (see shared GRAPH.md). Use it like
// net/http/httptest:
//
//	sim, err := graphsim.Start(graphsim.Options{Tenants: 1, Users: 100, Groups: 10})
//	defer sim.Close()
//	creds := sim.Credentials() // tenant id, client id, secret, authority, graph root
//	pool := sim.CertPool()     // trust the simulator's CA
package graphsim

import (
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Latency is the simulated response time profile. The zero value answers at
// once.
type Latency struct {
	// Read is the base delay of a read; PerObject is added per object in
	// the response page.
	Read      time.Duration
	PerObject time.Duration
	// Write is the delay of a POST, PATCH or DELETE.
	Write time.Duration
	// Batch is added to the slowest item of a $batch.
	Batch time.Duration
	// Token is the delay of the token endpoint.
	Token time.Duration
}

// RealisticLatency is the reference profile of GRAPH.md §12: every benchmark
// names it.
var RealisticLatency = Latency{Read: 100 * time.Millisecond, PerObject: 500 * time.Microsecond, Write: 150 * time.Millisecond, Batch: 50 * time.Millisecond, Token: 150 * time.Millisecond}

// Faults injects failures into Graph requests (not the token endpoint), at
// the given rates (0..1), reproducibly from Options.Seed.
type Faults struct {
	Rate500, Rate502, Rate503, Rate504 float64
	// RetryAfter is sent with 503 and 504 when set.
	RetryAfter time.Duration
	// DropRate closes the connection without answering.
	DropRate float64
	// DropAfterWriteRate applies a write (POST, PATCH, DELETE) and then
	// closes the connection without answering: the client cannot tell
	// whether it took effect.
	DropAfterWriteRate float64
	// SlowRate delays a response by SlowDelay.
	SlowRate  float64
	SlowDelay time.Duration
}

// Options configure a simulator. Zero values take the defaults given.
type Options struct {
	// BeforeRequest, when set, is called with each Graph request before the
	// simulator serves it (outside its locks, so it may call Mutate): a
	// test makes a tenant change land between two given reads of a client.
	BeforeRequest func(r *http.Request)
	// Tenants to seed. Default 1.
	Tenants int
	// Users and Groups per tenant. Defaults 100 and 10.
	Users, Groups int
	// Sizes, when set, seeds one tenant per entry, each of its own size
	// (Tenants, Users and Groups are then not used).
	Sizes []TenantSize
	// Seed makes tenants, secrets and faults reproducible. Default 1.
	Seed int64
	// NoThrottling turns the throttling model off.
	NoThrottling bool
	// TimeScale runs the throttling model, token lifetimes and delta-token
	// expiry this many times faster than real time (latency is divided by
	// it too). Default 1.
	TimeScale float64
	// Latency profile. Default none; RealisticLatency resembles Graph.
	Latency Latency
	// Faults to inject. Default none.
	Faults Faults
	// ConsistencyDelay hides objects created in the last interval from
	// reads, as Graph's replication does. Default 0.
	ConsistencyDelay time.Duration
	// DeltaTokenTTL is how long delta tokens live. Default 7 days.
	DeltaTokenTTL time.Duration
	// TokenLifetime of access tokens. Default 1 hour.
	TokenLifetime time.Duration
	// DeltaPageSize is the number of objects per delta page. Default 200.
	DeltaPageSize int
	// DeltaDuplicateRate repeats an object in a delta page at this rate
	// (0..1), as Graph may: consumers must apply changes idempotently.
	// Default 0.
	DeltaDuplicateRate float64
	// ReadOnly grants seeded apps only the read permissions.
	ReadOnly bool
	// NoUserAdminRole: seeded apps lack the User Administrator role.
	NoUserAdminRole bool
	// Listen is the address to serve on. Default 127.0.0.1:0.
	Listen string

	// Change notifications (subscriptions.go). Model-time durations are
	// divided by TimeScale; the receiver's timeouts are real time.

	// NotifyClient makes the calls to notification URLs: validation
	// handshakes, change and lifecycle notifications. Default: a client
	// with a 10 s timeout trusting the system's roots.
	NotifyClient *http.Client
	// ValidationTimeout is how long a notification URL has to answer the
	// validation handshake (real time). Default 10 s, as Graph.
	ValidationTimeout time.Duration
	// NotifyTimeout is how long a receiver has to acknowledge a POST of
	// notifications before it is retried (real time). Default 3 s, as
	// Graph.
	NotifyTimeout time.Duration
	// NotifyLatency delays every change notification (model time).
	// Default 0; Graph's is undocumented, about 10 minutes in reports.
	NotifyLatency time.Duration
	// NotifyDropRate loses change notifications and NotifyDuplicateRate
	// sends them twice, at these rates (0..1), reproducibly from Seed.
	// Default 0.
	NotifyDropRate, NotifyDuplicateRate float64
	// NotifyRetries is how many times a POST answered with a non-2xx or
	// not answered in time is retried before its notifications are
	// dropped; negative: never retried. Default 5 (Graph retries for up to
	// 4 hours).
	NotifyRetries int
	// NotifyRetryDelay is the wait before the first retry, doubled for
	// each next one (model time). Default 10 s.
	NotifyRetryDelay time.Duration
	// SubscriptionQuota is the most subscriptions one app may hold in one
	// tenant; past it creation answers 403. Default 100, as Graph.
	SubscriptionQuota int

	// Conformance checks every Graph request and answer against Graph's
	// description (conformance.go) and records what falls outside it
	// (Server.Conformance; graphsimtest fails the test). Requests the
	// description refuses are refused either way. Default off (it costs a
	// JSON round trip per answer); tests turn it on.
	Conformance bool
	// OnViolation, when set, is called with each violation as it is
	// recorded (m365-worker graphsim --conformance prints them).
	OnViolation func(Violation)
}

// TenantSize is the size of one seeded tenant.
type TenantSize struct{ Users, Groups int }

func (o Options) withDefaults() Options {
	if o.Tenants <= 0 {
		o.Tenants = 1
	}
	if o.Users == 0 {
		o.Users = 100
	}
	if o.Groups == 0 {
		o.Groups = 10
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.TimeScale <= 0 {
		o.TimeScale = 1
	}
	if o.DeltaTokenTTL <= 0 {
		o.DeltaTokenTTL = 7 * 24 * time.Hour
	}
	if o.TokenLifetime <= 0 {
		o.TokenLifetime = time.Hour
	}
	if o.DeltaPageSize <= 0 {
		o.DeltaPageSize = 200
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	return o.withNotifyDefaults()
}

// Server is a running simulator.
type Server struct {
	opts   Options
	hs     *httptest.Server
	caPEM  []byte
	pool   *x509.CertPool
	clock  clock
	th     *throttler
	tokKey []byte
	notify *notifier // subscriptions and their deliveries
	conf   conformance

	mu      sync.RWMutex // guards tenants' data: reads (GET) share it
	tenants []*Tenant
	byKey   map[string]*Tenant // id or domain (lower case) → tenant

	issuersMu  sync.Mutex
	issuers    map[string]*Issuer // test issuers of federated credentials, by name
	keysClient *http.Client       // fetches issuers' keys

	signin signIn // tenants' OpenID Connect sign-in (oidc.go)

	faultMu sync.Mutex
	faultR  *mrand.Rand

	reqSeq    atomic.Uint64
	Requests  atomic.Int64 // Graph requests served (batch items count)
	Tokens    atomic.Int64 // token requests served
	Throttled atomic.Int64
	Writes    atomic.Int64 // writes admitted by the throttling model (POST, PATCH, PUT, DELETE)
}

// Credential is what a seeded tenant's app needs to connect.
type Credential struct {
	TenantID     string `json:"tenant_id"`
	Domain       string `json:"domain"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	// Authority serves /{tenant}/oauth2/v2.0/token.
	Authority string `json:"authority"`
	// GraphRoot serves /v1.0/...
	GraphRoot string `json:"graph_root"`
}

// Start seeds the tenants and serves HTTPS with a freshly generated CA.
func Start(opts Options) (*Server, error) {
	opts = opts.withDefaults()
	s := &Server{opts: opts, byKey: map[string]*Tenant{}}
	s.conf.onViolation = opts.OnViolation
	s.clock = clock{start: time.Now(), scale: opts.TimeScale}
	s.th = newThrottler(s.clock, !opts.NoThrottling)
	s.notify = newNotifier(s.clock, opts)
	s.faultR = mrand.New(mrand.NewPCG(uint64(opts.Seed), 99))
	s.tokKey = make([]byte, 32)
	_, _ = rand.Read(s.tokKey)
	// Seeded creation dates count back from a fixed day, so a seed always
	// gives the same tenant.
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sizes := opts.Sizes
	for i := 0; len(opts.Sizes) == 0 && i < opts.Tenants; i++ {
		sizes = append(sizes, TenantSize{Users: opts.Users, Groups: opts.Groups})
	}
	for i, size := range sizes {
		t, app := seedTenant(i, opts.Seed, size.Users, size.Groups, base)
		if opts.ReadOnly {
			app.Roles = append([]string(nil), ReadOnlyPermissions...)
		}
		app.UserAdmin = !opts.NoUserAdminRole
		t.onChange = s.notify.hook(t.ID)
		s.addTenant(t)
	}
	cert, caPEM, err := selfSignedCA()
	if err != nil {
		return nil, err
	}
	s.caPEM = caPEM
	s.pool = x509.NewCertPool()
	s.pool.AppendCertsFromPEM(caPEM)
	l, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("graphsim: listen on %s: %w", opts.Listen, err)
	}
	hs := httptest.NewUnstartedServer(http.HandlerFunc(s.serveHTTP))
	hs.Listener.Close()
	hs.Listener = l
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	// Graph answers over HTTP/2 as well as HTTP/1.1; a client then keeps one
	// connection for many tenants' requests instead of one each.
	hs.EnableHTTP2 = true
	hs.StartTLS()
	s.hs = hs
	return s, nil
}

func (s *Server) addTenant(t *Tenant) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tenants = append(s.tenants, t)
	s.byKey[strings.ToLower(t.ID)] = t
	for _, d := range t.Domains {
		s.byKey[strings.ToLower(d)] = t
	}
}

// Close stops the server and every delivery of change notifications.
func (s *Server) Close() {
	s.notify.close()
	s.hs.Close()
}

// URL is the base URL (authority and Graph root).
func (s *Server) URL() string { return s.hs.URL }

// CAPEM is the simulator's CA certificate.
func (s *Server) CAPEM() []byte { return s.caPEM }

// CertPool trusts the simulator.
func (s *Server) CertPool() *x509.CertPool { return s.pool }

// Client is an HTTP client that trusts the simulator.
func (s *Server) Client() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.pool}}}
}

// Credentials returns one credential per seeded tenant.
func (s *Server) Credentials() []Credential {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Credential
	for _, t := range s.tenants {
		for _, a := range t.apps {
			out = append(out, Credential{TenantID: t.ID, Domain: t.DefaultDomain(), ClientID: a.ClientID, ClientSecret: a.Secret, Authority: s.URL(), GraphRoot: s.URL()})
		}
	}
	return out
}

// tenant finds a tenant by id or domain.
func (s *Server) tenant(key string) *Tenant {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byKey[strings.ToLower(key)]
}

func selfSignedCA() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "graphsim CA", Organization: []string{"m365-worker graphsim"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, caPEM, nil
}

// apiError is a Graph error response.
type apiError struct {
	status  int
	code    string
	message string
	details []map[string]string
	header  http.Header
}

func newErr(status int, code, msg string) *apiError {
	return &apiError{status: status, code: code, message: msg}
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

var errInsufficient = func() *apiError {
	return newErr(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
}

func (s *Server) writeError(w http.ResponseWriter, reqID, clientReqID string, e *apiError) {
	for k, vs := range e.header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	_ = json.NewEncoder(w).Encode(e.body(reqID, clientReqID))
}

// body is the error in Graph's shape (learn.microsoft.com/graph/errors).
func (e *apiError) body(reqID, clientReqID string) map[string]any {
	inner := map[string]any{"date": time.Now().UTC().Format("2006-01-02T15:04:05"), "request-id": reqID, "client-request-id": clientReqID}
	body := map[string]any{"code": e.code, "message": e.message, "innerError": inner}
	if len(e.details) > 0 {
		body["details"] = e.details
	}
	return map[string]any{"error": body}
}

func (s *Server) newRequestID() string {
	n := s.reqSeq.Add(1)
	return fmt.Sprintf("%08x-0000-4000-8000-%012x", uint32(time.Now().Unix()), n)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "/v1.0/"):
		s.serveGraph(w, r)
	case strings.HasPrefix(r.URL.Path, "/_admin/"):
		s.serveAdmin(w, r)
	case strings.HasPrefix(r.URL.Path, "/_issuers/"):
		s.serveIssuer(w, r)
	default:
		s.serveIdentity(w, r)
	}
}

// readBody reads a request body, gunzipping it when needed.
func readBody(r *http.Request) ([]byte, error) {
	var rd io.Reader = r.Body
	if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		rd = zr
	}
	return io.ReadAll(io.LimitReader(rd, 4<<20))
}

// --- access tokens -------------------------------------------------------

type tokenClaims struct {
	Aud   string   `json:"aud"`
	Iss   string   `json:"iss"`
	Tid   string   `json:"tid"`
	AppID string   `json:"appid"`
	Roles []string `json:"roles"`
	Wids  []string `json:"wids,omitempty"`
	Iat   int64    `json:"iat"`
	Nbf   int64    `json:"nbf"`
	Exp   int64    `json:"exp"`
}

// Directory role template ids carried in wids.
const (
	roleUserAdmin           = "fe930be7-5e62-47db-91af-98c3a49a38b1"
	rolePrivilegedAuthAdmin = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13"
)

var b64 = base64.RawURLEncoding

func (s *Server) signToken(c tokenClaims) string {
	h := b64.EncodeToString([]byte(`{"typ":"JWT","alg":"HS256"}`))
	p, _ := json.Marshal(c)
	msg := h + "." + b64.EncodeToString(p)
	mac := hmac.New(sha256.New, s.tokKey)
	mac.Write([]byte(msg))
	return msg + "." + b64.EncodeToString(mac.Sum(nil))
}

var errBadToken = errors.New("bad token")

func (s *Server) parseToken(tok string) (*tokenClaims, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, errBadToken
	}
	mac := hmac.New(sha256.New, s.tokKey)
	mac.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := b64.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, mac.Sum(nil)) {
		return nil, errBadToken
	}
	p, err := b64.DecodeString(parts[1])
	if err != nil {
		return nil, errBadToken
	}
	var c tokenClaims
	if err := json.Unmarshal(p, &c); err != nil {
		return nil, errBadToken
	}
	return &c, nil
}

// --- faults and latency --------------------------------------------------

type fault int

const (
	faultNone fault = iota
	faultDrop
	fault500
	fault502
	fault503
	fault504
	faultSlow
	faultDropAfterWrite
)

func (s *Server) drawFault() fault {
	f := s.opts.Faults
	if f == (Faults{}) {
		return faultNone
	}
	s.faultMu.Lock()
	x := s.faultR.Float64()
	s.faultMu.Unlock()
	for _, c := range []struct {
		rate float64
		f    fault
	}{{f.DropRate, faultDrop}, {f.Rate500, fault500}, {f.Rate502, fault502}, {f.Rate503, fault503}, {f.Rate504, fault504}, {f.SlowRate, faultSlow}, {f.DropAfterWriteRate, faultDropAfterWrite}} {
		if x < c.rate {
			return c.f
		}
		x -= c.rate
	}
	return faultNone
}

func (s *Server) sleep(d time.Duration) {
	if d > 0 {
		time.Sleep(s.clock.real(d))
	}
}

func cryptoRead(b []byte) (int, error) { return rand.Read(b) }

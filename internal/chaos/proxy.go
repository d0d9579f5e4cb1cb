package chaos

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
)

// Faults are the failures the proxy injects into Graph requests (/v1.0/…;
// the token endpoint is left alone), as rates per request (0..1).
type Faults struct {
	// Rate500 answers 500 generalException.
	Rate500 float64
	// Rate503 answers 503 with a Retry-After of 0.1–1 s.
	Rate503 float64
	// Rate429 answers 429 with a Retry-After of 0.1–2 s.
	Rate429 float64
	// DropRate closes the connection before the request reaches the
	// simulator.
	DropRate float64
	// CommitDropRate (writes only) lets the simulator apply the request,
	// then closes the connection without answering: the caller cannot know
	// the write happened (Graph's timeouts after commit).
	CommitDropRate float64
	// SlowRate delays the answer by 0.5–2.5 s.
	SlowRate float64
}

// DefaultFaults are the rates TestChaos runs with: about one Graph request
// in eight fails once.
var DefaultFaults = Faults{Rate500: 0.03, Rate503: 0.025, Rate429: 0.03, DropRate: 0.02, CommitDropRate: 0.02, SlowRate: 0.01}

// passwordSet is one password the simulator accepted for a user.
type passwordSet struct {
	password string
	count    int // the user's PasswordSet after it (0: unknown)
	at       time.Time
}

// proxy is a TLS reverse proxy in front of the simulator that injects
// faults and keeps the ground truth the simulator drops: every password it
// accepted, and how many objects each create made.
type proxy struct {
	sim     *graphsim.Server
	tenant  string
	srv     *httptest.Server
	up      *http.Client
	simURL  string
	selfURL string

	mu        sync.Mutex
	log       io.Writer // one line per injected fault
	rng       *rand.Rand
	faults    Faults
	injected  map[string]int
	creates   map[string]int           // "user:<upn>" / "group:<nickname>" (lower case) → 201s
	passwords map[string][]passwordSet // user id → passwords accepted, in order
	ambiguous map[string]bool          // user ids with concurrent password writes
	armed     chan string              // a kill waiting for its moment (armKill)
	hold      time.Duration
	armPW     bool
}

func startProxy(sim *graphsim.Server, tenant string, seed uint64, log io.Writer) *proxy {
	p := &proxy{log: log, sim: sim, tenant: tenant, simURL: sim.URL(), rng: rand.New(rand.NewPCG(seed, 0x70)),
		injected: map[string]int{}, creates: map[string]int{}, passwords: map[string][]passwordSet{}, ambiguous: map[string]bool{}}
	p.up = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: sim.CertPool()}, DisableCompression: true,
		MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}, Timeout: 60 * time.Second}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(p.serve))
	p.srv.StartTLS()
	p.selfURL = p.srv.URL
	return p
}

func (p *proxy) close() { p.srv.Close() }

// caPEM is the certificate the proxy serves (self-signed): the instance's
// extra trusted CA.
func (p *proxy) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
}

func (p *proxy) setFaults(f Faults) {
	p.mu.Lock()
	p.faults = f
	p.mu.Unlock()
}

func (p *proxy) injectedCounts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for k, v := range p.injected {
		out[k] = v
	}
	return out
}

type fault int

const (
	noFault fault = iota
	fault500
	fault503
	fault429
	faultDrop
	faultCommitDrop
	faultSlow
)

var faultNames = map[fault]string{fault500: "500", fault503: "503", fault429: "429", faultDrop: "drop", faultCommitDrop: "drop_after_commit", faultSlow: "slow"}

func (p *proxy) draw(r *http.Request, write bool) (fault, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.faults
	x := p.rng.Float64()
	pick := noFault
	for _, c := range []struct {
		rate float64
		f    fault
	}{{f.Rate500, fault500}, {f.Rate503, fault503}, {f.Rate429, fault429}, {f.DropRate, faultDrop}, {f.CommitDropRate, faultCommitDrop}, {f.SlowRate, faultSlow}} {
		if x < c.rate {
			pick = c.f
			break
		}
		x -= c.rate
	}
	if pick == faultCommitDrop && !write {
		pick = faultDrop
	}
	var d time.Duration
	switch pick {
	case fault503:
		d = time.Duration(100+p.rng.IntN(900)) * time.Millisecond
	case fault429:
		d = time.Duration(100+p.rng.IntN(1900)) * time.Millisecond
	case faultSlow:
		d = time.Duration(500+p.rng.IntN(2000)) * time.Millisecond
	}
	if pick != noFault {
		p.injected[faultNames[pick]]++
		if p.log != nil {
			fmt.Fprintf(p.log, "%s %s %s %s %s\n", time.Now().UTC().Format("15:04:05.000"), faultNames[pick], d, r.Method, r.URL.RequestURI())
		}
	}
	return pick, d
}

var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length"}

func graphError(w http.ResponseWriter, status int, code, msg string, retryAfter time.Duration) {
	if retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatFloat(retryAfter.Seconds(), 'f', 3, 64))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("request-id", "chaos-proxy")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": code, "message": msg,
		"innerError": map[string]string{"request-id": "chaos-proxy", "date": time.Now().UTC().Format("2006-01-02T15:04:05")}}})
}

func hangUp(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

func (p *proxy) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		hangUp(w)
		return
	}
	graph := strings.HasPrefix(r.URL.Path, "/v1.0/")
	write := r.Method != http.MethodGet && r.Method != http.MethodHead
	f, d := noFault, time.Duration(0)
	if graph {
		f, d = p.draw(r, write)
	}
	switch f {
	case fault500:
		graphError(w, 500, "generalException", "An unexpected error occurred. (chaos proxy)", 0)
		return
	case fault503:
		graphError(w, 503, "serviceNotAvailable", "The service is temporarily unavailable. (chaos proxy)", d)
		return
	case fault429:
		graphError(w, 429, "TooManyRequests", "Too many requests. (chaos proxy)", d)
		return
	case faultDrop:
		hangUp(w)
		return
	case faultSlow:
		time.Sleep(d)
	}
	// Graph finishes a request whose caller went away (a killed or
	// cancelled worker): so does the proxy, to see the effect.
	req, err := http.NewRequestWithContext(context.WithoutCancel(r.Context()), r.Method, p.simURL+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		hangUp(w)
		return
	}
	for k, vs := range r.Header {
		req.Header[k] = append([]string(nil), vs...)
	}
	for _, h := range hopHeaders {
		req.Header.Del(h)
	}
	resp, err := p.up.Do(req)
	if err != nil {
		hangUp(w)
		return
	}
	respBody, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		hangUp(w)
		return
	}
	if graph && write {
		p.observe(r, body, resp.StatusCode, respBody)
		if d := p.takeArmed(r, body, resp.StatusCode); d > 0 {
			time.Sleep(d)
		}
	}
	if f == faultCommitDrop {
		hangUp(w)
		return
	}
	// Links (paging, delta, the identity metadata) name the simulator: point
	// them back at the proxy.
	respBody = bytes.ReplaceAll(respBody, []byte(p.simURL), []byte(p.selfURL))
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, strings.ReplaceAll(v, p.simURL, p.selfURL))
		}
	}
	for _, h := range hopHeaders {
		w.Header().Del(h)
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(respBody)
}

// observe records the effects of a write the simulator answered.
func (p *proxy) observe(r *http.Request, body []byte, status int, respBody []byte) {
	if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
		if zr, err := gzip.NewReader(bytes.NewReader(body)); err == nil {
			if b, err := io.ReadAll(zr); err == nil {
				body = b
			}
		}
	}
	path := strings.TrimPrefix(r.URL.Path, "/v1.0")
	if path == "/$batch" && status == 200 {
		var req struct {
			Requests []struct {
				ID     string          `json:"id"`
				Method string          `json:"method"`
				URL    string          `json:"url"`
				Body   json.RawMessage `json:"body"`
			} `json:"requests"`
		}
		var resp struct {
			Responses []struct {
				ID     string          `json:"id"`
				Status int             `json:"status"`
				Body   json.RawMessage `json:"body"`
			} `json:"responses"`
		}
		if json.Unmarshal(body, &req) != nil || json.Unmarshal(respBody, &resp) != nil {
			return
		}
		for _, it := range req.Requests {
			for _, rs := range resp.Responses {
				if rs.ID == it.ID {
					u := it.URL
					if i := strings.Index(u, "?"); i >= 0 {
						u = u[:i]
					}
					p.effect(strings.ToUpper(it.Method), "/"+strings.TrimPrefix(strings.TrimPrefix(u, "/v1.0"), "/"), it.Body, rs.Status, rs.Body)
				}
			}
		}
		return
	}
	p.effect(r.Method, path, body, status, respBody)
}

func (p *proxy) effect(method, path string, body []byte, status int, respBody []byte) {
	if status < 200 || status > 299 {
		return
	}
	segs := strings.Split(strings.Trim(path, "/"), "/")
	var in struct {
		UserPrincipalName string `json:"userPrincipalName"`
		MailNickname      string `json:"mailNickname"`
		PasswordProfile   *struct {
			Password string `json:"password"`
		} `json:"passwordProfile"`
	}
	_ = json.Unmarshal(body, &in)
	var out struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(respBody, &out)
	switch {
	case method == http.MethodPost && len(segs) == 1 && segs[0] == "users":
		p.mu.Lock()
		p.creates["user:"+strings.ToLower(in.UserPrincipalName)]++
		p.mu.Unlock()
		if in.PasswordProfile != nil && out.ID != "" {
			p.recordPassword(out.ID, in.PasswordProfile.Password)
		}
	case method == http.MethodPost && len(segs) == 1 && segs[0] == "groups":
		p.mu.Lock()
		p.creates["group:"+strings.ToLower(in.MailNickname)]++
		p.mu.Unlock()
	case method == http.MethodPatch && len(segs) == 2 && segs[0] == "users" && in.PasswordProfile != nil:
		id := segs[1]
		_ = p.sim.Mutate(p.tenant, func(a *graphsim.Admin) error {
			if u := a.User(id); u != nil {
				id = u.ID
			}
			return nil
		})
		p.recordPassword(id, in.PasswordProfile.Password)
	}
}

// recordPassword notes a password the simulator accepted for user id, with
// the user's password-change counter read right after: two writes that
// read the same counter overlapped (two password writes for one user at
// once).
func (p *proxy) recordPassword(id, pw string) {
	count := 0
	_ = p.sim.Mutate(p.tenant, func(a *graphsim.Admin) error {
		if u := a.User(id); u != nil {
			count = u.PasswordSet
		}
		return nil
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.passwords[id] {
		if s.count == count && count != 0 {
			p.ambiguous[id] = true
		}
	}
	p.passwords[id] = append(p.passwords[id], passwordSet{password: pw, count: count, at: time.Now()})
}

// currentPassword is the last password the simulator accepted for the
// user; why is empty when that is certain, else it says why not
// (overlapping writes, or a write the proxy did not see).
func (p *proxy) currentPassword(id string) (pw string, sets []passwordSet, why string) {
	var count int
	_ = p.sim.Mutate(p.tenant, func(a *graphsim.Admin) error {
		if u := a.User(id); u != nil {
			count = u.PasswordSet
		}
		return nil
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	sets = append([]passwordSet(nil), p.passwords[id]...)
	for i := len(sets) - 1; i >= 0; i-- {
		if sets[i].count == count {
			if p.ambiguous[id] {
				return sets[i].password, sets, "two password writes for the user overlapped"
			}
			return sets[i].password, sets, ""
		}
	}
	why = fmt.Sprintf("the tenant counts %d password writes for the user, the proxy saw %d", count, len(sets))
	if len(sets) > 0 {
		return sets[len(sets)-1].password, sets, why
	}
	return "", sets, why
}

func (p *proxy) createCount(key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.creates[strings.ToLower(key)]
}

// armKill asks for the peer address of the next write of a kind that is
// not idempotent by nature (a create, a password, a licence change, a
// deletion) once the simulator has applied it; the proxy then holds that
// answer for hold, so the caller can kill the process that sent it before
// it learns the outcome.
// With onlyPasswords, only a password write will do.
func (p *proxy) armKill(hold time.Duration, onlyPasswords bool) <-chan string {
	reply := make(chan string, 1)
	p.mu.Lock()
	p.armed, p.hold, p.armPW = reply, hold, onlyPasswords
	p.mu.Unlock()
	return reply
}

func (p *proxy) disarm() {
	p.mu.Lock()
	p.armed = nil
	p.mu.Unlock()
}

// takeArmed hands the request's peer to an armed kill, if the write is one
// worth killing for.
func (p *proxy) takeArmed(r *http.Request, body []byte, status int) time.Duration {
	if status < 200 || status > 299 {
		return 0
	}
	path := strings.TrimPrefix(r.URL.Path, "/v1.0")
	segs := strings.Split(strings.Trim(path, "/"), "/")
	match := false
	p.mu.Lock()
	onlyPW := p.armPW
	p.mu.Unlock()
	pw := r.Method == http.MethodPatch && len(segs) == 2 && segs[0] == "users" && bytes.Contains(body, []byte("passwordProfile"))
	switch {
	case onlyPW:
		match = pw
	case r.Method == http.MethodPost && len(segs) == 1 && (segs[0] == "users" || segs[0] == "groups"):
		match = true
	case r.Method == http.MethodPatch && len(segs) == 2 && segs[0] == "users" && bytes.Contains(body, []byte("passwordProfile")):
		match = true
	case r.Method == http.MethodPost && len(segs) == 3 && segs[2] == "assignLicense":
		match = true
	case r.Method == http.MethodDelete && len(segs) == 2:
		match = true
	}
	if !match {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.armed == nil {
		return 0
	}
	p.armed <- r.Method + " " + r.URL.Path + " " + r.RemoteAddr
	p.armed = nil
	return p.hold
}

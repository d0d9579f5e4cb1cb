package notify

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/retry"
	"github.com/tevyra/m365-worker/jobs"
)

// Bounds of what the receiver reads.
const (
	// MaxValidationToken is the longest validationToken echoed; a longer
	// one is answered 400.
	MaxValidationToken = 1 << 10
	// MaxBody is the largest notification POST read; a larger one is
	// answered 413 (Graph sends at most 100 notifications a POST, far
	// less).
	MaxBody = 1 << 20
)

// DefaultWindow is how long accepted notifications of one instance are
// gathered into one trigger.
const DefaultWindow = time.Second

// Config configures a Receiver.
type Config struct {
	// Master is the key every pool key and clientState derive from
	// (PoolKey, ClientState); at least MinMasterKey bytes. Required. The
	// receiver keeps a copy.
	Master []byte
	// JetStream publishes the triggers. Required.
	JetStream jetstream.JetStream
	// Subjects gives the deployment's prefix. Default: jobs.DefaultPrefix.
	Subjects jobs.Subjects
	// BasePath is the path of the notification URLs' base: "/graph" for
	// https://hooks.example.com/graph/<pool>/<instance>. Default none: the
	// receiver serves /<pool>/<instance>.
	BasePath string
	// Window is how long accepted notifications of one instance are
	// gathered into one trigger, from the first. Default DefaultWindow.
	Window time.Duration
	// Retry bounds the retries of a trigger's publish; past it the trigger
	// is counted failed and logged. Default retry.Publish.
	Retry retry.Policy
	// PublishTimeout bounds one publish attempt. Default 5 s.
	PublishTimeout time.Duration
	// Logger receives the receiver's logs (never a clientState or the
	// master key). Default: discarded.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Window <= 0 {
		c.Window = DefaultWindow
	}
	if c.Retry == (retry.Policy{}) {
		c.Retry = retry.Publish
	}
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = 5 * time.Second
	}
	c.BasePath = strings.TrimRight(c.BasePath, "/")
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	if len(c.Master) < MinMasterKey {
		return fmt.Errorf("notify: the master key is %d bytes; it must be at least %d", len(c.Master), MinMasterKey)
	}
	if c.JetStream == nil {
		return errors.New("notify: Config.JetStream is required")
	}
	if c.BasePath != "" && (!strings.HasPrefix(c.BasePath, "/") || strings.ContainsAny(c.BasePath, "?#% ")) {
		return fmt.Errorf("notify: base path %q must start with / and hold no ?, #, %% or space", c.BasePath)
	}
	if c.Subjects.Prefix != "" {
		if err := jobs.CheckToken("notify: prefix", c.Subjects.Prefix); err != nil {
			return err
		}
	}
	return nil
}

// Stats are the receiver's counters since it started.
type Stats struct {
	// Received counts notifications (items of a POST's value array),
	// accepted or refused.
	Received int64
	// Refused counts notifications whose clientState was missing or wrong.
	Refused int64
	// Lifecycle counts accepted lifecycle notifications (lifecycleEvent
	// set).
	Lifecycle int64
	// Published counts triggers stored in the jobs stream.
	Published int64
	// Coalesced counts accepted notifications that made no trigger of
	// their own: they joined an instance's open window, or their window's
	// trigger joined one still being published.
	Coalesced int64
	// PublishFailures counts triggers given up on after the retries.
	PublishFailures int64
	// PublishRetries counts publish attempts after a trigger's first.
	PublishRetries int64
	// Pending counts instances with a window open or a trigger being
	// published.
	Pending int
}

type counters struct {
	received, refused, lifecycle, published, coalesced, failures, retries atomic.Int64
}

// Receiver is the http.Handler of Graph's change and lifecycle
// notifications, served on the host of the notification URLs. Close it to
// publish what is pending.
type Receiver struct {
	cfg    Config
	master []byte
	ctx    context.Context // ends in-flight publishes on a Shutdown past its deadline
	cancel context.CancelFunc
	wg     sync.WaitGroup // publishing goroutines
	stats  counters

	mu      sync.Mutex
	closed  bool
	pending map[target]*pending
}

// target is one instance of one pool.
type target struct{ pool, instance string }

// New checks cfg and returns a receiver.
func New(cfg Config) (*Receiver, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	r := &Receiver{cfg: cfg, master: append([]byte(nil), cfg.Master...), pending: map[target]*pending{}}
	r.cfg.Master = nil
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// Stats returns the counters.
func (r *Receiver) Stats() Stats {
	s := &r.stats
	r.mu.Lock()
	pending := len(r.pending)
	r.mu.Unlock()
	return Stats{Received: s.received.Load(), Refused: s.refused.Load(), Lifecycle: s.lifecycle.Load(), Published: s.published.Load(),
		Coalesced: s.coalesced.Load(), PublishFailures: s.failures.Load(), PublishRetries: s.retries.Load(), Pending: pending}
}

// item is one element of a POST's value array: a change notification or,
// with LifecycleEvent, a lifecycle notification. Other fields are ignored.
type item struct {
	SubscriptionID string  `json:"subscriptionId"`
	ChangeType     string  `json:"changeType"`
	Resource       string  `json:"resource"`
	ClientState    *string `json:"clientState"`
	TenantID       string  `json:"tenantId"`
	LifecycleEvent string  `json:"lifecycleEvent"`
}

// ServeHTTP answers the validation handshake (a validationToken query,
// POST or GET: 200 with the token as text/plain) and notification POSTs:
// 202 when at least one notification carries the instance's clientState,
// 403 when none does, 400 for a body that is not a notification, 413 past
// MaxBody, 503 once the receiver is closing. A path other than
// [BasePath]/<pool>/<instance>[/lifecycle] is 404. Nothing here waits for
// NATS.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	rest, ok := strings.CutPrefix(req.URL.Path, r.cfg.BasePath)
	pool, instance, _, valid := parsePath(rest)
	if !ok || !valid {
		http.NotFound(w, req)
		return
	}
	if q := req.URL.Query(); q.Has("validationToken") {
		if req.Method != http.MethodPost && req.Method != http.MethodGet {
			w.Header().Set("Allow", "POST, GET")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		token := q.Get("validationToken")
		if token == "" || len(token) > MaxValidationToken {
			http.Error(w, fmt.Sprintf("validationToken must be 1 to %d bytes", MaxValidationToken), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, token)
		return
	}
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	r.notifications(w, req, target{pool, instance})
}

func (r *Receiver) notifications(w http.ResponseWriter, req *http.Request, t target) {
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, MaxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			http.Error(w, fmt.Sprintf("the body exceeds %d bytes", MaxBody), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "cannot read the body", http.StatusBadRequest)
		return
	}
	var payload struct {
		Value []item `json:"value"`
	}
	if err := json.Unmarshal(body, &payload); err != nil || len(payload.Value) == 0 {
		http.Error(w, `not a notification: want {"value":[…]} with at least one notification`, http.StatusBadRequest)
		return
	}
	want := []byte(ClientState(PoolKey(r.master, t.pool), t.instance))
	accepted := 0
	for _, it := range payload.Value {
		r.stats.received.Add(1)
		if it.ClientState == nil || !hmac.Equal([]byte(*it.ClientState), want) {
			r.stats.refused.Add(1)
			continue
		}
		accepted++
		if it.LifecycleEvent != "" {
			r.stats.lifecycle.Add(1)
			r.cfg.Logger.Info("notify: lifecycle notification", "pool", t.pool, "instance", t.instance,
				"subscription_id", it.SubscriptionID, "lifecycle_event", it.LifecycleEvent, "tenant_id", it.TenantID)
		}
	}
	if refused := len(payload.Value) - accepted; refused > 0 {
		r.cfg.Logger.Debug("notify: notifications refused: clientState missing or wrong", "pool", t.pool, "instance", t.instance,
			"refused", refused, "remote_addr", req.RemoteAddr)
	}
	if accepted == 0 {
		http.Error(w, "no notification carries this instance's clientState", http.StatusForbidden)
		return
	}
	if !r.accept(t, accepted) {
		w.Header().Set("Retry-After", "10")
		http.Error(w, "the receiver is shutting down", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
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
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/tevyra/m365-worker/internal/retry"
	"github.com/tevyra/m365-worker/jobs"
)

// Bounds of what the receiver reads.
const (
	// MaxValidationToken is the longest validationToken echoed; a longer
	// one is answered 400.
	MaxValidationToken = 1 << 10
	// MaxBody is the most of a notification POST read: a body that reaches
	// past it before its first MaxItems items are read is answered 413.
	// A basic notification for a user or group is about 500 bytes.
	MaxBody = 256 << 10
	// DefaultMaxItems is how many notifications of a POST are read; the
	// rest are never decoded (every item of a POST is for the instance of
	// its URL, so the first ones decide).
	DefaultMaxItems = 100
	// DefaultMaxBodyReads is how many bodies are read at once; a POST past
	// it is answered 503 with Retry-After before its body is read.
	DefaultMaxBodyReads = 16
	// DefaultMaxPending is how many instances may have a trigger being
	// published or waiting for its spacing at once; a notification for
	// another instance past it is answered 503 with Retry-After.
	DefaultMaxPending = 10_000
)

// DefaultSpacing is the least time between two triggers of one instance.
const DefaultSpacing = 30 * time.Second

// Config configures a Receiver.
type Config struct {
	// Master is the key every pool key and clientState derive from
	// (PoolKey, ClientState); at least MinMasterKey bytes. Required. The
	// receiver keeps a copy.
	Master []byte
	// PreviousMasters are master keys being rotated out: a notification
	// carrying a clientState derived from one of them is accepted too, so
	// that subscriptions made with it keep working until the workers have
	// moved them to Master's (docs/security.md).
	PreviousMasters [][]byte
	// JetStream publishes the triggers. Required. Its connection should
	// not buffer publishes while disconnected (nats.ReconnectBufSize(-1)):
	// the receiver answers 503 then, and a buffered trigger would be
	// published later once per attempt.
	JetStream jetstream.JetStream
	// Subjects gives the deployment's prefix. Default: jobs.DefaultPrefix.
	Subjects jobs.Subjects
	// BasePath is the path of the notification URLs' base: "/graph" for
	// https://hooks.example.com/graph/<pool>/<instance>. Default none: the
	// receiver serves /<pool>/<instance>.
	BasePath string
	// Spacing is the least time between two triggers of one instance: the
	// first notification is published at once, notifications within
	// Spacing of it make exactly one more trigger when it ends. Default
	// DefaultSpacing.
	Spacing time.Duration
	// MaxItems is how many notifications of a POST are read. Default
	// DefaultMaxItems.
	MaxItems int
	// MaxBodyReads bounds the bodies read at once. Default
	// DefaultMaxBodyReads.
	MaxBodyReads int
	// MaxPending bounds the instances with a trigger in progress. Default
	// DefaultMaxPending.
	MaxPending int
	// Retry bounds the retries of a deferred trigger's publish (one made
	// when a spacing ends, after its notifications were answered); past it
	// the trigger is counted dropped and logged. Default retry.Publish.
	Retry retry.Policy
	// PublishTimeout bounds one publish attempt; the first trigger of a
	// spacing is published while Graph waits for the answer (3 s at most).
	// Default 2 s.
	PublishTimeout time.Duration
	// TriggerTTL is how long a stored trigger lives in the jobs stream
	// unserved (the message's Nats-TTL): a trigger is a hint, and an
	// instance's schedule covers it, so one for a made-up instance name (a
	// pool-key holder's) is gone after it rather than after the stream's 7
	// days. Default DefaultTriggerTTL.
	TriggerTTL time.Duration
	// Logger receives the receiver's logs (never a clientState or a master
	// key). Default: discarded.
	Logger *slog.Logger
	// TracerProvider makes the spans of accepted requests and of the
	// triggers' publishes (trace.go). Default: otel's global provider
	// (internal/tracing.Setup installs the process's).
	TracerProvider trace.TracerProvider
}

// DefaultTriggerTTL is a stored trigger's life unserved.
const DefaultTriggerTTL = time.Hour

func (c Config) withDefaults() Config {
	if c.Spacing <= 0 {
		c.Spacing = DefaultSpacing
	}
	if c.MaxItems <= 0 {
		c.MaxItems = DefaultMaxItems
	}
	if c.MaxBodyReads <= 0 {
		c.MaxBodyReads = DefaultMaxBodyReads
	}
	if c.MaxPending <= 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.Retry == (retry.Policy{}) {
		c.Retry = retry.Publish
	}
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = 2 * time.Second
	}
	if c.TriggerTTL <= 0 {
		c.TriggerTTL = DefaultTriggerTTL
	}
	c.BasePath = strings.TrimRight(c.BasePath, "/")
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	return c
}

func (c Config) validate() error {
	for i, m := range append([][]byte{c.Master}, c.PreviousMasters...) {
		if len(m) < MinMasterKey {
			return fmt.Errorf("notify: master key %d is %d bytes; it must be at least %d", i+1, len(m), MinMasterKey)
		}
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

// Receiver is the http.Handler of Graph's change and lifecycle
// notifications, served on the host of the notification URLs. Shut it down
// to publish what is pending.
type Receiver struct {
	cfg     Config
	masters [][]byte // the current first
	reads   chan struct{}
	ctx     context.Context // ends deferred publishes on a Shutdown past its deadline
	cancel  context.CancelFunc
	wg      sync.WaitGroup // deferred publishes
	stats   counters
	failing atomic.Bool // the last publish failed: deferring answers 503 too
	// connStats reports the listener's connections for /metrics.
	connStats atomic.Pointer[func() (open, refused int64)]

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
	r := &Receiver{cfg: cfg, reads: make(chan struct{}, cfg.MaxBodyReads), pending: map[target]*pending{}}
	for _, m := range append([][]byte{cfg.Master}, cfg.PreviousMasters...) {
		r.masters = append(r.masters, append([]byte(nil), m...))
	}
	r.cfg.Master, r.cfg.PreviousMasters = nil, nil
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// ServeHTTP answers Graph's validation handshake (a POST with a
// validationToken query: 200 with the token as text/plain) and
// notification POSTs: 202 once the instance's trigger is stored or
// deferred, 403 when no notification carries the instance's clientState,
// 400 for a body that is not a notification, 413 past MaxBody, 503 with
// Retry-After when the receiver is full, cannot store the trigger or is
// shutting down. A path other than [BasePath]/<pool>/<instance>[/lifecycle]
// is 404, another method 405.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	rest, ok := strings.CutPrefix(req.URL.Path, r.cfg.BasePath)
	pool, instance, _, valid := parsePath(rest)
	switch {
	case !ok || !valid:
		r.answer(w, answerNotFound, "not found")
	case req.Method != http.MethodPost:
		w.Header().Set("Allow", "POST")
		r.answer(w, answerMethod, "method not allowed")
	case req.URL.Query().Has("validationToken"):
		r.handshake(w, req.URL.Query().Get("validationToken"))
	default:
		r.notifications(w, req, target{pool, instance})
	}
}

// handshake echoes Graph's validation token.
func (r *Receiver) handshake(w http.ResponseWriter, token string) {
	if token == "" || len(token) > MaxValidationToken {
		r.answer(w, answerBadRequest, fmt.Sprintf("validationToken must be 1 to %d bytes", MaxValidationToken))
		return
	}
	r.stats.answers[answerHandshake].Add(1)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, token)
}

// notifications judges a POST's notifications and, when one is the
// instance's, stores or defers its trigger before answering.
func (r *Receiver) notifications(w http.ResponseWriter, req *http.Request, t target) {
	start := time.Now()
	if r.closing() {
		r.answer(w, answerShuttingDown, "the receiver is shutting down")
		return
	}
	v, status := r.read(w, req, t)
	if status != 0 {
		r.answer(w, status, "")
		return
	}
	if v.accepted == 0 {
		r.cfg.Logger.Debug("notify: request refused: no notification carries the instance's clientState", "pool", t.pool, "instance", t.instance,
			"notifications", v.items, "remote_addr", req.RemoteAddr)
		r.answer(w, answerForbidden, "no notification carries this instance's clientState")
		return
	}
	v.log(r.cfg.Logger, t)
	ctx, span := r.serverSpan(req, t, start, v.accepted)
	defer span.End()
	a, msg := answerAccepted, ""
	switch err := r.trigger(ctx, t, v.accepted); {
	case err == nil:
	case errors.Is(err, errClosing):
		a, msg = answerShuttingDown, "the receiver is shutting down"
	case errors.Is(err, errFull):
		a, msg = answerBusy, "too many instances pending"
	default:
		a, msg = answerUnavailable, "the trigger cannot be stored now"
	}
	traceAnswer(span, a)
	if a != answerAccepted {
		r.answer(w, a, msg)
		return
	}
	r.stats.answers[answerAccepted].Add(1)
	w.WriteHeader(http.StatusAccepted)
}

// read reads and judges the body; a non-zero answer ends the request.
// A body of at most smallBody bytes (what Graph sends) is read whole into a
// pooled buffer; only a longer one takes one of the MaxBodyReads slots for
// the rest, so slow or large bodies cannot crowd Graph's out. Either must
// arrive within BodyTimeout.
func (r *Receiver) read(w http.ResponseWriter, req *http.Request, t target) (verdict, answer) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(BodyTimeout))
	body := http.MaxBytesReader(w, req.Body, MaxBody)
	buf := smallBufs.Get().(*[smallBody]byte)
	defer smallBufs.Put(buf)
	n, err := io.ReadFull(body, buf[:])
	var src io.Reader = bytes.NewReader(buf[:n])
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF: // all of it
	case err != nil:
		return verdict{}, readAnswer(err)
	default: // more to come
		select {
		case r.reads <- struct{}{}:
			defer func() { <-r.reads }()
		default:
			return verdict{}, answerBusy
		}
		src = io.MultiReader(src, body)
	}
	want := r.clientStates(t)
	v := verdict{}
	err = parseBody(src, r.cfg.MaxItems, func(it item) { v.judge(it, want) })
	if err == nil { // the rest is read, not decoded: a body past MaxBody is 413 wherever it ends
		_, err = io.Copy(io.Discard, body)
	}
	r.stats.received.Add(int64(v.items))
	r.stats.lifecycle.Add(int64(v.lifecycle))
	r.stats.previous.Add(int64(v.previous))
	if err != nil {
		return v, readAnswer(err)
	}
	return v, 0
}

// BodyTimeout bounds reading a notification's body (Graph sends it at once).
const BodyTimeout = 2 * time.Second

// smallBody is the body read without a slot: a POST of a few notifications.
const smallBody = 8 << 10

var smallBufs = sync.Pool{New: func() any { return new([smallBody]byte) }}

// readAnswer is the answer to a body that could not be read or judged.
func readAnswer(err error) answer {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return answerTooLarge
	}
	return answerBadRequest
}

// clientStates are t's clientState under each master key, the current
// first.
func (r *Receiver) clientStates(t target) [][]byte {
	out := make([][]byte, len(r.masters))
	for i, m := range r.masters {
		out[i] = []byte(ClientState(PoolKey(m, t.pool), t.instance))
	}
	return out
}

// verdict is what a POST's notifications were found to be.
type verdict struct {
	items, accepted, lifecycle int
	previous                   int            // accepted under a previous master key
	events                     map[string]int // accepted lifecycle events by name (known names only)
	subscription               string         // one accepted lifecycle notification's subscription id
}

func (v *verdict) judge(it item, want [][]byte) {
	v.items++
	if it.ClientState == nil {
		return
	}
	k := matchIndex([]byte(*it.ClientState), want)
	if k < 0 {
		return
	}
	v.accepted++
	if k > 0 {
		v.previous++
	}
	if it.LifecycleEvent == "" {
		return
	}
	v.lifecycle++
	if v.events == nil {
		v.events = map[string]int{}
	}
	v.events[lifecycleName(it.LifecycleEvent)]++
	if v.subscription == "" {
		v.subscription = bounded(it.SubscriptionID, 64)
	}
}

// matchIndex compares cs with every wanted value in constant time and
// returns the index of the one it equals, -1 if none.
func matchIndex(cs []byte, want [][]byte) int {
	k := -1
	for i, w := range want {
		if hmac.Equal(cs, w) {
			k = i
		}
	}
	return k
}

// log writes one line for a POST's lifecycle notifications, however many
// it carries.
func (v *verdict) log(log *slog.Logger, t target) {
	if v.lifecycle == 0 {
		return
	}
	log.Info("notify: lifecycle notifications", "pool", t.pool, "instance", t.instance, "count", v.lifecycle,
		"events", v.events, "subscription_id", v.subscription)
}

// lifecycleName bounds a lifecycle event's name to the ones Graph sends.
func lifecycleName(ev string) string {
	switch ev {
	case "reauthorizationRequired", "subscriptionRemoved", "missed":
		return ev
	}
	return "other"
}

// bounded cuts a string from outside to n bytes for a log line.
func bounded(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func (r *Receiver) closing() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

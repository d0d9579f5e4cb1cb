package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
)

// Job is what a handler receives: the envelope, the typed parameters and the
// runtime's view of this delivery.
type Job struct {
	*jobs.Job
	// Params are the decoded, validated parameters; handlers registered with
	// Register receive them typed.
	Params jobs.Params
	// Pool serving the job.
	Pool string
	// Worker is the id of the worker running the job.
	Worker string
	// Attempt is 1 for the first handler run, counting only runs that used
	// an attempt.
	Attempt int
	// Delivery counts every delivery of the job, give-backs included: each
	// run of a handler has its own (a rerun's sync id is made of it).
	Delivery int
	// StreamSeq is the job's sequence in the jobs stream.
	StreamSeq uint64
	// Published is when the job was stored in the stream.
	Published time.Time
	// Trigger says who asked for a sync job: jobs.TriggerSchedule,
	// TriggerNotification or TriggerOnDemand.
	Trigger string
	// InstanceConfig is the instance configuration, when one exists.
	InstanceConfig *Instance
	// Logger carries job_id, instance and action.
	Logger *slog.Logger

	state    *state.Scope
	lock     *state.Lock
	progress func()
	poolKey  nkeys.KeyPair
	previous []nkeys.KeyPair // pool keys being rotated out
	opened   *openedFields
	fresh    func(ctx context.Context) (*Instance, error)
}

// InstanceChanged reads the job's instance record again and reports whether
// it changed since the job took it: credentials rotated while it ran (an
// instance update, then the old secret removed from the app). The newer
// record is then what the worker's copy holds, so a retry of the job uses
// it.
func (j *Job) InstanceChanged(ctx context.Context) bool {
	if j.fresh == nil || j.InstanceConfig == nil {
		return false
	}
	in, err := j.fresh(ctx)
	return err == nil && in.UpdatedAt.After(j.InstanceConfig.UpdatedAt)
}

// State is the job's instance's part of the state bucket: its ledger,
// effects, sync state and asset state. Handlers use its typed methods; they
// never build keys.
func (j *Job) State() *state.Scope { return j.state }

// StillHolds reports whether the job still surely holds the lock the
// runtime took for it (its instance's or its target's), nil if it needs
// none. Handlers check it before every effect on Graph (graphclient's
// WithGuard): a job whose worker was paused past the lock's TTL, while
// another worker may run it, must cause nothing more.
func (j *Job) StillHolds() error {
	if j.lock == nil {
		return nil
	}
	return j.lock.Check()
}

// Rerun reports whether an earlier delivery of the job may have run the
// handler (and left effects or state behind).
func (j *Job) Rerun() bool { return j.Delivery > 1 }

// ErrNoPoolKey means a sealed secret was given but the worker has no pool
// key to open it.
var ErrNoPoolKey = errors.New("this worker has no pool key to open sealed secrets (set M365_POOL_KEY or --pool-key-file)")

// OpenSecret opens a secret sealed to the pool's key for b (see
// jobs.SealFor): a value sealed for another place is refused.
func (j *Job) OpenSecret(s *jobs.SealedSecret, b jobs.Binding) ([]byte, error) {
	if j.poolKey == nil {
		return nil, ErrNoPoolKey
	}
	return OpenWith(append([]nkeys.KeyPair{j.poolKey}, j.previous...))(s, b)
}

// OpenInstanceSecret opens a secret of the job's instance record (its
// client secret, certificate key or proxy credentials) as OpenSecret does;
// the worker keeps what it opened for the jobs after this one.
func (j *Job) OpenInstanceSecret(s *jobs.SealedSecret, b jobs.Binding) ([]byte, error) {
	if j.opened == nil {
		return j.OpenSecret(s, b)
	}
	return j.opened.open(s, b, j.OpenSecret)
}

// OpenWith opens sealed values with the pool's keys (the current one first,
// then keys being rotated out), each with the key it is sealed to.
func OpenWith(keys []nkeys.KeyPair) func(*jobs.SealedSecret, jobs.Binding) ([]byte, error) {
	return func(s *jobs.SealedSecret, b jobs.Binding) ([]byte, error) {
		return s.OpenFor(poolKeyFor(s.Recipient, keys), b)
	}
}

// poolKeyFor is the key among keys (the pool's current key first, then keys
// being rotated out) whose public key is recipient; the current key when
// none is (opening then says the value is sealed to another key).
func poolKeyFor(recipient string, keys []nkeys.KeyPair) nkeys.KeyPair {
	for _, kp := range keys {
		if pub, err := kp.PublicKey(); err == nil && pub == recipient {
			return kp
		}
	}
	if len(keys) == 0 {
		return nil
	}
	return keys[0]
}

// SealForPool seals b to the pool's own key for binding: a value only the
// pool's workers can open, there (a generated password kept for the job's
// redeliveries).
func (j *Job) SealForPool(b []byte, binding jobs.Binding) (*jobs.SealedSecret, error) {
	if j.poolKey == nil {
		return nil, ErrNoPoolKey
	}
	pub, err := j.poolKey.PublicKey()
	if err != nil {
		return nil, err
	}
	return jobs.SealFor(b, pub, binding)
}

// Progress tells JetStream the job is still being worked on, resetting its
// ack timer. The runtime already sends heartbeats every Config.Heartbeat;
// call it after a step that may have taken longer.
func (j *Job) Progress() {
	if j.progress != nil {
		j.progress()
	}
}

// HandlerFunc handles one job. Its output (nil, or a value marshalled to
// JSON) becomes the result's output; for sync jobs it must be a
// *jobs.SyncReport. The returned error steers settlement:
//   - nil: success, result published, job acked;
//   - RetryAfter(d, err): given back for redelivery after d without using an
//     attempt (throttling);
//   - a *jobs.Error with Retryable false (see Permanent): failed result and
//     failure record, never retried;
//   - anything else: retried after a backoff until MaxAttempts, then failed
//     with attempts_exhausted.
type HandlerFunc func(ctx context.Context, j *Job) (any, error)

// Handler is a registered handler with what it needs from the runtime.
type Handler struct {
	Func HandlerFunc
	// Exclusive: one job of the handler's action per instance at a time,
	// under the instance's lock (the sync round). A job a schedule produced
	// that finds one running is closed as skipped (the running one covers
	// it); any other waits for its turn.
	Exclusive bool
	// Ordered: jobs with the same target (Params.Target()) of one instance
	// run one at a time, in publication order, across workers.
	Ordered bool
}

// Registry maps full action names to handlers.
type Registry map[string]Handler

// Register adds a typed handler for action to r; its jobs are ordered per
// target.
func Register[P jobs.Params](r Registry, action string, fn func(ctx context.Context, j *Job, p P) (any, error)) {
	r[jobs.FullAction(action)] = Handler{Ordered: true, Func: func(ctx context.Context, j *Job) (any, error) {
		p, ok := j.Params.(P)
		if !ok {
			return nil, Permanent(jobs.CodeInternal, fmt.Sprintf("handler for %s got parameters of type %T", action, j.Params))
		}
		return fn(ctx, j, p)
	}}
}

// retryAfterError asks for a redelivery after a delay without using an
// attempt.
type retryAfterError struct {
	delay time.Duration
	err   error
}

func (e *retryAfterError) Error() string {
	return fmt.Sprintf("retry after %s: %v", e.delay, e.err)
}
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter returns an error that gives the job back for redelivery after d
// without using an attempt: the handler's answer to throttling.
func RetryAfter(d time.Duration, err error) error {
	if err == nil {
		err = errors.New("throttled")
	}
	return &retryAfterError{delay: d, err: err}
}

// Permanent returns an error that fails the job at once, never retried.
func Permanent(code, message string) error {
	return &jobs.Error{Code: code, Message: message}
}

// ErrNotImplemented is the error of an action the contract has but this
// worker has no handler for.
func notImplemented(action string) *jobs.Error {
	return &jobs.Error{Code: jobs.CodeNotImplemented, Message: fmt.Sprintf("action %s is part of the contract but this worker has no handler for it yet", action)}
}

func marshalOutput(v any) (json.RawMessage, error) {
	if v == nil {
		return nil, nil
	}
	if raw, ok := v.(json.RawMessage); ok {
		return raw, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode output: %w", err)
	}
	return b, nil
}

// NewJobForTest builds the Job a handler receives, for tests that call
// handlers directly (as a redelivery would).
func NewJobForTest(j *jobs.Job, p jobs.Params, in *Instance, poolKey nkeys.KeyPair, st *state.Store, delivery int) *Job {
	return &Job{Job: j, Params: p, Pool: jobs.DefaultPool, Attempt: delivery, Delivery: delivery, InstanceConfig: in, Logger: slog.New(slog.DiscardHandler),
		poolKey: poolKey, Published: time.Now(), state: st.For(jobs.DefaultPool, j.Instance)}
}

// Safely calls f, turning a panic into an error. Handlers run the work of
// every goroutine they start through it: the runtime recovers panics in the
// handler's own goroutine, but one in another goroutine would crash the
// worker (and every worker the job is redelivered to).
func Safely(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return f()
}

// RetryAfterOf reports whether err asks for a retry after a delay (see
// RetryAfter), and the delay.
func RetryAfterOf(err error) (time.Duration, bool) {
	var ra *retryAfterError
	if errors.As(err, &ra) {
		return ra.delay, true
	}
	return 0, false
}

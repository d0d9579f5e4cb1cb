package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nkeys"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/tevyra/m365-worker/jobs"
)

// Config configures a Worker. Every field documents its default; zero values
// take the default (see WithDefaults).
type Config struct {
	// Subjects names the deployment's subjects. Default prefix "m365".
	Subjects jobs.Subjects
	// Pool is the worker pool this worker serves. Default "default".
	Pool string
	// ID names this worker in results, failure records and the live-worker
	// registry. Default: <hostname>-<random>.
	ID string
	// Concurrency is the number of jobs handled at once. Default 256: a
	// job spends nearly all its time waiting on Graph (the network, the
	// tenant's pacing, a throttled retry), and a waiting job costs a
	// goroutine, not a core, so the bound is there for memory and for the
	// jobs a worker holds (at most 1,000), not for the CPU (Go's scheduler
	// bounds that). Jobs are fetched only when a slot is free, so none wait
	// in a buffer while their ack timer runs.
	Concurrency int
	// InstanceShare is the slots of a worker each instance is sure of, so
	// that one tenant's burst cannot hold the slots every other tenant
	// needs. An instance past its share borrows free slots as long as a
	// share's worth stays free and borrowed slots stay within half the
	// worker; a job that can do neither waits in the worker, parked, for
	// the first slot it may take (share.go). Default DefaultInstanceShare,
	// at most a quarter of the Concurrency.
	InstanceShare int
	// AckWait is the consumer's ack wait: a job not settled or heartbeated
	// for this long is redelivered to another worker. Default 60s.
	AckWait time.Duration
	// Heartbeat is how often a running job reports progress. Default
	// AckWait/3.
	Heartbeat time.Duration
	// MaxAttempts is how many handler runs a job gets before it fails with
	// attempts_exhausted. Throttled waits (RetryAfter) and shutdown
	// give-backs do not count. Default 5.
	MaxAttempts int
	// RetryBackoff is the delay before the second attempt; it doubles per
	// attempt up to MaxRetryBackoff. Defaults 2s and 5m.
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// PollWait is how long one pull waits for jobs; it bounds how long a
	// shutdown waits for the current pull. Default 2s.
	PollWait time.Duration
	// ShutdownTimeout is how long in-flight jobs may run on after a
	// shutdown starts; the rest are given back for redelivery. Default 30s.
	ShutdownTimeout time.Duration
	// SyncLockTTL bounds how long a dead worker's sync lock outlives it.
	// Default 30s; a live worker refreshes its lock every SyncLockTTL/3.
	SyncLockTTL time.Duration
	// NotifySpacing is the least time between two rounds of one instance
	// that notification triggers start: a trigger within it of the last
	// such round is given back until it ends (no attempt used), and the
	// one waiting then (the receiver's rollup keeps at most one) makes
	// exactly one more round. Default 0: not spaced (the binary's
	// --notify-spacing is 30 s).
	NotifySpacing time.Duration
	// TargetLockTTL bounds how long a dead worker's lock on an action
	// target (one job per user or group at a time) outlives it. Default
	// 10s; refreshed every TargetLockTTL/3.
	TargetLockTTL time.Duration
	// ManageConsumer makes the worker create or update its pool's consumer
	// with AckWait and MaxDeliver, as the operator would: for `run`
	// (operator and worker in one process) and tests. Otherwise the worker
	// binds the consumer setup made, takes its ack wait and delivery cap,
	// and reports what is missing if it does not exist.
	ManageConsumer bool
	// MaxDeliver is the pool consumer's delivery cap. The worker counts
	// attempts itself (throttled waits use none), so this is a backstop; a
	// job nearing it fails with attempts_exhausted rather than vanish.
	// Default 1000.
	MaxDeliver int
	// LedgerTTL is how long a finished job's id is remembered, so a job
	// redelivered or republished with the same id gets no second result.
	// Default 8 days (longer than the jobs stream keeps jobs).
	LedgerTTL time.Duration
	// PoolKey opens secrets sealed to the pool (instance secrets, job
	// passwords) and seals what the pool keeps for itself. Optional until
	// a handler needs it.
	PoolKey nkeys.KeyPair
	// PreviousPoolKeys still open secrets sealed to them while the pool's
	// key is rotated (docs/security.md); nothing new is sealed to them.
	PreviousPoolKeys []nkeys.KeyPair
	// OnInstanceChange, if set, is called with every change of an instance
	// of the worker's pool the worker sees (nil for a removal): the Graph
	// client pool forgets a removed instance's client and its opened
	// secret.
	OnInstanceChange func(id string, in *Instance)
	// OnInstanceRemoved, if set, is called with the last record of an
	// instance of the worker's pool that was removed, when the worker had
	// seen it (its change-notification subscriptions are deleted with it).
	OnInstanceRemoved func(prev *Instance)
	// Logger receives the worker's logs. Default: discard.
	Logger *slog.Logger
	// TracerProvider makes each job's span (worker/trace.go) and, through
	// the span, its Graph requests' and its results' (internal/tracing).
	// Default: otel's global provider (internal/tracing.Setup installs the
	// process's).
	TracerProvider trace.TracerProvider
}

// DefaultConcurrency is a worker's default Concurrency.
const DefaultConcurrency = 256

// DefaultInstanceShare is the default InstanceShare: twice the requests
// graphclient lets one tenant have in flight (PoolConfig.MaxConcurrency,
// 16), so a tenant given its share at once has what Graph lets it use.
const DefaultInstanceShare = 32

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Pool == "" {
		c.Pool = jobs.DefaultPool
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "worker"
		}
		c.ID = sanitizeToken(host) + "-" + nuid.Next()[16:]
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.InstanceShare <= 0 {
		c.InstanceShare = min(DefaultInstanceShare, max(1, c.Concurrency/4))
	}
	c.InstanceShare = min(c.InstanceShare, c.Concurrency)
	if c.AckWait <= 0 {
		c.AckWait = 60 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = c.AckWait / 3
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = 2 * time.Second
	}
	if c.MaxRetryBackoff <= 0 {
		c.MaxRetryBackoff = 5 * time.Minute
	}
	if c.PollWait <= 0 {
		c.PollWait = 2 * time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	if c.SyncLockTTL <= 0 {
		c.SyncLockTTL = 30 * time.Second
	}
	if c.TargetLockTTL <= 0 {
		c.TargetLockTTL = 10 * time.Second
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 1000
	}
	if c.LedgerTTL <= 0 {
		c.LedgerTTL = 8 * 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if err := jobs.CheckToken("pool", c.Pool); err != nil {
		errs = append(errs, err)
	}
	if c.Subjects.Prefix != "" {
		if err := jobs.CheckToken("subject prefix", c.Subjects.Prefix); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Heartbeat >= c.AckWait {
		errs = append(errs, fmt.Errorf("heartbeat %s must be shorter than ack wait %s", c.Heartbeat, c.AckWait))
	}
	if c.SyncLockTTL < time.Second || c.TargetLockTTL < time.Second {
		errs = append(errs, fmt.Errorf("lock TTLs (sync %s, target %s) must be at least 1s", c.SyncLockTTL, c.TargetLockTTL))
	}
	if c.Concurrency > 1000 {
		errs = append(errs, fmt.Errorf("concurrency %d is above 1000, the most jobs a worker holds", c.Concurrency))
	}
	return errors.Join(errs...)
}

// sanitizeToken keeps what a KV key and a subject token allow.
func sanitizeToken(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

// consumerName is the durable consumer a pool's workers share.
func consumerName(prefix, pool string) string { return prefix + "_pool_" + pool }

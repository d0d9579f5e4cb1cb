// Package retry is the one retry helper for NATS-side work (KV updates that
// lost a race, publishes that met a leader election, setup calls that raced
// another worker): exponential backoff with jitter from cenkalti/backoff,
// bounded by a number of tries or an elapsed time, and by the context.
// Graph-side retries are the paced transport's (graphclient); a job's own
// retries are settled by the worker (a nak with a delay).
package retry

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Policy says how often and how long to retry.
type Policy struct {
	// Initial is the first delay; it grows by Multiplier (default 2) up to
	// Max, with ±25 % jitter.
	Initial, Max time.Duration
	Multiplier   float64
	// Tries bounds the calls (0: no bound); MaxElapsed bounds the time
	// spent (0: no bound). With neither, only the context ends the retries.
	Tries      int
	MaxElapsed time.Duration
}

// Policies used across the project.
var (
	// Quick is for compare-and-set loops that lost a race: a few fast tries.
	Quick = Policy{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond, Tries: 8}
	// Setup is for idempotent stream and bucket setup racing other workers.
	Setup = Policy{Initial: 50 * time.Millisecond, Max: time.Second, Tries: 6}
	// UntilCancelled is for waiting out a server's failover for as long as
	// the caller's context allows.
	UntilCancelled = Policy{Initial: 250 * time.Millisecond, Max: 2 * time.Second}
	// Publish is for storing a message while a server or leader comes back.
	Publish = Policy{Initial: 100 * time.Millisecond, Max: 2 * time.Second, MaxElapsed: 30 * time.Second}
)

// Permanent marks err as not worth retrying: Do returns it (unwrapped) at
// once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanent{err}
}

type permanent struct{ err error }

func (p *permanent) Error() string { return p.err.Error() }
func (p *permanent) Unwrap() error { return p.err }

// Backoff returns the policy's backoff, for callers that compute delays
// themselves (the worker's nak delays).
func (p Policy) Backoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = p.Initial
	b.MaxInterval = p.Max
	if p.Multiplier > 0 {
		b.Multiplier = p.Multiplier
	}
	b.RandomizationFactor = 0.25
	b.MaxElapsedTime = p.MaxElapsed
	b.Reset()
	var bo backoff.BackOff = b
	if p.Tries > 0 {
		bo = backoff.WithMaxRetries(bo, uint64(p.Tries-1))
	}
	return bo
}

// Do calls f until it returns nil or a Permanent error, the policy gives up
// or ctx ends; it returns f's last error (or ctx's).
func Do(ctx context.Context, p Policy, f func() error) error {
	err := backoff.Retry(func() error {
		if err := f(); err != nil {
			var perm *permanent
			if errors.As(err, &perm) {
				return backoff.Permanent(perm.err)
			}
			return err
		}
		return nil
	}, backoff.WithContext(p.Backoff(), ctx))
	return err
}

// Delay is the wait before try n (1-based) of a plain exponential policy
// without jitter: Initial × Multiplier^(n-1), at most Max. The worker uses it
// for the delay of a job's next attempt.
func (p Policy) Delay(n int) time.Duration {
	m := p.Multiplier
	if m <= 0 {
		m = 2
	}
	d := float64(p.Initial)
	for i := 1; i < n && time.Duration(d) < p.Max; i++ {
		d *= m
	}
	return min(time.Duration(d), p.Max)
}

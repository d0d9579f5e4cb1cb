package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/roundtrip"
)

// ErrHeld means another job holds the lock; the error names the holder.
var ErrHeld = errors.New("held by another job")

// Holder is who holds a lock.
type Holder struct {
	Worker string    `json:"worker"`
	JobID  string    `json:"job_id"`
	Since  time.Time `json:"since"`
}

// Lock is a key created only if absent, with a TTL so that a dead holder's
// lock frees itself. The holder refreshes it every ttl/3; if a refresh finds
// the key taken by someone else (the TTL ran out while the holder was cut
// off), Lost closes and the holder must stop.
type Lock struct {
	s    *Store
	key  string
	ttl  time.Duration
	mu   sync.Mutex
	rev  uint64
	okAt time.Time // when the server last confirmed the lock
	stop chan struct{}
	done chan struct{}
	lost chan struct{}
}

func (sc *Scope) syncLockKey() string { return sc.key(kindLock, "sync") }

func (sc *Scope) targetLockKey(target string) string {
	return sc.key(kindLock, "t", token(strings.ToLower(target)))
}

// AcquireExclusive takes the instance's exclusive lock (one sync round at a
// time), or returns an error wrapping ErrHeld.
func (sc *Scope) AcquireExclusive(ctx context.Context, h Holder, ttl time.Duration) (*Lock, error) {
	return sc.s.acquire(ctx, sc.syncLockKey(), h, ttl)
}

// AcquireTarget takes the lock of one action target (a user or group; case
// does not matter), or returns an error wrapping ErrHeld.
func (sc *Scope) AcquireTarget(ctx context.Context, target string, h Holder, ttl time.Duration) (*Lock, error) {
	return sc.s.acquire(ctx, sc.targetLockKey(target), h, ttl)
}

// WaitTargetFree waits until the target's lock is free, until the deadline;
// it reports whether it got free.
func (sc *Scope) WaitTargetFree(ctx context.Context, target string, until time.Time) bool {
	return sc.s.waitFor(ctx, sc.targetLockKey(target), false, until, nil)
}

func (s *Store) acquire(ctx context.Context, key string, h Holder, ttl time.Duration) (*Lock, error) {
	b, _ := json.Marshal(h)
	rev, err := s.createTTL(ctx, key, b, ttl)
	if errors.Is(err, jetstream.ErrKeyExists) {
		var holder Holder
		_, _ = s.getJSON(ctx, key, &holder)
		return nil, fmt.Errorf("%w: worker %s runs job %s since %s", ErrHeld, holder.Worker, holder.JobID, holder.Since.Format(time.RFC3339))
	}
	if err != nil {
		return nil, fmt.Errorf("take lock %s: %w", key, err)
	}
	l := &Lock{s: s, key: key, ttl: ttl, rev: rev, okAt: time.Now(), stop: make(chan struct{}), done: make(chan struct{}), lost: make(chan struct{})}
	go l.refresh(b)
	return l, nil
}

func (l *Lock) refresh(val []byte) {
	defer close(l.done)
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), l.ttl/3)
			l.mu.Lock()
			rev, err := l.s.putTTL(ctx, l.key, val, l.ttl, l.rev)
			if err == nil {
				l.rev, l.okAt = rev, time.Now()
			}
			l.mu.Unlock()
			cancel()
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
				close(l.lost) // someone else took it: our TTL ran out
				return
			}
		}
	}
}

// Lost is closed if the lock expired and another holder took it.
func (l *Lock) Lost() <-chan struct{} { return l.lost }

// ErrLockLost means a lock may no longer be held: another holder took it,
// or it was not confirmed within most of its TTL (its holder was paused or
// cut off, and the server may have let it expire).
var ErrLockLost = errors.New("the lock may no longer be held")

// Check reports whether the lock is still surely held: call it right before
// an effect only the holder may cause.
func (l *Lock) Check() error {
	select {
	case <-l.lost:
		return fmt.Errorf("%w: another holder took it", ErrLockLost)
	default:
	}
	l.mu.Lock()
	since := time.Since(l.okAt)
	l.mu.Unlock()
	if since > l.ttl*4/5 {
		return fmt.Errorf("%w: not confirmed for %s (TTL %s)", ErrLockLost, since.Round(time.Millisecond), l.ttl)
	}
	return nil
}

// Release stops refreshing and deletes the lock if it is still ours.
func (l *Lock) Release(ctx context.Context) {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	roundtrip.Add(ctx, 1)
	_ = l.s.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev))
}

// waitFor waits until key exists (present) or does not (!present), up to
// until, or until wake closes. It reports whether the key got there.
func (s *Store) waitFor(ctx context.Context, key string, present bool, until time.Time, wake <-chan struct{}) bool {
	ctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	roundtrip.Add(ctx, 1)
	wa, err := s.kv.Watch(ctx, key)
	if err != nil {
		return false
	}
	defer func() { _ = wa.Stop() }()
	exists := false
	for {
		select {
		case e, ok := <-wa.Updates():
			if !ok {
				return false
			}
			if e != nil {
				exists = e.Operation() == jetstream.KeyValuePut
			}
			if exists == present {
				return true
			}
		case <-wake:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrSyncRunning means another worker holds an instance's sync lock.
var ErrSyncRunning = errors.New("a sync of this instance is already running")

type lockValue struct {
	Worker string    `json:"worker"`
	JobID  string    `json:"job_id"`
	Since  time.Time `json:"since"`
}

// syncLock is an instance's sync lock: a key in the state bucket created only
// if absent, with a TTL so a dead worker's lock frees itself. The holder
// refreshes it every ttl/3 while the sync runs.
type syncLock struct {
	s    *state
	key  string
	ttl  time.Duration
	mu   sync.Mutex
	rev  uint64
	stop chan struct{}
	done chan struct{}
	lost chan struct{}
}

func syncLockKey(instance string) string { return "lock.sync." + instance }

// acquireTargetLock takes the lock of one action target of an instance
// (the same mechanism as the sync lock; ErrSyncRunning when held).
func (s *state) acquireTargetLock(ctx context.Context, instance, target string, v lockValue, ttl time.Duration) (*syncLock, error) {
	return s.acquireLock(ctx, targetLockKey(instance, target), instance, v, ttl)
}

func targetLockKey(instance, target string) string {
	return "lock.target." + instance + "." + jobKey(strings.ToLower(target))
}

// waitFor waits until key exists (present) or does not (!present), up to
// until, or until wake closes. It reports whether the key got there.
func (s *state) waitFor(ctx context.Context, key string, present bool, until time.Time, wake <-chan struct{}) bool {
	ctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
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

// acquireSyncLock takes the instance's lock or returns an error wrapping
// ErrSyncRunning that names the holder.
func (s *state) acquireSyncLock(ctx context.Context, instance string, v lockValue, ttl time.Duration) (*syncLock, error) {
	return s.acquireLock(ctx, syncLockKey(instance), instance, v, ttl)
}

func (s *state) acquireLock(ctx context.Context, key, instance string, v lockValue, ttl time.Duration) (*syncLock, error) {
	b, _ := json.Marshal(v)
	rev, err := s.kv.Create(ctx, key, b, jetstream.KeyTTL(ttl))
	if errors.Is(err, jetstream.ErrKeyExists) {
		var holder lockValue
		if e, gerr := s.kv.Get(ctx, key); gerr == nil {
			_ = json.Unmarshal(e.Value(), &holder)
		}
		return nil, fmt.Errorf("%w: worker %s runs job %s since %s", ErrSyncRunning, holder.Worker, holder.JobID, holder.Since.Format(time.RFC3339))
	}
	if err != nil {
		return nil, fmt.Errorf("take sync lock for %s: %w", instance, err)
	}
	l := &syncLock{s: s, key: key, ttl: ttl, rev: rev, stop: make(chan struct{}), done: make(chan struct{}), lost: make(chan struct{})}
	go l.refresh(b)
	return l, nil
}

func (l *syncLock) refresh(val []byte) {
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
				l.rev = rev
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

// Lost is closed if the lock expired and another worker took it.
func (l *syncLock) Lost() <-chan struct{} { return l.lost }

// release stops refreshing and deletes the lock if it is still ours.
func (l *syncLock) release(ctx context.Context) {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.s.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev))
}

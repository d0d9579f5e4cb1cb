// Package state owns the state bucket (m365_state): it is the only code that
// builds its keys or reads and writes them. Every key has the same shape,
//
//	<kind>.<pool>.<instance>.<rest>
//
// with the kind, the pool and the instance each a token at a fixed position,
// so that a NATS permission such as "$KV.m365_state.*.site-a.>" grants a
// customer site exactly its pool's keys, and a job id used by one instance
// can never touch another instance's keys. The kinds:
//
//	done.<pool>.<instance>.<job>          the job ledger: the job's final result is stored
//	snoozed.<pool>.<instance>.<job>       deliveries of the job that used no attempt
//	effect.<pool>.<instance>.<job>        what an action did or is about to do (for redeliveries)
//	lock.<pool>.<instance>.sync           the instance's exclusive lock (one sync round at a time)
//	lock.<pool>.<instance>.t.<target>     an action target's lock (one job per user or group)
//	sync.<pool>.<instance>                the instance's sync state (delta links, last round)
//	progress.<pool>.<instance>            a running round's progress
//	a.<pool>.<instance>.<kind>.<id>       one synced object's state (u, g, l)
//	miss.<pool>.<instance>.<job>          when the job first found its target missing
//	tick.<pool>.<instance>                the last scheduled tick a worker took (missed ticks)
//	workers.<pool>.<worker>               a live worker (no instance)
//
// Job ids and targets are any printable strings; they are base64url-encoded
// into one token. Callers hold a Scope, one (pool, instance)'s view of the
// bucket, and use its typed methods.
package state

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/roundtrip"
	"github.com/tevyra/m365-worker/publisher"
)

// Key kinds: the first token of every key.
const (
	kindLedger   = "done"
	kindSnooze   = "snoozed"
	kindEffect   = "effect"
	kindLock     = "lock"
	kindSync     = "sync"
	kindProgress = "progress"
	kindAsset    = "a"
	kindWorker   = "workers"
	kindMiss     = "miss"
	kindTick     = "tick"
)

// History is how many values of a key the bucket keeps: 2, not 1, although
// only the last is ever read. On a stream that keeps one message a subject,
// the server serves a deliver-last-per-subject consumer (a scan, a key
// listing, a watch) by walking the stream from its first message, matching
// each block's messages against the filter; with more than one kept, it
// starts from the per-subject index instead and reads only the filter's
// keys. A scan of one instance's states then costs that instance's keys,
// not the whole bucket's: at 10,000 tenants the walks were 40 % of the
// server's CPU (docs/BENCHMARKS.md). The older value kept costs storage
// only for keys written again (changed objects, locks), and is never
// returned: every read is of the last value, and no write carries a
// shorter expiry than the live value it replaces (a lock is renewed by its
// holder with its own expiry; the ledger's is the pool's setting), so an
// older value never outlives a newer one to show through.
const History = 2

// Store is the state bucket.
type Store struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	bucket string
	pub    *publisher.Publisher
	// ttl is how long ledger, snooze and effect keys live.
	ttl time.Duration
}

// DefaultTTL is how long a finished job's ledger entry, its give-back count
// and its effect record are kept: longer than the jobs stream keeps jobs.
const DefaultTTL = 8 * 24 * time.Hour

// Open opens the bucket (created by setup). ttl bounds the life of ledger,
// snooze and effect keys (DefaultTTL if zero).
func Open(ctx context.Context, js jetstream.JetStream, bucket string, ttl time.Duration) (*Store, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w (the operator's m365-worker setup creates the streams and buckets, or m365-worker run)", bucket, err)
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return &Store{js: js, kv: kv, bucket: bucket, pub: publisher.New(js, publisher.Config{Untraced: true}), ttl: ttl}, nil
}

// For returns one instance's view of the bucket.
func (s *Store) For(pool, instance string) *Scope {
	return &Scope{s: s, pool: pool, instance: instance}
}

// Scope is one (pool, instance)'s part of the bucket: every key it reads or
// writes starts with <kind>.<pool>.<instance>.
type Scope struct {
	s              *Store
	pool, instance string
}

// Pool and Instance name the scope.
func (sc *Scope) Pool() string     { return sc.pool }
func (sc *Scope) Instance() string { return sc.instance }

func (sc *Scope) key(kind string, rest ...string) string {
	k := kind + "." + sc.pool + "." + sc.instance
	for _, r := range rest {
		k += "." + r
	}
	return k
}

// token encodes any printable string (a job id, a target) as one key token.
func token(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// --- low-level access, for this package only -----------------------------

func notFound(err error) bool {
	return errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)
}

// get returns a key's value, or ok=false when it does not exist.
func (s *Store) get(ctx context.Context, key string) ([]byte, uint64, bool, error) {
	roundtrip.Add(ctx, 1)
	e, err := s.kv.Get(ctx, key)
	if notFound(err) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, err
	}
	return e.Value(), e.Revision(), true, nil
}

func (s *Store) getJSON(ctx context.Context, key string, v any) (bool, error) {
	b, _, ok, err := s.get(ctx, key)
	if err != nil || !ok {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("state %s is stored in a form this worker cannot read: %w", key, err)
	}
	return true, nil
}

func (s *Store) putJSON(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	roundtrip.Add(ctx, 1)
	_, err = s.kv.Put(ctx, key, b)
	return err
}

// subject is the subject a write to key is published on, as nats.go's KV
// does it: "$KV.<bucket>.<key>", behind the JetStream API prefix when js
// addresses another domain (a worker on a leaf node reaches the hub's
// buckets that way).
func (s *Store) subject(key string) string {
	subj := "$KV." + s.bucket + "." + key
	o := s.js.Options()
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API." + subj
	case o.APIPrefix != "" && o.APIPrefix != jetstream.DefaultAPIPrefix:
		return strings.TrimSuffix(o.APIPrefix, ".") + "." + subj
	}
	return subj
}

// putIf writes key with a compare-and-set: an update of revision rev when
// the key was found, a create otherwise; it fails if another write came
// first.
func (s *Store) putIf(ctx context.Context, key string, val []byte, rev uint64, found bool) error {
	var err error
	roundtrip.Add(ctx, 1)
	if found {
		_, err = s.kv.Update(ctx, key, val, rev)
	} else {
		_, err = s.kv.Create(ctx, key, val)
	}
	return err
}

// putTTL writes key with an expiry. If rev is not zero the write only
// succeeds while rev is still the key's last revision.
func (s *Store) putTTL(ctx context.Context, key string, val []byte, ttl time.Duration, rev uint64) (uint64, error) {
	m := nats.NewMsg(s.subject(key))
	m.Data = val
	opts := []jetstream.PublishOpt{jetstream.WithMsgTTL(ttl)}
	if rev != 0 {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(rev))
	}
	roundtrip.Add(ctx, 1)
	ack, err := s.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// createTTL creates key with an expiry unless it exists (jetstream.ErrKeyExists).
func (s *Store) createTTL(ctx context.Context, key string, val []byte, ttl time.Duration) (uint64, error) {
	roundtrip.Add(ctx, 1)
	return s.kv.Create(ctx, key, val, jetstream.KeyTTL(ttl))
}

// listKeys returns the keys of the state bucket matching filter.
func (s *Store) listKeys(ctx context.Context, filter string) ([]string, error) {
	return ListKeys(ctx, s.kv, filter)
}

// ListKeys returns the keys of a bucket matching filter (one NATS subject
// filter), none when there are none.
func ListKeys(ctx context.Context, kv jetstream.KeyValue, filter string) ([]string, error) {
	lister, err := kv.ListKeysFiltered(ctx, filter)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for k := range lister.Keys() {
		out = append(out, k)
	}
	return out, nil
}

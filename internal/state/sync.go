package state

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"

	"github.com/nats-io/nuid"

	"github.com/tevyra/m365-worker/internal/retry"
	"github.com/tevyra/m365-worker/publisher"
)

// SyncMeta reads the instance's sync state into v (the sync handler owns
// its shape); ok is false when the instance never synced.
func (sc *Scope) SyncMeta(ctx context.Context, v any) (bool, error) {
	return sc.s.getJSON(ctx, sc.key(kindSync), v)
}

// PutSyncMeta stores the instance's sync state. It is a round's last step:
// a write the server leaves unanswered (busy, electing a leader) is asked
// again by the publisher's retry rather than failing the round, which
// would then run again in full. Each call is its own message id, so a
// resent write is stored once and a later write of the same value is not
// taken for a duplicate of an earlier one.
func (sc *Scope) PutSyncMeta(ctx context.Context, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	key := sc.key(kindSync)
	_, err = sc.s.pub.Publish(ctx, publisher.Message{Subject: sc.s.subject(key), MsgID: "sync:" + key + ":" + nuid.Next(), Value: publisher.Encoded(b)})
	return err
}

// PutProgress stores a running round's progress.
func (sc *Scope) PutProgress(ctx context.Context, v any) error {
	return sc.s.putJSON(ctx, sc.key(kindProgress), v)
}

// DeleteProgress removes the progress record once the round ends.
func (sc *Scope) DeleteProgress(ctx context.Context) error {
	return sc.s.kv.Delete(ctx, sc.key(kindProgress))
}

// EachProgress calls f with every running round's progress record (of every
// pool and instance).
func (s *Store) EachProgress(ctx context.Context, f func(pool, instance string, raw []byte)) error {
	keys, err := s.listKeys(ctx, kindProgress+".*.*")
	if err != nil {
		return err
	}
	for _, k := range keys {
		b, _, ok, err := s.get(ctx, k)
		if err != nil {
			return err
		}
		if ok {
			parts := strings.Split(k, ".")
			f(parts[1], parts[2], b)
		}
	}
	return nil
}

// Asset kinds in the state.
const (
	AssetUser    = "u"
	AssetGroup   = "g"
	AssetLicense = "l"
)

func (sc *Scope) assetPrefix(kind string) string { return sc.key(kindAsset, kind) + "." }

// AssetState reads one synced object's stored state (nil, false if none).
func (sc *Scope) AssetState(ctx context.Context, kind, id string) ([]byte, bool, error) {
	b, _, ok, err := sc.s.get(ctx, sc.assetPrefix(kind)+id)
	return b, ok, err
}

// UpdateAssetState changes one object's stored state to f(old, ok) (no
// write when f returns nil) with a compare-and-set: when a round writes
// the object's state meanwhile, f runs again on what the round wrote. A
// post-action refresh uses it, so that its state never overwrites a
// round's newer one (an object counted twice in the indicators).
func (sc *Scope) UpdateAssetState(ctx context.Context, kind, id string, f func(old []byte, ok bool) []byte) error {
	key := sc.assetPrefix(kind) + id
	return retry.Do(ctx, retry.Quick, func() error {
		old, rev, ok, err := sc.s.get(ctx, key)
		if err != nil {
			return err
		}
		val := f(old, ok)
		if val == nil {
			return nil
		}
		return sc.s.putIf(ctx, key, val, rev, ok) // a concurrent write: read again
	})
}

// EachAssetID calls f with the id of every synced object of a kind, a
// batch at a time: a tenant's ids are never all held at once.
func (sc *Scope) EachAssetID(ctx context.Context, kind string, f func(id string)) error {
	prefix := sc.assetPrefix(kind)
	return sc.s.scan(ctx, prefix+"*", true, scanIDs, func(key string, _ []byte) { f(strings.TrimPrefix(key, prefix)) })
}

// EachAssetState calls f with the stored state of every object of a kind,
// a batch at a time.
func (sc *Scope) EachAssetState(ctx context.Context, kind string, f func(id string, raw []byte)) error {
	prefix := sc.assetPrefix(kind)
	batch := scanStates
	if kind == AssetGroup {
		batch = scanGroupStates
	}
	return sc.s.scan(ctx, prefix+"*", false, batch, func(key string, val []byte) { f(strings.TrimPrefix(key, prefix), val) })
}

// AssetOp is a write of one object's state: a put, or a delete when Value
// is nil.
type AssetOp struct {
	Kind, ID string
	Value    []byte
}

// WriteAssetStates stores ops: puts as pipelined publishes to the bucket's
// subjects (each deduplicated by dedup plus its key and value, so a resent
// write is stored once), deletes as purges. Of several ops on one object
// the last is what is stored (the purges go first and the puts after them,
// so an object put and then deleted in one batch must not be put). It
// returns once every write is stored.
func (sc *Scope) WriteAssetStates(ctx context.Context, ops []AssetOp, dedup string) error {
	last := make(map[string]int, len(ops))
	for i, op := range ops {
		last[op.Kind+"."+op.ID] = i
	}
	var puts []publisher.Message
	for i, op := range ops {
		if last[op.Kind+"."+op.ID] != i {
			continue // a later op on the same object replaces it
		}
		key := sc.assetPrefix(op.Kind) + op.ID
		if op.Value == nil {
			if err := sc.s.kv.Purge(ctx, key); err != nil && !notFound(err) {
				return err
			}
			continue
		}
		puts = append(puts, publisher.Message{Subject: sc.s.subject(key), MsgID: dedup + ":" + key + ":" + digest(op.Value),
			Value: publisher.Encoded(op.Value)})
	}
	return sc.s.pub.PublishAll(ctx, puts)
}

// digest is a short hash of a value, for dedup ids.
func digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:12])
}

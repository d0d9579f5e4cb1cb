package state

import (
	"context"
	"strings"
)

// MoveInstance moves an instance's lasting state (its sync state and the
// state of its synced objects) from one pool's part of the bucket to
// another's: an instance moved to another pool resumes where it was, and
// its next full round still reports what disappeared meanwhile. Ledger,
// effect and lock keys are short-lived and stay where they are.
func (s *Store) MoveInstance(ctx context.Context, from, to, instance string) error {
	src, dst := s.For(from, instance), s.For(to, instance)
	return s.move(ctx, src.key(kindSync), dst.key(kindSync), src.key(kindAsset)+".>", func(k string) string {
		return dst.key(kindAsset) + strings.TrimPrefix(k, src.key(kindAsset))
	})
}

// MigrateLegacy moves an instance's lasting state from the layout before
// pools were part of every key (sync.<instance>, a.<instance>.<kind>.<id>)
// to its pool's part of the bucket. It is idempotent.
func (s *Store) MigrateLegacy(ctx context.Context, pool, instance string) error {
	dst := s.For(pool, instance)
	old := kindAsset + "." + instance
	return s.move(ctx, kindSync+"."+instance, dst.key(kindSync), old+".*.*", func(k string) string {
		return dst.key(kindAsset) + strings.TrimPrefix(k, old)
	})
}

// move copies key from to to (if it exists), then every key matching
// filter to rename(key), deleting each original once copied.
func (s *Store) move(ctx context.Context, from, to, filter string, rename func(string) string) error {
	if err := s.copyKey(ctx, from, to); err != nil {
		return err
	}
	keys, err := s.listKeys(ctx, filter)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := s.copyKey(ctx, k, rename(k)); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) copyKey(ctx context.Context, from, to string) error {
	b, _, ok, err := s.get(ctx, from)
	if err != nil || !ok {
		return err
	}
	if _, err := s.kv.Put(ctx, to, b); err != nil {
		return err
	}
	return s.kv.Purge(ctx, from)
}

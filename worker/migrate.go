package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/state"
)

// migrateLegacy moves records stored before pools were part of every key:
// instance records under <id> go to <pool>.<id>, and each one's sync state
// and object state to its pool's part of the state bucket. It runs with
// setup and is idempotent; nothing is lost if it is interrupted (a record
// is deleted from its old key only once its state moved).
func migrateLegacy(ctx context.Context, js jetstream.JetStream, t Topology) error {
	kv, err := js.KeyValue(ctx, t.InstancesBucket())
	if err != nil {
		return err
	}
	lister, err := kv.ListKeysFiltered(ctx, "*")
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var legacy []string
	for k := range lister.Keys() {
		legacy = append(legacy, k)
	}
	if len(legacy) == 0 {
		return nil
	}
	st, err := state.Open(ctx, js, t.StateBucket(), 0)
	if err != nil {
		return err
	}
	for _, id := range legacy {
		if err := migrateInstance(ctx, kv, st, id); err != nil {
			return fmt.Errorf("migrate instance %s to the pool-scoped layout: %w", id, err)
		}
	}
	return nil
}

func migrateInstance(ctx context.Context, kv jetstream.KeyValue, st *state.Store, id string) error {
	e, err := kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil
	}
	if err != nil {
		return err
	}
	var in Instance
	if err := json.Unmarshal(e.Value(), &in); err != nil {
		return fmt.Errorf("unreadable record: %w", err)
	}
	in = in.WithDefaults()
	if _, err := kv.Create(ctx, instanceKey(in.Pool, id), e.Value()); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return err
	}
	if err := st.MigrateLegacy(ctx, in.Pool, id); err != nil {
		return err
	}
	return kv.Purge(ctx, id)
}

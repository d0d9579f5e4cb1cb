package state_test

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/worker/workertest"
)

func open(t *testing.T) (*state.Store, jetstream.KeyValue) {
	t.Helper()
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	st, err := state.Open(context.Background(), js, "m365_state", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), "m365_state")
	if err != nil {
		t.Fatal(err)
	}
	return st, kv
}

func keys(t *testing.T, kv jetstream.KeyValue) []string {
	t.Helper()
	l, err := kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for k := range l.Keys() {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Every key starts with <kind>.<pool>.<instance>, and one instance's job id
// never marks another instance's (or another pool's) job as done.
func TestKeysAreScopedToPoolAndInstance(t *testing.T) {
	st, kv := open(t)
	ctx := context.Background()
	acme, globex, siteAcme := st.For("default", "acme"), st.For("default", "globex"), st.For("site-a", "acme")
	if err := acme.MarkDone(ctx, "job-1", state.LedgerEntry{Status: "succeeded"}); err != nil {
		t.Fatal(err)
	}
	for _, sc := range []*state.Scope{globex, siteAcme} {
		if done, err := sc.Done(ctx, "job-1"); err != nil || done {
			t.Fatalf("%s/%s sees acme's job as done (%v)", sc.Pool(), sc.Instance(), err)
		}
	}
	if done, _ := acme.Done(ctx, "job-1"); !done {
		t.Fatal("acme's own job is not done")
	}
	_ = acme.AddSnooze(ctx, "job-2")
	_ = acme.PutEffect(ctx, "job-2", map[string]string{"object_id": "x"})
	_ = acme.PutSyncMeta(ctx, map[string]string{"user_delta_link": "l"})
	_ = acme.PutProgress(ctx, map[string]string{"instance": "acme"})
	_ = acme.WriteAssetStates(ctx, []state.AssetOp{{Kind: state.AssetUser, ID: "u1", Value: []byte(`{"h":"1"}`)}}, "sync-1")
	l, err := acme.AcquireTarget(ctx, "User:Adele@contoso.com", state.Holder{Worker: "w"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	stop := st.Announce("default", "w1")
	defer stop()
	want := []string{
		"a.default.acme.u.u1",
		"done.default.acme.am9iLTE",
		"effect.default.acme.am9iLTI",
		"lock.default.acme.t.dXNlcjphZGVsZUBjb250b3NvLmNvbQ",
		"progress.default.acme",
		"snoozed.default.acme.am9iLTI",
		"sync.default.acme",
		"workers.default.w1",
	}
	if got := keys(t, kv); len(got) != len(want) {
		t.Fatalf("keys %q, want %q", got, want)
	} else {
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("keys %q, want %q", got, want)
			}
		}
	}
	// The target's lock ignores case: a second job on the same user waits.
	if _, err := acme.AcquireTarget(ctx, "user:adele@contoso.com", state.Holder{Worker: "v"}, 5*time.Second); !errors.Is(err, state.ErrHeld) {
		t.Fatalf("second holder: %v", err)
	}
	if _, err := globex.AcquireTarget(ctx, "user:adele@contoso.com", state.Holder{Worker: "v"}, 5*time.Second); err != nil {
		t.Fatalf("another instance's target: %v", err)
	}
}

// Give-backs counted from many goroutines at once add up (compare-and-set
// retried through internal/retry).
func TestSnoozesAddUpUnderContention(t *testing.T) {
	st, _ := open(t)
	sc := st.For("default", "acme")
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() { defer wg.Done(); _ = sc.AddSnooze(context.Background(), "job") }()
	}
	wg.Wait()
	if n, err := sc.Snoozes(context.Background(), "job"); err != nil || n != 6 {
		t.Fatalf("%d give-backs (%v), want 6", n, err)
	}
}

// An instance moved to another pool keeps its sync state and object state.
func TestMoveInstance(t *testing.T) {
	st, kv := open(t)
	ctx := context.Background()
	from := st.For("default", "acme")
	_ = from.PutSyncMeta(ctx, map[string]string{"user_delta_link": "l"})
	_ = from.WriteAssetStates(ctx, []state.AssetOp{{Kind: state.AssetGroup, ID: "g1", Value: []byte(`{"h":"1"}`)}}, "s")
	if err := st.MoveInstance(ctx, "default", "site-a", "acme"); err != nil {
		t.Fatal(err)
	}
	got := keys(t, kv)
	if len(got) != 2 || got[0] != "a.site-a.acme.g.g1" || got[1] != "sync.site-a.acme" {
		t.Fatalf("keys after the move %q", got)
	}
	var m map[string]string
	if ok, err := st.For("site-a", "acme").SyncMeta(ctx, &m); !ok || err != nil || m["user_delta_link"] != "l" {
		t.Fatalf("moved sync state %v %v %v", m, ok, err)
	}
}

// State written before pools were part of the keys moves to the pool's part.
func TestMigrateLegacy(t *testing.T) {
	st, kv := open(t)
	ctx := context.Background()
	for k, v := range map[string]string{"sync.acme": `{"user_delta_link":"l"}`, "a.acme.u.u1": `{"h":"1"}`, "a.acme.g.g1": `{"h":"2"}`, "sync.globex": `{}`} {
		if _, err := kv.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.MigrateLegacy(ctx, "default", "acme"); err != nil {
		t.Fatal(err)
	}
	want := []string{"a.default.acme.g.g1", "a.default.acme.u.u1", "sync.default.acme", "sync.globex"}
	got := keys(t, kv)
	if len(got) != len(want) {
		t.Fatalf("keys %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("keys %q, want %q", got, want)
		}
	}
	if err := st.MigrateLegacy(ctx, "default", "acme"); err != nil {
		t.Fatalf("a second migration: %v", err)
	}
}

// A lock taken over by another holder (its TTL ran out while its holder was
// cut off) reports it: Lost closes and Check refuses.
func TestLockTakenOverIsLost(t *testing.T) {
	st, kv := open(t)
	ctx := context.Background()
	sc := st.For("default", "acme")
	l, err := sc.AcquireTarget(ctx, "user:adele@contoso.com", state.Holder{Worker: "a"}, 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	if err := l.Check(); err != nil {
		t.Fatalf("a fresh lock: %v", err)
	}
	key := "lock.default.acme.t.dXNlcjphZGVsZUBjb250b3NvLmNvbQ"
	if err := kv.Purge(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, key, []byte(`{"worker":"b"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("the takeover went unnoticed")
	}
	if err := l.Check(); !errors.Is(err, state.ErrLockLost) {
		t.Fatalf("check after the takeover: %v", err)
	}
}

// A post-action refresh that read an object's state before a round wrote
// it does not overwrite the round's state: its update runs again on what
// the round wrote (else an object the round counted is marked uncounted,
// and counted twice by the next round).
func TestUpdateAssetStateDoesNotOverwriteANewerWrite(t *testing.T) {
	st, kv := open(t)
	sc := st.For("default", "acme")
	ctx := context.Background()
	calls := 0
	err := sc.UpdateAssetState(ctx, state.AssetUser, "u1", func(old []byte, ok bool) []byte {
		calls++
		if calls == 1 {
			// The round writes the object's state between the refresh's
			// read and its write.
			if err := sc.WriteAssetStates(ctx, []state.AssetOp{{Kind: state.AssetUser, ID: "u1", Value: []byte("round")}}, "round-1"); err != nil {
				t.Fatal(err)
			}
		}
		return []byte("refresh-after-" + string(old))
	})
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "a.default.acme.u.u1")
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Value()) != "refresh-after-round" || calls != 2 {
		t.Fatalf("stored %q after %d calls; want the refresh applied to the round's state", e.Value(), calls)
	}
}

// The last closed tick only moves forward: a redelivered (or older) tick
// leaves it where it is.
func TestLastTickOnlyMovesForward(t *testing.T) {
	st, _ := open(t)
	ctx := context.Background()
	sc := st.For("default", "acme")
	if _, ok, err := sc.LastTick(ctx); ok || err != nil {
		t.Fatalf("a tick before any was closed: %v %v", ok, err)
	}
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tk := range []state.LastTick{{Seq: 10, Next: at}, {Seq: 7, Next: at.Add(-time.Hour)}, {Seq: 10, Next: at.Add(time.Hour)}} {
		if err := sc.AdvanceTick(ctx, tk); err != nil {
			t.Fatal(err)
		}
	}
	got, ok, err := sc.LastTick(ctx)
	if err != nil || !ok || got.Seq != 10 || !got.Next.Equal(at) {
		t.Fatalf("last tick %+v %v %v, want seq 10 at %s", got, ok, err, at)
	}
	if err := sc.AdvanceTick(ctx, state.LastTick{Seq: 11, Next: at.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := sc.LastTick(ctx); got.Seq != 11 {
		t.Fatalf("last tick %+v, want seq 11", got)
	}
}

package state_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// A scan of an instance's states reads each stored key once, with its last
// value, across more keys than one batch; skips deleted and purged keys and
// other instances' keys; and leaves out what is written while it runs (a
// key seen twice would be counted twice in the indicators).
func TestScanReadsEachStoredKeyOnce(t *testing.T) {
	st, kv := open(t)
	ctx := context.Background()
	acme := st.For("default", "acme")
	const n = 1234
	var ops []state.AssetOp
	for i := range n {
		ops = append(ops, state.AssetOp{Kind: state.AssetUser, ID: fmt.Sprintf("u%04d", i), Value: []byte("v1")})
	}
	if err := acme.WriteAssetStates(ctx, ops, "first"); err != nil {
		t.Fatal(err)
	}
	// A second value for every tenth, a delete and a purge, another
	// instance's user and another kind.
	for i := 0; i < n; i += 10 {
		ops[i/10] = state.AssetOp{Kind: state.AssetUser, ID: fmt.Sprintf("u%04d", i), Value: []byte("v2")}
	}
	if err := acme.WriteAssetStates(ctx, ops[:(n+9)/10], "second"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "a.default.acme.u.u0001"); err != nil {
		t.Fatal(err)
	}
	if err := acme.WriteAssetStates(ctx, []state.AssetOp{{Kind: state.AssetUser, ID: "u0002"}}, "purge"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "a.default.globex.u.other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "a.default.acme.g.group", []byte("x")); err != nil {
		t.Fatal(err)
	}

	seen := map[string]string{}
	err := acme.EachAssetState(ctx, state.AssetUser, func(id string, raw []byte) {
		if _, twice := seen[id]; twice {
			t.Errorf("%s seen twice", id)
		}
		seen[id] = string(raw)
		if len(seen) == 1 {
			// Written while the scan runs: an update of a key not read
			// yet, and a new key.
			_, _ = kv.Put(ctx, "a.default.acme.u.u1200", []byte("v3"))
			_, _ = kv.Put(ctx, "a.default.acme.u.new", []byte("v3"))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := seen["new"]; ok {
		t.Error("a key written during the scan was read")
	}
	for i := range n {
		id := fmt.Sprintf("u%04d", i)
		want := "v1"
		switch {
		case i == 1 || i == 2:
			want = "" // deleted, purged
		case i == 1200:
			// Written during the scan: read as it was stored when the
			// scan began, or not at all (its value then replaced), never
			// with the new value.
			if seen[id] == "v3" {
				t.Errorf("%s read with the value written during the scan", id)
			}
			want = seen[id]
		case i%10 == 0:
			want = "v2"
		}
		if seen[id] != want {
			t.Fatalf("%s: %q, want %q", id, seen[id], want)
		}
	}
	if len(seen) != n-2 && len(seen) != n-3 {
		t.Errorf("%d keys scanned, want %d", len(seen), n-2)
	}
	var ids int
	if err := acme.EachAssetID(ctx, state.AssetUser, func(string) { ids++ }); err != nil {
		t.Fatal(err)
	}
	if ids != n-1 { // and "new" now
		t.Errorf("EachAssetID: %d ids, want %d", ids, n-1)
	}
}

// A scan reads its instance's keys from the server's per-subject index,
// not by walking the bucket from its first message: the consumer it reads
// through starts at the instance's first key. (On a bucket that keeps one
// value per key the server starts such a consumer at the stream's first
// message and matches every message stored since against the filter; at
// 10,000 tenants those walks were most of the server's CPU.)
func TestScanStartsAtItsInstancesKeys(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	st, err := state.Open(ctx, js, "m365_state", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var other, mine []state.AssetOp
	for i := range 300 {
		other = append(other, state.AssetOp{Kind: state.AssetUser, ID: fmt.Sprintf("o%03d", i), Value: []byte("x")})
	}
	for i := range 10 {
		mine = append(mine, state.AssetOp{Kind: state.AssetUser, ID: fmt.Sprintf("m%03d", i), Value: []byte("x")})
	}
	if err := st.For("default", "globex").WriteAssetStates(ctx, other, "o"); err != nil {
		t.Fatal(err)
	}
	if err := st.For("default", "acme").WriteAssetStates(ctx, mine, "m"); err != nil {
		t.Fatal(err)
	}
	if err := st.For("default", "globex").WriteAssetStates(ctx, other[:1], "o2"); err != nil {
		t.Fatal(err)
	}
	// The consumer a scan of acme creates, as it creates it.
	cons, err := js.CreateConsumer(ctx, "KV_m365_state", jetstream.ConsumerConfig{FilterSubject: "$KV.m365_state.a.default.acme.u.*",
		DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy, AckPolicy: jetstream.AckNonePolicy, HeadersOnly: true, MemoryStorage: true})
	if err != nil {
		t.Fatal(err)
	}
	info := cons.CachedInfo()
	if info.NumPending != 10 {
		t.Fatalf("%d pending, want acme's 10 keys", info.NumPending)
	}
	if info.Delivered.Stream < 300 {
		t.Errorf("the scan's consumer starts at stream sequence %d, before acme's first key (301): it walks the bucket", info.Delivered.Stream+1)
	}
}

// Of several writes of one object in a batch the last is what is stored:
// an object a round puts and then deletes in one batch stays deleted (the
// purges used to run before the pipelined puts, and the put brought it
// back: the chaos test counted two deleted users in the indicators).
func TestWriteAssetStatesKeepsTheLastOpOfAnObject(t *testing.T) {
	st, _ := open(t)
	ctx := context.Background()
	acme := st.For("default", "acme")
	if err := acme.WriteAssetStates(ctx, []state.AssetOp{{Kind: state.AssetUser, ID: "gone", Value: []byte("v0")}}, "first"); err != nil {
		t.Fatal(err)
	}
	ops := []state.AssetOp{
		{Kind: state.AssetUser, ID: "gone", Value: []byte("v1")},
		{Kind: state.AssetUser, ID: "back", Value: nil},
		{Kind: state.AssetUser, ID: "gone", Value: nil},
		{Kind: state.AssetUser, ID: "back", Value: []byte("v2")},
		{Kind: state.AssetGroup, ID: "gone", Value: []byte("g")},
	}
	if err := acme.WriteAssetStates(ctx, ops, "second"); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := acme.AssetState(ctx, state.AssetUser, "gone"); err != nil || ok {
		t.Errorf("the user put and then deleted in one batch is stored (%v)", err)
	}
	if v, ok, err := acme.AssetState(ctx, state.AssetUser, "back"); err != nil || !ok || string(v) != "v2" {
		t.Errorf("the user deleted and then put in one batch: %q %v %v", v, ok, err)
	}
	if _, ok, _ := acme.AssetState(ctx, state.AssetGroup, "gone"); !ok {
		t.Error("a group of the same id is another object")
	}
}

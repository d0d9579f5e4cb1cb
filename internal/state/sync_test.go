package state_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// A round's last step, storing the instance's sync state, survives a
// write the server never answers (a busy server, a leader election):
// a round that failed there ran again in full (docs/BENCHMARKS.md, 10,000
// tenants). The write is asked again, and stored once.
func TestPutSyncMetaSurvivesALostWrite(t *testing.T) {
	ctx, sc, refused := scopeLosingFirstWrite(t, "sync")
	if err := sc.PutSyncMeta(ctx, map[string]string{"user_delta_link": "l1"}); err != nil {
		t.Fatalf("after one lost write: %v", err)
	}
	if refused.Load() < 2 {
		t.Fatalf("%d writes of the sync state: the lost one was not asked again", refused.Load())
	}
	var got map[string]string
	if ok, err := sc.SyncMeta(ctx, &got); err != nil || !ok || got["user_delta_link"] != "l1" {
		t.Fatalf("stored %v (%v, %v)", got, ok, err)
	}
	// A later state replaces it (each write is its own message, never taken
	// for a duplicate of an earlier one with the same value).
	for _, link := range []string{"l2", "l1"} {
		if err := sc.PutSyncMeta(ctx, map[string]string{"user_delta_link": link}); err != nil {
			t.Fatal(err)
		}
		if _, err := sc.SyncMeta(ctx, &got); err != nil || got["user_delta_link"] != link {
			t.Fatalf("stored %v after writing %s (%v)", got, link, err)
		}
	}
}

// A job's ledger entry survives a write the server never answers (a
// restart between the job's result and its entry): a job whose result is
// stored and whose entry is not held up every later job of its target for
// good (TestChaos, seed 589539). The write is asked again; a resent write
// that finds the entry its first try stored is done.
func TestMarkDoneSurvivesALostWrite(t *testing.T) {
	ctx, sc, tries := scopeLosingFirstWrite(t, "done")
	if err := sc.MarkDone(ctx, "job-1", state.LedgerEntry{Status: "succeeded", Worker: "w1"}); err != nil {
		t.Fatalf("after one lost write: %v", err)
	}
	if tries.Load() < 2 {
		t.Fatalf("%d writes of the entry: the lost one was not asked again", tries.Load())
	}
	if done, err := sc.Done(ctx, "job-1"); err != nil || !done {
		t.Fatalf("job-1 done %v (%v) after its entry was written again", done, err)
	}
	// The entry exists: a second record (another delivery's) is no error.
	if err := sc.MarkDone(ctx, "job-1", state.LedgerEntry{Status: "failed", Worker: "w2"}); err != nil {
		t.Fatalf("a second record: %v", err)
	}
}

// scopeLosingFirstWrite is acme's state scope reaching JetStream through a
// relay that loses the first write of a key of kind ("sync", "done");
// everything else goes on to the server. writes counts that kind's writes.
func scopeLosingFirstWrite(t *testing.T, kind string) (ctx context.Context, sc *state.Scope, writes *atomic.Int64) {
	t.Helper()
	srv := workertest.Start(t)
	nc, _ := srv.Connect(t)
	writes = new(atomic.Int64)
	lossy := workertest.Lossy(t, nc, func(rest string) bool {
		return strings.HasPrefix(rest, "$KV.") && strings.Contains(rest, "."+kind+".") && writes.Add(1) == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	st, err := state.Open(ctx, lossy, "m365_state", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, st.For("default", "acme"), writes
}

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
	srv := workertest.Start(t)
	nc, _ := srv.Connect(t)
	// The store reaches JetStream through a relay that loses the first
	// write of a sync state; everything else goes on to the server.
	var refused atomic.Int64
	lossy := workertest.Lossy(t, nc, func(rest string) bool {
		return strings.HasPrefix(rest, "$KV.") && strings.Contains(rest, ".sync.") && refused.Add(1) == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := state.Open(ctx, lossy, "m365_state", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sc := st.For("default", "acme")
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

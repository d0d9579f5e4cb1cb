package handlers

import (
	"context"
	"errors"
	"maps"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
)

// A round's parallel reads run at most n at once; the first to fail
// cancels the others, nothing starts after it, and its error is the
// round's; a read that panics, or never runs because the round ended,
// fails the same way.
func TestFanOutBoundsAndStopsAtTheFirstError(t *testing.T) {
	f := newFanOut(context.Background(), 2, nil)
	var running, peak atomic.Int64
	for range 10 {
		f.do(func(context.Context) error {
			n := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			return nil
		})
	}
	if err := f.wait(); err != nil || peak.Load() > 2 {
		t.Fatalf("wait: %v; %d reads ran at once, the bound is 2", err, peak.Load())
	}

	f = newFanOut(context.Background(), 2, nil)
	aRunning, aCancelled := make(chan struct{}), make(chan error, 1)
	f.do(func(ctx context.Context) error {
		close(aRunning)
		<-ctx.Done()
		aCancelled <- ctx.Err()
		return ctx.Err()
	})
	<-aRunning
	boom := errors.New("segment x: boom")
	f.do(func(context.Context) error { return boom })
	if err := f.wait(); !errors.Is(err, boom) {
		t.Fatalf("wait returned %v, want the first error", err)
	}
	if err := <-aCancelled; !errors.Is(err, context.Canceled) {
		t.Errorf("the read still running saw %v, want its context cancelled", err)
	}
	var late atomic.Bool
	f.do(func(context.Context) error { late.Store(true); return nil })
	_ = f.wait()
	if late.Load() {
		t.Error("a read started after the failure ran")
	}

	// A read the round's end kept from running is an error, not a
	// silent gap.
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	g := newFanOut(ended, 1, nil)
	var skipped atomic.Bool
	g.do(func(context.Context) error { skipped.Store(true); return nil })
	if err := g.wait(); !errors.Is(err, context.Canceled) || skipped.Load() {
		t.Errorf("a read whose context had ended: ran %v, wait returned %v; want it not run and context.Canceled", skipped.Load(), err)
	}

	p := newFanOut(context.Background(), 1, nil)
	p.do(func(context.Context) error { panic("bad page") })
	if err := p.wait(); err == nil {
		t.Fatal("a read that panicked gave no error")
	}
}

// Rounds that run at once share the worker's read slots: their reads
// together stay within them, every read still runs, a read that waits for
// a slot is counted with its wait (/metrics), and a read waiting for a
// slot when its round ends fails instead of being skipped.
func TestFanOutsShareTheWorkersReadSlots(t *testing.T) {
	shared := newReadSlots(3)
	var running, peak, ran atomic.Int64
	release := make(chan struct{})
	rounds := []*fanOut{newFanOut(context.Background(), 2, shared), newFanOut(context.Background(), 2, shared), newFanOut(context.Background(), 2, shared)}
	for _, f := range rounds {
		for range 5 {
			f.do(func(context.Context) error {
				n := running.Add(1)
				defer running.Add(-1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				<-release
				ran.Add(1)
				return nil
			})
		}
	}
	// Every round holds its own two turns, and the worker's three slots
	// are all taken: three reads wait for a slot.
	for deadline := time.Now().Add(10 * time.Second); ; {
		held := 0
		for _, f := range rounds {
			held += len(f.sem)
		}
		if held == 6 && running.Load() >= 3 || running.Load() > 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rounds hold %d turns, %d reads run", held, running.Load())
		}
		time.Sleep(time.Millisecond)
	}
	// The three waiting reads are counted before any slot is given back.
	for deadline := time.Now().Add(10 * time.Second); shared.waits.Load() < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d reads counted waiting for a slot, want 3", shared.waits.Load())
		}
	}
	if n := len(shared.ch); n != 3 {
		t.Fatalf("%d slots in use, want 3", n)
	}
	time.Sleep(5 * time.Millisecond) // the waiting reads wait a while, no matter how long
	close(release)
	for i, f := range rounds {
		if err := f.wait(); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
	}
	if peak.Load() > 3 || ran.Load() != 15 {
		t.Fatalf("%d reads ran at once (the worker's slots are 3), %d of 15 ran", peak.Load(), ran.Load())
	}
	if waits, waited := shared.waits.Load(), time.Duration(shared.waited.Load()); waits < 3 || waits > 12 || waited < 5*time.Millisecond || len(shared.ch) != 0 {
		t.Fatalf("after the rounds: %d waits (3 to 12), %v waited (at least 5ms), %d slots in use (0)", waits, waited, len(shared.ch))
	}

	// Every slot is held by another round; this round ends while its read
	// waits for one.
	for range cap(shared.ch) {
		shared.ch <- struct{}{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := newFanOut(ctx, 2, shared)
	var skipped atomic.Bool
	f.do(func(context.Context) error { skipped.Store(true); return nil })
	cancel()
	if err := f.wait(); !errors.Is(err, context.Canceled) || skipped.Load() {
		t.Fatalf("a read waiting for a worker slot when its round ended: ran %v, wait returned %v", skipped.Load(), err)
	}
}

// The worker's read slots are SyncConfig.ParallelReads (the worker's
// --sync-reads), DefaultParallelReads when unset; /metrics shows them.
func TestSyncerReadSlots(t *testing.T) {
	graph := graphclient.NewPool(graphclient.PoolConfig{})
	for _, c := range []struct{ set, want int }{{0, DefaultParallelReads}, {-3, DefaultParallelReads}, {48, 48}} {
		s, err := NewSyncer(context.Background(), nil, SyncConfig{Graph: graph, ParallelReads: c.set})
		if err != nil {
			t.Fatal(err)
		}
		if cap(s.reads.ch) != c.want {
			t.Errorf("ParallelReads %d: %d read slots, want %d", c.set, cap(s.reads.ch), c.want)
		}
		// What /metrics shows of them.
		s.reads.ch <- struct{}{}
		s.reads.waits.Add(2)
		s.reads.waited.Add(int64(1500 * time.Millisecond))
		got := map[string]float64{}
		for _, m := range s.ReadSlotMetrics() {
			got[m.Name] = m.Value
		}
		want := map[string]float64{"m365_sync_read_slots": float64(c.want), "m365_sync_read_slots_in_use": 1,
			"m365_sync_read_slot_waits_total": 2, "m365_sync_read_slot_wait_seconds_total": 1.5}
		if !maps.Equal(got, want) {
			t.Errorf("ParallelReads %d: metrics %v, want %v", c.set, got, want)
		}
	}
}

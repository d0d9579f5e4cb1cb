package handlers

import (
	"context"
	"errors"
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
// together stay within them, every read still runs, and a read waiting for
// a slot when its round ends fails instead of being skipped.
func TestFanOutsShareTheWorkersReadSlots(t *testing.T) {
	shared := make(chan struct{}, 3)
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
	close(release)
	for i, f := range rounds {
		if err := f.wait(); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
	}
	if peak.Load() > 3 || ran.Load() != 15 {
		t.Fatalf("%d reads ran at once (the worker's slots are 3), %d of 15 ran", peak.Load(), ran.Load())
	}

	// Every slot is held by another round; this round ends while its read
	// waits for one.
	for range cap(shared) {
		shared <- struct{}{}
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
// --sync-reads), DefaultParallelReads when unset.
func TestSyncerReadSlots(t *testing.T) {
	graph := graphclient.NewPool(graphclient.PoolConfig{})
	for _, c := range []struct{ set, want int }{{0, DefaultParallelReads}, {-3, DefaultParallelReads}, {48, 48}} {
		s, err := NewSyncer(context.Background(), nil, SyncConfig{Graph: graph, ParallelReads: c.set})
		if err != nil {
			t.Fatal(err)
		}
		if cap(s.reads) != c.want {
			t.Errorf("ParallelReads %d: %d read slots, want %d", c.set, cap(s.reads), c.want)
		}
	}
}

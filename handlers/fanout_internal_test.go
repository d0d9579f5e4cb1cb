package handlers

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// A round's parallel reads run at most n at once; the first to fail
// cancels the others, nothing starts after it, and its error is the
// round's; a read that panics, or never runs because the round ended,
// fails the same way.
func TestFanOutBoundsAndStopsAtTheFirstError(t *testing.T) {
	f := newFanOut(context.Background(), 2)
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

	f = newFanOut(context.Background(), 2)
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
	g := newFanOut(ended, 1)
	var skipped atomic.Bool
	g.do(func(context.Context) error { skipped.Store(true); return nil })
	if err := g.wait(); !errors.Is(err, context.Canceled) || skipped.Load() {
		t.Errorf("a read whose context had ended: ran %v, wait returned %v; want it not run and context.Canceled", skipped.Load(), err)
	}

	p := newFanOut(context.Background(), 1)
	p.do(func(context.Context) error { panic("bad page") })
	if err := p.wait(); err == nil {
		t.Fatal("a read that panicked gave no error")
	}
}

package handlers

import (
	"errors"
	"sync/atomic"
	"testing"
)

// A round's batches are stored in the background one after the other: the
// next starts only once the one before has ended, and a failed store stops
// the line, its error coming back from the next start or from wait.
func TestOneInFlightKeepsOrderAndStopsOnError(t *testing.T) {
	var o oneInFlight
	var running, overlap atomic.Int64
	var order []int
	release := make(chan struct{})
	step := func(i int, err error, block bool) func() error {
		return func() error {
			if running.Add(1) > 1 {
				overlap.Add(1)
			}
			defer running.Add(-1)
			if block {
				<-release
			}
			order = append(order, i) // one at a time: no race
			return err
		}
	}
	if err := o.start(step(1, nil, true)); err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- o.start(step(2, nil, false)) }() // waits for 1
	close(release)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	boom := errors.New("store sync state: boom")
	if err := o.start(step(3, boom, false)); err != nil {
		t.Fatal(err)
	}
	if err := o.start(step(4, nil, false)); !errors.Is(err, boom) {
		t.Fatalf("the start after a failed store returned %v, want its error", err)
	}
	if err := o.wait(); err != nil {
		t.Fatalf("wait after the error was returned: %v", err)
	}
	if overlap.Load() != 0 || len(order) != 3 || order[0] != 1 || order[1] != 2 || order[2] != 3 {
		t.Fatalf("ran %v with %d overlaps; want 1, 2, 3 one at a time and 4 never", order, overlap.Load())
	}
	// A store that panics is an error, not a crash.
	if err := o.start(func() error { panic("bad batch") }); err != nil {
		t.Fatal(err)
	}
	if err := o.wait(); err == nil {
		t.Fatal("a panicking store reported no error")
	}
}

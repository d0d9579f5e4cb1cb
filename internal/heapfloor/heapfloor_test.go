package heapfloor

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// collect runs a collection and waits until the floor has looked at it.
func collect(t *testing.T, f *Floor) {
	t.Helper()
	n := f.Adjusted.Load()
	for deadline := time.Now().Add(30 * time.Second); f.Adjusted.Load() == n; {
		runtime.GC() // the finalizer runs after the collection that freed its sentinel
		if time.Now().After(deadline) {
			t.Fatal("no collection reached the floor")
		}
	}
}

// A small live heap may grow by the floor before the next collection (GOGC
// raised to 100 × floor / live); a live heap larger than the floor keeps
// the process's GOGC; Stop gives GOGC back; a floor of 0, or GOGC off,
// changes nothing.
func TestFloorRaisesGOGCWhileTheLiveHeapIsSmall(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	const floor = 256 << 20
	f := Start(floor)
	defer f.Stop()
	collect(t, f)
	// This test binary keeps a few MiB live: GOGC in the thousands.
	if p := Percent(); p < 1000 {
		t.Fatalf("GOGC %d with a small live heap and a floor of 256 MiB", p)
	}

	big := make([]byte, 2*floor) // live, larger than the floor
	collect(t, f)
	if p := Percent(); p != 100 {
		t.Fatalf("GOGC %d with a live heap of 512 MiB, want the process's 100", p)
	}
	runtime.KeepAlive(big)
	big = nil
	collect(t, f)
	if p := Percent(); p < 1000 {
		t.Fatalf("GOGC %d once the large heap is gone", p)
	}

	f.Stop()
	n := f.Adjusted.Load()
	runtime.GC()
	runtime.GC()
	if p := Percent(); p != 100 || f.Adjusted.Load() != n {
		t.Fatalf("after Stop: GOGC %d, %d more adjustments", p, f.Adjusted.Load()-n)
	}

	if Start(0) != nil {
		t.Error("a floor of 0 started")
	}
	debug.SetGCPercent(-1)
	if Start(floor) != nil {
		t.Error("a floor started with GOGC off")
	}
	debug.SetGCPercent(200)
	g := Start(1) // a floor below any live heap: the process's own GOGC
	collect(t, g)
	if p := Percent(); p != 200 {
		t.Errorf("GOGC %d with a floor of one byte, want the process's 200", p)
	}
	g.Stop()
}

// Package heapfloor lets a process's heap grow by at least a floor between
// two garbage collections.
//
// Go collects when the heap has grown by GOGC % of what the last collection
// left live: a worker that mostly runs actions keeps little live (its jobs'
// garbage is most of what it allocates) and so collects every few
// megabytes, and its collector took about an eighth of its CPU under load.
// A floor on the growth (the heap may grow by max(live × GOGC %, floor))
// costs such a worker at most the floor in memory, and a worker whose live
// heap is larger than the floor (a large tenant's round) nothing: its GOGC
// stays as it was. GOMEMLIMIT still bounds the heap.
package heapfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// maxPercent bounds the GOGC a floor sets (a nearly empty heap).
const maxPercent = 10_000

// Floor keeps GOGC, after every collection, at max(base, 100 × floor /
// live heap), base being the process's GOGC when Start was called.
type Floor struct {
	floor   uint64
	base    int
	mu      sync.Mutex // Stop against a collection's adjust
	stopped atomic.Bool
	// Adjusted counts the collections after which GOGC was looked at.
	Adjusted atomic.Int64
	sample   []metrics.Sample
}

// Start keeps the heap's growth between collections at least floor bytes.
// It does nothing (and returns nil) when floor is 0 or GOGC is off.
func Start(floor uint64) *Floor {
	base := Percent()
	if floor == 0 || base < 0 {
		return nil
	}
	f := &Floor{floor: floor, base: base, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	f.arm()
	return f
}

// Stop gives GOGC back its base value; later collections leave it alone.
func (f *Floor) Stop() {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.stopped.Swap(true) {
		debug.SetGCPercent(f.base)
	}
}

// Percent is the process's GOGC now (-1: off).
func Percent() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// sentinel is collected by every collection that follows its arming: its
// finalizer is the hook that runs once per collection.
type sentinel struct{ _ *byte } // a pointer: never a tiny allocation, whose finalizer may not run

func (f *Floor) arm() {
	runtime.SetFinalizer(&sentinel{}, func(*sentinel) {
		if f.stopped.Load() {
			return
		}
		f.adjust()
		f.arm()
	})
}

// adjust sets GOGC for the heap the last collection left live.
func (f *Floor) adjust() {
	metrics.Read(f.sample)
	live := f.sample[0].Value.Uint64()
	pct := f.base
	if live == 0 || f.floor/live >= maxPercent/100 {
		pct = max(pct, maxPercent)
	} else if p := int(f.floor * 100 / live); p > pct {
		pct = p
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.stopped.Load() {
		debug.SetGCPercent(pct)
	}
	f.Adjusted.Add(1)
}

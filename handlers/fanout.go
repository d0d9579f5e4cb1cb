package handlers

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tevyra/m365-worker/worker"
)

// fanOut runs a round's parallel reads (the users' segments, the groups'
// chunks of ids): at most n at once, each in its own goroutine with panics
// made errors; the first error cancels the others' context and is what
// wait returns. A read that never ran because the context ended is an
// error too, so a nil from wait means every read ran to its end.
//
// A read also holds one of the worker's read slots (shared, nil: none)
// while it runs: each read holds a page or two in memory, and the slots
// bound them across every round the worker runs at once.
type fanOut struct {
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	shared *readSlots
	wg     sync.WaitGroup
	mu     sync.Mutex
	first  error
}

// readSlots are a worker's read slots (SyncConfig.ParallelReads), shared
// by all its rounds, and what /metrics shows of them: how many are taken,
// and how often and how long reads found every one taken (large tenants'
// full rounds starting together; raise --sync-reads if memory allows).
type readSlots struct {
	ch     chan struct{}
	waits  atomic.Int64 // reads that found every slot taken
	waited atomic.Int64 // nanoseconds they waited, in all
}

func newReadSlots(n int) *readSlots { return &readSlots{ch: make(chan struct{}, n)} }

func newFanOut(ctx context.Context, n int, shared *readSlots) *fanOut {
	ctx, cancel := context.WithCancel(ctx)
	return &fanOut{ctx: ctx, cancel: cancel, sem: make(chan struct{}, n), shared: shared}
}

// do starts f without blocking the caller; f waits for its turn, and does
// not run once an earlier one has failed.
func (f *fanOut) do(fn func(ctx context.Context) error) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if !f.take(f.sem) {
			return
		}
		defer func() { <-f.sem }()
		if f.shared != nil {
			if !f.takeShared() {
				return
			}
			defer func() { <-f.shared.ch }()
		}
		if err := f.ctx.Err(); err != nil {
			f.fail(err) // one failed (or the round ended) meanwhile
			return
		}
		if err := worker.Safely(func() error { return fn(f.ctx) }); err != nil {
			f.fail(err)
		}
	}()
}

// take waits for a place in slots; false, with the failure recorded, when
// the reads ended first.
func (f *fanOut) take(slots chan struct{}) bool {
	select {
	case slots <- struct{}{}:
		return true
	case <-f.ctx.Done():
		f.fail(f.ctx.Err())
		return false
	}
}

// takeShared takes one of the worker's read slots, counting the wait when
// every one is taken.
func (f *fanOut) takeShared() bool {
	select {
	case f.shared.ch <- struct{}{}:
		return true
	default:
	}
	f.shared.waits.Add(1)
	t0 := time.Now()
	defer func() { f.shared.waited.Add(int64(time.Since(t0))) }()
	return f.take(f.shared.ch)
}

// fail records err unless an earlier error is already recorded, and cancels
// the reads still running.
func (f *fanOut) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.first == nil {
		f.first = err
		f.cancel()
	}
}

// wait waits for everything started and returns the first error.
func (f *fanOut) wait() error {
	f.wg.Wait()
	f.cancel()
	return f.first
}

// ReadSlotMetrics are the worker's read slots for /metrics.
func (s *Syncer) ReadSlotMetrics() []worker.Metric {
	r := s.reads
	return []worker.Metric{
		{Name: "m365_sync_read_slots", Help: "The worker's read slots: parallel reads its sync rounds may run at once, together (--sync-reads).",
			Type: "gauge", Value: float64(cap(r.ch))},
		{Name: "m365_sync_read_slots_in_use", Help: "Read slots taken by running reads.", Type: "gauge", Value: float64(len(r.ch))},
		{Name: "m365_sync_read_slot_waits_total", Help: "Parallel reads that found every read slot taken and waited for one.",
			Type: "counter", Value: float64(r.waits.Load())},
		{Name: "m365_sync_read_slot_wait_seconds_total", Help: "Time parallel reads waited for a read slot, in all.",
			Type: "counter", Value: time.Duration(r.waited.Load()).Seconds()},
	}
}

package handlers

import (
	"context"
	"sync"

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
	shared chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	first  error
}

func newFanOut(ctx context.Context, n int, shared chan struct{}) *fanOut {
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
			if !f.take(f.shared) {
				return
			}
			defer func() { <-f.shared }()
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

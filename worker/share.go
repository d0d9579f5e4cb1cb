package worker

import (
	"fmt"
	"time"
)

// Fair service across instances (the share stage). Each instance is sure of
// Config.InstanceShare of a worker's slots. Past its share an instance may
// borrow a free slot, as long as a share's worth stays free and borrowed
// slots stay within half the worker: a lone busy tenant uses most of the
// worker, and a tenant that arrives behind a burst (or beside a tenant whose
// Graph throttles it) finds a slot at once.
//
// A job that can neither take its share nor borrow waits here, parked (it
// gives its run slot up, heartbeating), and goes on the moment a slot it
// may take frees: waiting in the worker is work-conserving, where a
// give-back would leave slots idle until the job comes back. Only when its
// instance already fills half of what the worker holds is it given back
// (no attempt used), so that the worker keeps fetching the other
// instances' jobs queued behind it.

// shareWaiter is a job parked for a slot: told on ch whether the slot it
// was given is borrowed.
type shareWaiter struct {
	inst string
	ch   chan bool
}

// mayTake reports whether a job of inst may take a slot now, and whether
// it would borrow it. Called with shareMu held.
func (w *Worker) mayTake(inst string) (ok, borrow bool) {
	share := w.cfg.InstanceShare
	borrow = w.share[inst] >= share
	if borrow && (w.cfg.Concurrency-w.shared-1 < share || w.borrowed >= w.cfg.Concurrency/2) {
		return false, borrow
	}
	return true, borrow
}

// takeSlot counts a slot taken by a job of inst. Called with shareMu held.
func (w *Worker) takeSlot(inst string, borrow bool) {
	w.share[inst]++
	w.shared++
	if borrow {
		w.borrowed++
	}
}

func (w *Worker) takeShare(d *delivery) error {
	inst := d.addr.Instance
	w.shareMu.Lock()
	if w.share == nil {
		w.share = map[string]int{}
	}
	ok, borrow := w.mayTake(inst)
	if ok {
		w.takeSlot(inst, borrow)
		w.shareMu.Unlock()
	} else {
		if w.holding[inst] > cap(w.gate.held)/2 {
			w.shareMu.Unlock()
			return RetryAfter(holdGiveBackDelay, fmt.Errorf("instance %s has its share of this worker's slots (%d), none is free to borrow, and it holds half the jobs this worker can hold", inst, w.cfg.InstanceShare))
		}
		sw := shareWaiter{inst: inst, ch: make(chan bool, 1)}
		w.shareQueue = append(w.shareQueue, sw)
		w.shareMu.Unlock()
		var err error
		if borrow, err = w.waitForSlot(d, sw); err != nil {
			return err
		}
	}
	d.onDone(func() { w.releaseSlot(inst, borrow) })
	return nil
}

// waitForSlot waits, parked and heartbeating, until releaseSlot gives sw a
// slot, or the job's context ends (the job is then given back).
func (w *Worker) waitForSlot(d *delivery, sw shareWaiter) (borrow bool, err error) {
	span := waitSpan(d.ctx, "wait for a slot of the instance's share")
	defer span.End()
	w.gate.park()
	defer w.gate.unpark()
	t := time.NewTicker(w.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case borrow = <-sw.ch:
			return borrow, nil
		case <-t.C:
			_ = d.msg.InProgress()
		case <-d.ctx.Done():
			w.shareMu.Lock()
			for i, q := range w.shareQueue {
				if q.ch == sw.ch {
					w.shareQueue = append(w.shareQueue[:i], w.shareQueue[i+1:]...)
					w.shareMu.Unlock()
					return false, d.ctx.Err()
				}
			}
			w.shareMu.Unlock()
			// Given a slot meanwhile: hand it on.
			w.releaseSlot(sw.inst, <-sw.ch)
			return false, d.ctx.Err()
		}
	}
}

// releaseSlot gives a finished job's slot back and hands free slots to the
// jobs waiting for one, first come first served among those that may take
// one.
func (w *Worker) releaseSlot(inst string, borrow bool) {
	w.shareMu.Lock()
	defer w.shareMu.Unlock()
	w.shared--
	if borrow {
		w.borrowed--
	}
	if w.share[inst]--; w.share[inst] == 0 {
		delete(w.share, inst)
	}
	kept := w.shareQueue[:0]
	for _, q := range w.shareQueue {
		if ok, b := w.mayTake(q.inst); ok {
			w.takeSlot(q.inst, b)
			q.ch <- b
			continue
		}
		kept = append(kept, q)
	}
	w.shareQueue = kept
}

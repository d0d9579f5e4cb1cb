package handlers

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"

	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/publisher"
	"github.com/tevyra/m365-worker/worker"
)

// assetRef names one synced object in the instance's state.
type assetRef struct{ kind, id string }

// batcher publishes asset deltas of one type in bounded, numbered batches,
// storing each change's state only once its batch is stored.
type batcher struct {
	r       *round
	typ     string
	mode    string
	batch   int
	changes []jobs.AssetChange
	states  []stateOp
	size    int
	// stored runs the stores of the batches, one in flight at most.
	stored oneInFlight
}

// oneInFlight runs functions in the background one after the other: each
// starts once the one before has ended, and an error stops the line (it is
// returned by the next start or wait, and what was not started is not).
type oneInFlight struct {
	inflight chan error // nil: none
}

// start runs f once the function in flight (if any) has ended well.
func (o *oneInFlight) start(f func() error) error {
	if err := o.wait(); err != nil {
		return err
	}
	done := make(chan error, 1)
	o.inflight = done
	go func() { done <- worker.Safely(f) }()
	return nil
}

// wait waits until the function in flight, if any, has ended, and returns
// its error.
func (o *oneInFlight) wait() error {
	if o.inflight == nil {
		return nil
	}
	err := <-o.inflight
	o.inflight = nil
	return err
}

// stateOp is a state write to do once a batch is stored: a put, or a
// delete when val is nil.
type stateOp struct {
	ref assetRef
	val []byte
}

func (r *round) batcher(typ string) *batcher {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &batcher{r: r, typ: typ, mode: r.mode}
}

func (b *batcher) add(ch jobs.AssetChange, stores ...stateOp) error {
	n := len(ch.Asset) + len(ch.ID) + 64
	if len(b.changes) > 0 && (len(b.changes) >= b.r.s.cfg.BatchChanges || b.size+n > b.r.s.cfg.BatchBytes) {
		if err := b.flush(false); err != nil {
			return err
		}
	}
	b.changes = append(b.changes, ch)
	b.states = append(b.states, stores...)
	b.size += n
	b.r.mu.Lock()
	c := b.r.counts[b.typ]
	switch ch.Op {
	case jobs.OpUpsert:
		c.Upserts++
	case jobs.OpDelete:
		c.Deletes++
	}
	b.r.counts[b.typ] = c
	b.r.mu.Unlock()
	return nil
}

// keep stores states with the next batch, publishing nothing for them.
func (b *batcher) keep(stores ...stateOp) { b.states = append(b.states, stores...) }

// flush publishes the batch, then stores its changes' state. The message id
// names the instance, the run's sync id (unique per run) and the batch.
//
// A batch that is not the last is stored while the round goes on reading
// and filling the next one: one batch at most is in flight, and it is done
// before the next starts, so batches and their states are stored in order.
// Its error comes back from the next add, flush or wait. The last batch is
// stored before flush returns.
func (b *batcher) flush(last bool) error {
	if err := b.wait(); err != nil {
		return err
	}
	b.batch++
	d := &jobs.AssetDelta{SchemaVersion: jobs.SchemaVersion, Instance: b.r.instance, SyncID: b.r.syncID, Type: b.typ, Mode: b.mode,
		Batch: b.batch, Last: last, Changes: b.changes}
	if d.Changes == nil {
		d.Changes = []jobs.AssetChange{}
	}
	msgID := fmt.Sprintf("assets:%s:%s:%s:%d", b.r.instance, b.r.syncID, b.typ, b.batch)
	states := b.states
	b.changes, b.states, b.size = nil, nil, 0
	store := func() error {
		if _, err := b.r.s.pub.Publish(b.r.ctx, publisher.Message{Subject: b.r.s.subjs.Assets(b.r.instance, b.typ), MsgID: msgID, Value: publisher.Encoded(d.AppendJSON(nil))}); err != nil {
			return err
		}
		if err := b.r.storeState(states); err != nil {
			return fmt.Errorf("store sync state: %w", err)
		}
		b.r.job.Progress()
		return nil
	}
	if last {
		return store()
	}
	return b.stored.start(store)
}

// wait waits until the batch in flight, if any, is stored, and returns how
// that went. Every part of a round waits before it ends, so no write of a
// round outlives it.
func (b *batcher) wait() error { return b.stored.wait() }

// flushPending stores what the batcher holds, if anything, as a batch of
// the round (not its last).
func (b *batcher) flushPending() error {
	if len(b.changes) == 0 && len(b.states) == 0 {
		return nil
	}
	return b.flush(false)
}

func putState(ref assetRef, v any) stateOp {
	b, _ := json.Marshal(v)
	return stateOp{ref: ref, val: b}
}

func deleteState(ref assetRef) stateOp { return stateOp{ref: ref} }

// storeState writes a batch's state.
func (r *round) storeState(ops []stateOp) error {
	writes := make([]state.AssetOp, len(ops))
	for i, op := range ops {
		writes[i] = state.AssetOp{Kind: op.ref.kind, ID: op.ref.id, Value: op.val}
	}
	return r.state.WriteAssetStates(context.WithoutCancel(r.ctx), writes, r.syncID)
}

// getState reads an object's stored state into v (read ahead by prefetch,
// or now).
func (r *round) getState(ref assetRef, v any) (bool, error) {
	r.preMu.Lock()
	raw, cached := r.pre[ref]
	r.preMu.Unlock()
	if !cached {
		var ok bool
		var err error
		if raw, ok, err = r.state.AssetState(r.ctx, ref.kind, ref.id); err != nil || !ok {
			return false, err
		}
	}
	if raw == nil {
		return false, nil
	}
	return true, json.Unmarshal(raw, v)
}

// forget lets go of a state read ahead, once read.
func (r *round) forget(ref assetRef) {
	r.preMu.Lock()
	delete(r.pre, ref)
	r.preMu.Unlock()
}

// prefetch reads the stored state of refs, 16 at a time, for the page about
// to be applied: an incremental round's pages then cost one round trip to
// the bucket instead of one per object. What it read is what was stored
// when the round began (a round reads each object's state before writing
// it).
func (r *round) prefetch(refs []assetRef) error {
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for _, ref := range refs {
		r.preMu.Lock()
		_, cached := r.pre[ref]
		r.preMu.Unlock()
		if cached {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			err := worker.Safely(func() error {
				raw, _, err := r.state.AssetState(r.ctx, ref.kind, ref.id)
				if err != nil {
					return err
				}
				r.preMu.Lock()
				if r.pre == nil {
					r.pre = map[assetRef][]byte{}
				}
				r.pre[ref] = raw
				r.preMu.Unlock()
				return nil
			})
			if err != nil {
				mu.Lock()
				first = cmp.Or(first, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

// deleteMissing deletes what a full round did not see.
func (r *round) deleteMissing(b *batcher, kind string, seen func(id string) bool) error {
	if err := b.wait(); err != nil {
		return err
	}
	var ids []string
	err := r.state.EachAssetID(r.ctx, kind, func(id string) {
		if !seen(id) {
			ids = append(ids, id)
		}
	})
	if err != nil {
		return err
	}
	sort.Strings(ids)
	for _, id := range ids {
		ops := []stateOp{deleteState(assetRef{kind, id})}
		if kind == state.AssetGroup {
			var old groupState
			if _, err := r.getState(assetRef{kind, id}, &old); err != nil {
				return err
			}
			ops = groupDeleteOps(id, old)
		}
		if err := b.add(jobs.AssetChange{Op: jobs.OpDelete, ID: id, Reason: jobs.ReasonMissingAfterFullSync}, ops...); err != nil {
			return err
		}
	}
	return nil
}

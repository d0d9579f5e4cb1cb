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
	// line stores the batches in the background, in order.
	line storeLine
}

// lineDepth is how many batches a storeLine holds besides the one it is
// storing: the round reads on while JetStream stores (at 300,000 users,
// one batch in flight kept the readers waiting on the stores for 18 of
// the users' 32 seconds).
const lineDepth = 4

// storeLine stores a round's batches in the background, one at a time and
// in the order they were started: each batch is published, then its state
// written, before the next is published. So a batch's state is written
// only once the batch is stored, an object in two batches ends with its
// last state, and a round cut off anywhere has published at most one batch
// whose state it has not written (published again by its rerun). The
// first error stops the line: what is queued is dropped, and the error is
// returned by every later start and wait. start blocks only while
// lineDepth batches wait.
type storeLine struct {
	in     chan lineBatch // waiting to be stored
	done   chan struct{}  // closed when the line's goroutine ends
	mu     sync.Mutex
	err    error
	failed chan struct{} // closed with the first error
}

// lineBatch is what storing one batch takes: its publication, then its
// state's write.
type lineBatch struct{ publish, write func() error }

// start queues a batch, starting the line's goroutine if none runs.
func (l *storeLine) start(b lineBatch) error {
	if err := l.failure(); err != nil {
		return err
	}
	if l.in == nil {
		l.open()
	}
	select {
	case l.in <- b:
		return nil
	case <-l.failed:
		return l.failure()
	}
}

func (l *storeLine) open() {
	if l.failed == nil {
		l.failed = make(chan struct{})
	}
	in, done := make(chan lineBatch, lineDepth), make(chan struct{})
	l.in, l.done = in, done
	go func() {
		defer close(done)
		for b := range in {
			if l.failure() == nil && l.fail(worker.Safely(b.publish)) == nil {
				_ = l.fail(worker.Safely(b.write))
			}
		}
	}()
}

// fail records err, the line's first error, and returns it.
func (l *storeLine) fail(err error) error {
	if err == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
		close(l.failed)
	}
	return err
}

func (l *storeLine) failure() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// wait waits until every batch started is stored (or dropped after an
// error), and returns the line's error. The line starts again on the next
// start.
func (l *storeLine) wait() error {
	if l.in != nil {
		close(l.in)
		<-l.done
		l.in = nil
	}
	return l.failure()
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

// flush queues the batch on the batcher's line: published, then its
// changes' state stored. The message id names the instance, the run's sync
// id (unique per run) and the batch. A batch that is not the last is stored
// while the round goes on reading and filling the next ones (storeLine);
// a store's error comes back from a later add, flush or wait. The last
// batch, and every one before it, is stored before flush returns.
func (b *batcher) flush(last bool) error {
	b.batch++
	d := &jobs.AssetDelta{SchemaVersion: jobs.SchemaVersion, Instance: b.r.instance, SyncID: b.r.syncID, Type: b.typ, Mode: b.mode,
		Batch: b.batch, Last: last, Changes: b.changes}
	if d.Changes == nil {
		d.Changes = []jobs.AssetChange{}
	}
	msgID := fmt.Sprintf("assets:%s:%s:%s:%d", b.r.instance, b.r.syncID, b.typ, b.batch)
	states := b.states
	b.changes, b.states, b.size = nil, nil, 0
	err := b.line.start(lineBatch{
		publish: func() error {
			_, err := b.r.s.pub.Publish(b.r.ctx, publisher.Message{Subject: b.r.s.subjs.Assets(b.r.instance, b.typ), MsgID: msgID, Value: publisher.Encoded(d.AppendJSON(nil))})
			return err
		},
		write: func() error {
			if err := b.r.storeState(states); err != nil {
				return fmt.Errorf("store sync state: %w", err)
			}
			b.r.job.Progress()
			return nil
		},
	})
	if err != nil || !last {
		return err
	}
	return b.wait()
}

// wait waits until every batch queued is stored, and returns how that
// went. Every part of a round waits before it ends, so no write of a round
// outlives it.
func (b *batcher) wait() error { return b.line.wait() }

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
	raw, err := r.rawState(ref)
	if err != nil || raw == nil {
		return false, err
	}
	return true, json.Unmarshal(raw, v)
}

// rawState is an object's stored state as stored (read ahead by prefetch,
// or now); nil when none is.
func (r *round) rawState(ref assetRef) ([]byte, error) {
	r.preMu.Lock()
	raw, cached := r.pre[ref]
	r.preMu.Unlock()
	if cached {
		return raw, nil
	}
	raw, ok, err := r.state.AssetState(r.ctx, ref.kind, ref.id)
	if err != nil || !ok {
		return nil, err
	}
	return raw, nil
}

// getGroupState reads a group's stored state into st and its member ids
// (its record's and its member chunks') into set (sync_codec.go).
func (r *round) getGroupState(id string, st *groupState, set *memberList) (bool, error) {
	raw, err := r.rawState(assetRef{state.AssetGroup, id})
	if err != nil || raw == nil {
		return false, err
	}
	members, err := decodeGroupState(raw, st)
	if err != nil {
		return false, fmt.Errorf("stored state of group %s: %w", id, err)
	}
	for n := 0; ; n++ {
		if err := set.addStored(&r.ids, members); err != nil {
			return false, fmt.Errorf("stored members of group %s: %w", id, err)
		}
		if n >= st.MemberChunks {
			return true, nil
		}
		if members, err = r.rawState(memberChunkRef(id, n)); err != nil {
			return false, err
		}
	}
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

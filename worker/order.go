package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/roundtrip"
	"github.com/tevyra/m365-worker/internal/state"

	"github.com/tevyra/m365-worker/jobs"
)

// Jobs of one target take effect in the order they were published, across
// workers. Within a worker, jobs of a target take turns by stream sequence
// (turns), so a job redelivered after a give-back goes before later ones the
// worker already holds. Across workers, a job runs only under its target's lock,
// and only once no earlier job of the same target is still unfinished: every
// job at or below the consumer's ack floor is settled; between the floor and
// this job's own sequence, the instance's action jobs are read back from the
// stream and any of the same target without a stored result holds this one
// back. The window is small (jobs in flight plus jobs given back), and the
// targets of the messages read are cached by sequence.

// turnWait bounds how long a job waits in its slot for its target's turn
// before it is given back (the job it waits for may itself be waiting for a
// slot somewhere).
const turnWait = 2 * time.Second

// takeTurn waits, up to turnWait, until the job's target is free and no
// earlier job of it is unfinished, and returns the target's lock. A nil lock
// comes with the reason to give the job back for now; an error means the
// lock could not be read at all.
func (w *Worker) takeTurn(d *delivery, target string) (*state.Lock, string, error) {
	ctx, sc, seq := d.ctx, d.scope, d.meta.Sequence.Stream
	until := time.Now().Add(turnWait)
	key := d.parsed.target
	for {
		lock, err := sc.AcquireTarget(ctx, target, state.Holder{Worker: w.cfg.ID, JobID: d.jobID, Since: d.started}, w.cfg.TargetLockTTL)
		if errors.Is(err, state.ErrHeld) {
			if !w.parked(func() bool { return sc.WaitTargetFree(ctx, target, until) }) {
				return nil, "another job for " + target + " is running", nil
			}
			continue
		}
		if err != nil {
			return nil, "", err
		}
		earlier, err := w.earlierUnfinished(ctx, sc, d.addr.Pool, key, seq)
		if err == nil && earlier == "" {
			return lock, "", nil
		}
		lock.Release(context.WithoutCancel(ctx))
		if err != nil {
			return nil, "cannot check for earlier jobs of " + target + ": " + err.Error(), nil
		}
		if w.turns.earlierWaiting(key, seq) {
			// The earlier job is here, behind this one (it came back after
			// a give-back): let it go first.
			w.turns.yield(w.gate, key, seq)
			until = time.Now().Add(turnWait)
			continue
		}
		d.log.Debug("worker: an earlier job of the same target is unfinished; waiting for it", "earlier_job_id", earlier)
		overtaken := w.turns.overtaken(key)
		if !w.parked(func() bool { return sc.WaitDone(ctx, earlier, until, overtaken) }) && !w.turns.earlierWaiting(key, seq) {
			return nil, "earlier job " + earlier + " for " + target + " is unfinished", nil
		}
	}
}

// parked runs wait without holding a run slot.
func (w *Worker) parked(wait func() bool) bool {
	if w.gate != nil {
		w.gate.park()
		defer w.gate.unpark()
	}
	return wait()
}

// earlierCache remembers the target key and job id of stream sequences:
// those this worker fetched (saw), and those it read back. A burst of one
// tenant's jobs then checks its earlier jobs in memory, not with a read of
// the stream per earlier job per job, and a sequence missing from it is read
// back once however many jobs wait on it (inflight).
type earlierCache struct {
	mu       sync.Mutex
	bySeq    map[seqKey]seqJob
	inflight map[seqKey]chan struct{}
	floor    uint64
	floorAt  time.Time
}

// seqKey is a stream sequence as seen through one instance's action
// subjects: a sequence holding another instance's job reads as empty.
type seqKey struct {
	instance string
	seq      uint64
}

type seqJob struct {
	target string // "<instance>/<target>" or ""
	id     string
}

const earlierCacheMax = 8192

func (c *earlierCache) get(k seqKey) (seqJob, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sj, ok := c.bySeq[k]
	return sj, ok
}

func (c *earlierCache) put(k seqKey, sj seqJob) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bySeq == nil || len(c.bySeq) >= earlierCacheMax {
		c.bySeq = map[seqKey]seqJob{}
	}
	c.bySeq[k] = sj
}

// saw records a job this worker (of pool) fetched, as a read back would find
// it, from the envelope the fetch loop parsed.
func (c *earlierCache) saw(pool string, msg jetstream.Msg, pj parsedMsg, seq uint64) {
	if pj.addrErr != nil || pj.addr.Pool != pool || seq == 0 {
		return
	}
	sj := seqJob{}
	if pj.err == nil && pj.addr.Action != jobs.ActionSync {
		sj = seqJobFor(pj.job, pj.params, msg.Headers())
	}
	c.put(seqKey{pj.addr.Instance, seq}, sj)
}

// claim makes the caller the one to read k back (mine), or returns what to
// wait on while another caller does.
func (c *earlierCache) claim(k seqKey) (wait <-chan struct{}, mine bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch, ok := c.inflight[k]; ok {
		return ch, false
	}
	if c.inflight == nil {
		c.inflight = map[seqKey]chan struct{}{}
	}
	c.inflight[k] = make(chan struct{})
	return nil, true
}

// unclaim ends the caller's read back of k.
func (c *earlierCache) unclaim(k seqKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.inflight[k])
	delete(c.inflight, k)
}

// ackFloor returns the consumer's ack floor (stream sequence), refreshed at
// most every 100ms: a stale floor is only lower, so more is read, never less.
func (w *Worker) ackFloor(ctx context.Context) (uint64, error) {
	c := &w.earlier
	c.mu.Lock()
	if time.Since(c.floorAt) < 100*time.Millisecond {
		f := c.floor
		c.mu.Unlock()
		return f, nil
	}
	c.mu.Unlock()
	roundtrip.Add(ctx, 1)
	info, err := w.consumerInfo(ctx)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.floor, c.floorAt = info.AckFloor.Stream, time.Now()
	c.mu.Unlock()
	return info.AckFloor.Stream, nil
}

// earlierUnfinished returns the id of a job of the same target published
// before the job at seq that has no final result yet ("" if none).
func (w *Worker) earlierUnfinished(ctx context.Context, sc *state.Scope, pool, target string, seq uint64) (string, error) {
	instance := sc.Instance()
	floor, err := w.ackFloor(ctx)
	if err != nil {
		return "", fmt.Errorf("read the consumer's ack floor: %w", err)
	}
	if floor+1 >= seq {
		return "", nil
	}
	subject := w.cfg.Subjects.ActionJob(pool, instance, "*")
	for next := floor + 1; next < seq; {
		k := seqKey{instance, next}
		sj, ok := w.earlier.get(k)
		if !ok {
			if wait, mine := w.earlier.claim(k); !mine {
				select {
				case <-wait:
					continue // read back by another job (or not: then by this one)
				case <-ctx.Done():
					return "", ctx.Err()
				}
			}
			roundtrip.Add(ctx, 1)
			m, err := w.jobsStream.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
			var found seqJob
			if err == nil {
				found = seqJobOf(m)
				// Remember every sequence skipped over as holding no
				// action job of this instance, and the one found (also
				// when it is this job or a later one: the jobs waiting
				// on k read it from here).
				for s := next; s < m.Sequence && m.Sequence-next < 1024; s++ {
					w.earlier.put(seqKey{instance, s}, seqJob{})
				}
				w.earlier.put(seqKey{instance, m.Sequence}, found)
			}
			w.earlier.unclaim(k)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return "", nil
			}
			if err != nil {
				return "", fmt.Errorf("read job %d back: %w", next, err)
			}
			if m.Sequence >= seq {
				return "", nil
			}
			sj, next = found, m.Sequence
		}
		if sj.target == target && sj.id != "" {
			done, err := sc.Done(ctx, sj.id)
			if err != nil {
				return "", err
			}
			if !done {
				return sj.id, nil
			}
		}
		next++
	}
	return "", nil
}

func seqJobOf(m *jetstream.RawStreamMsg) seqJob {
	j, p, err := jobs.ParseJob(m.Data)
	if err != nil {
		return seqJob{}
	}
	return seqJobFor(j, p, m.Header)
}

// seqJobFor is seqJobOf of a job already parsed.
func seqJobFor(j *jobs.Job, p jobs.Params, h nats.Header) seqJob {
	if j == nil || j.Action == jobs.ActionSync || p.Target() == "" {
		return seqJob{}
	}
	if h.Get(headerScheduler) != "" {
		return seqJob{} // schedules only produce sync jobs
	}
	id := j.ID
	if id == "" || len(id) > 128 {
		return seqJob{}
	}
	return seqJob{target: j.Instance + "/" + strings.ToLower(p.Target()), id: id}
}

// streamSeq is a message's stream sequence (0 if it has no metadata).
func streamSeq(msg jetstream.Msg) uint64 {
	if meta, err := msg.Metadata(); err == nil {
		return meta.Sequence.Stream
	}
	return 0
}

// turns lets the jobs of one target in this worker run one at a time, lowest
// stream sequence first.
type turns struct {
	mu sync.Mutex
	by map[string]*targetTurns
}

type targetTurns struct {
	running uint64 // sequence of the job whose turn it is; 0 if none
	waiting []turnWaiter
	// overtaken is closed when a lower sequence than running arrives.
	overtaken chan struct{}
}

type turnWaiter struct {
	seq uint64
	ch  chan struct{}
}

// wait returns when it is seq's turn on key, parked meanwhile if there is
// room.
func (t *turns) wait(g *gate, key string, seq uint64) {
	if ch := t.join(key, seq); ch != nil {
		g.wait(ch)
	}
}

// join queues seq for its turn on key and returns a channel closed when the
// turn comes, or nil when it is seq's turn now. The fetch loop joins each
// job as it is fetched, so a worker's jobs line up in fetch order whatever
// order their goroutines start in.
func (t *turns) join(key string, seq uint64) <-chan struct{} {
	t.mu.Lock()
	if t.by == nil {
		t.by = map[string]*targetTurns{}
	}
	tt := t.by[key]
	if tt == nil {
		tt = &targetTurns{}
		t.by[key] = tt
	}
	if tt.running == 0 {
		tt.running, tt.overtaken = seq, make(chan struct{})
		t.mu.Unlock()
		return nil
	}
	if seq < tt.running {
		select {
		case <-tt.overtaken:
		default:
			close(tt.overtaken)
		}
	}
	ch := make(chan struct{})
	i, _ := slices.BinarySearchFunc(tt.waiting, seq, func(w turnWaiter, s uint64) int { return cmp.Compare(w.seq, s) })
	tt.waiting = slices.Insert(tt.waiting, i, turnWaiter{seq, ch})
	t.mu.Unlock()
	return ch
}

// first reports whether seq would be the first of key's jobs in this
// worker: none is held, or seq is lower than all of them.
func (t *turns) first(key string, seq uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	tt := t.by[key]
	if tt == nil {
		return true
	}
	low := tt.running
	if len(tt.waiting) > 0 {
		low = min(low, tt.waiting[0].seq)
	}
	return seq < low
}

// done ends seq's turn on key and hands it to the lowest waiting sequence.
func (t *turns) done(key string, seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tt := t.by[key]
	if tt == nil || tt.running != seq {
		return
	}
	if len(tt.waiting) == 0 {
		delete(t.by, key)
		return
	}
	next := tt.waiting[0]
	tt.waiting = tt.waiting[1:]
	tt.running, tt.overtaken = next.seq, make(chan struct{})
	close(next.ch)
}

// overtaken returns a channel closed when a job of key with a lower
// sequence than the running one arrives in this worker.
func (t *turns) overtaken(key string) <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tt := t.by[key]; tt != nil {
		return tt.overtaken
	}
	return nil
}

// earlierWaiting reports whether a job of key with a lower sequence than seq
// waits in this worker.
func (t *turns) earlierWaiting(key string, seq uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	tt := t.by[key]
	return tt != nil && len(tt.waiting) > 0 && tt.waiting[0].seq < seq
}

// yield hands seq's turn on key to the lower sequence waiting and waits for
// it to come back.
func (t *turns) yield(g *gate, key string, seq uint64) {
	t.done(key, seq)
	t.wait(g, key, seq)
}

// gate bounds the jobs a worker handles at once (run slots) and the jobs it
// holds (4 × Concurrency, at most 1,000). A job waiting for its target's
// turn parks: it gives its run slot up, so jobs of other targets run
// meanwhile, and takes one again before it goes on. Parked jobs never hold a slot, so the job
// whose turn it is always gets one.
type gate struct {
	run  chan struct{}
	held chan struct{}
}

func newGate(concurrency int) *gate {
	held := max(concurrency, min(4*concurrency, 1000))
	return &gate{run: make(chan struct{}, concurrency), held: make(chan struct{}, held)}
}

// acquire takes a hold and a run slot for a job to fetch; false if ctx ends
// first.
func (g *gate) acquire(ctx context.Context) bool {
	select {
	case g.held <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	select {
	case g.run <- struct{}{}:
		return true
	case <-ctx.Done():
		<-g.held
		return false
	}
}

// tryAcquire takes a hold and a run slot if both are free now.
func (g *gate) tryAcquire() bool {
	select {
	case g.held <- struct{}{}:
	default:
		return false
	}
	select {
	case g.run <- struct{}{}:
		return true
	default:
		<-g.held
		return false
	}
}

// release gives a finished job's slot and hold back.
func (g *gate) release() {
	<-g.run
	<-g.held
}

// park gives the caller's run slot up; unpark takes one again.
func (g *gate) park()   { <-g.run }
func (g *gate) unpark() { g.run <- struct{}{} }

// wait waits for ch to close, parked.
func (g *gate) wait(ch <-chan struct{}) {
	g.park()
	<-ch
	g.unpark()
}

// hold counts a fetched job against its instance's hold: one instance's
// jobs fill at most half of what the worker holds when they would queue
// for their target's turn, so that one tenant's burst of jobs on a few
// targets cannot fill the worker and stop it fetching every other tenant's
// jobs. A job that would not queue (free says so: no turn to wait for, or
// earlier than every job of its target held here, which the others wait
// for) is always held. false: over the hold (the job is given back). Every
// hold, true or false, is ended by unhold.
func (w *Worker) hold(inst string, free bool) bool {
	w.shareMu.Lock()
	defer w.shareMu.Unlock()
	if w.holding == nil {
		w.holding = map[string]int{}
	}
	w.holding[inst]++
	return free || w.holding[inst] <= cap(w.gate.held)/2
}

func (w *Worker) unhold(inst string) {
	w.shareMu.Lock()
	defer w.shareMu.Unlock()
	if w.holding[inst]--; w.holding[inst] <= 0 {
		delete(w.holding, inst)
	}
}

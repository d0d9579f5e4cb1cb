package console

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// watcher is the console process's one reader of JetStream: it follows
// the failures, results, jobs (a customer site's pool's in its own stream)
// and audit streams and the instances bucket,
// and reads the instances' sync state and the pools' backlog every
// Config.Refresh. Pages and live updates read its memory, so viewers cost
// JetStream nothing.
type watcher struct {
	cfg   Config
	js    jetstream.JetStream
	topo  worker.Topology
	log   *slog.Logger
	state *state.Store
	sched *worker.Schedules

	mu        sync.RWMutex
	instances map[string]*instanceView
	sorted    []*instanceView // the instances by id
	pools     map[string]*poolView
	failures  []*failureView // stream order
	failBySeq map[uint64]*failureView
	failByJob map[string][]*failureView
	results   map[string]*resultView
	resOrder  []string
	jobs      map[string]*jobRef
	jobOrder  []string
	audit     []auditEntry
	backlog   []sample
	version   uint64
	changed   chan struct{}
}

// sample is the pools' total backlog at a time.
type sample struct {
	At      time.Time
	Backlog uint64
}

func newWatcher(cfg Config, js jetstream.JetStream, log *slog.Logger) *watcher {
	return &watcher{cfg: cfg, js: js, topo: cfg.Topology, log: log, sched: worker.NewSchedules(js, cfg.Topology),
		instances: map[string]*instanceView{}, pools: map[string]*poolView{}, failBySeq: map[uint64]*failureView{},
		failByJob: map[string][]*failureView{}, results: map[string]*resultView{}, jobs: map[string]*jobRef{},
		changed: make(chan struct{}, 1)}
}

// start opens what the watcher reads and starts following it.
func (w *watcher) start(ctx context.Context) error {
	st, err := worker.OpenState(ctx, w.js, w.topo)
	if err != nil {
		return err
	}
	w.state = st
	store, err := worker.OpenInstances(ctx, w.js, w.topo)
	if err != nil {
		return err
	}
	if err := store.Watch(ctx, w.onInstance); err != nil {
		return err
	}
	s := w.topo.Subjects
	follows := []struct {
		stream, filter string
		deliver        jetstream.DeliverPolicy
		handle         func(jetstream.Msg)
	}{
		{w.topo.FailuresStream(), s.FailuresAll(), jetstream.DeliverAllPolicy, w.onFailure},
		{w.topo.ResultsStream(), s.Results("*", jobs.ResultActions), jetstream.DeliverAllPolicy, w.onResult},
		{w.topo.ResultsStream(), s.Results("*", jobs.ResultSyncs), jetstream.DeliverAllPolicy, w.onResult},
		{w.topo.JobsStream(), s.JobsAll(), jetstream.DeliverAllPolicy, w.onJob},
		{AuditStream(w.topo), AuditSubjects(w.topo), jetstream.DeliverAllPolicy, w.onAudit},
	}
	for _, f := range follows {
		if err := w.follow(ctx, f.stream, f.filter, f.handle); err != nil {
			return err
		}
	}
	// A customer site's pool keeps its jobs in a stream of its own, where
	// its workers' consumer is: its jobs are taken from there (onJob).
	for _, p := range w.topo.SitePools {
		if err := w.follow(ctx, w.topo.SiteJobsStream(p), s.PoolJobs(p), w.onJob); err != nil {
			return fmt.Errorf("console: follow site pool %s's jobs stream %s (made by m365-worker setup --site-pools %s; the console's NATS role needs the site's lines, docs/console.md): %w",
				p, w.topo.SiteJobsStream(p), p, err)
		}
	}
	go w.refreshLoop(ctx)
	return nil
}

// follow reads a stream's subjects from the start and then as they come.
func (w *watcher) follow(ctx context.Context, stream, filter string, handle func(jetstream.Msg)) error {
	st, err := w.js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		return err
	}
	cc, err := c.Consume(handle)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); cc.Stop() }()
	return nil
}

// bump marks the memory changed (the live updates send it at most once a second).
func (w *watcher) bump() {
	w.version++
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *watcher) onInstance(id string, in *worker.Instance) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer w.bump()
	byID := func(v *instanceView, id string) int { return strings.Compare(v.ID, id) }
	i, found := slices.BinarySearchFunc(w.sorted, id, byID)
	if in == nil {
		delete(w.instances, id)
		if found {
			w.sorted = slices.Delete(w.sorted, i, i+1)
		}
		return
	}
	v := w.instances[id]
	if v == nil {
		v = &instanceView{ID: id, Health: "not synced yet"}
		w.instances[id] = v
		w.sorted = slices.Insert(w.sorted, i, v)
	}
	v.ID, v.Pool, v.TenantID, v.ClientID, v.Cloud = in.ID, in.Pool, in.TenantID, in.ClientID, in.Cloud
	v.Interval = time.Duration(in.SyncInterval)
	if v.Interval <= 0 {
		v.Interval = worker.DefaultSyncInterval
	}
	if v.Cloud == "" {
		v.Cloud = "global"
	}
}

func (w *watcher) onFailure(m jetstream.Msg) {
	var r jobs.FailureRecord
	if json.Unmarshal(m.Data(), &r) != nil {
		return
	}
	md, _ := m.Metadata()
	v := &failureView{Rec: r, lower: strings.ToLower(r.JobID + " " + r.Error.Message)}
	if md != nil {
		v.Seq = md.Sequence.Stream
	}
	w.mu.Lock()
	w.failures = append(w.failures, v)
	w.failBySeq[v.Seq] = v
	w.failByJob[r.JobID] = append(w.failByJob[r.JobID], v)
	w.bump()
	w.mu.Unlock()
}

func (w *watcher) onResult(m jetstream.Msg) {
	var v resultView
	if strings.HasSuffix(m.Subject(), "."+jobs.ResultSyncs) {
		var rep jobs.SyncReport
		if json.Unmarshal(m.Data(), &rep) != nil || rep.JobID == "" {
			return
		}
		v = resultView{JobID: rep.JobID, Instance: rep.Instance, Action: jobs.ActionSync, Status: jobs.StatusSucceeded, Started: rep.StartedAt, Finished: rep.FinishedAt}
		if rep.Outcome != jobs.OutcomeSucceeded {
			v.Status = jobs.StatusFailed
		}
		if rep.Error != nil {
			v.Code, v.Message = rep.Error.Code, rep.Error.Message
		}
		v.Output = rep.Mode + " round, " + rep.Outcome
	} else {
		var res jobs.ActionResult
		if json.Unmarshal(m.Data(), &res) != nil || res.JobID == "" {
			return
		}
		v = resultView{JobID: res.JobID, Instance: res.Instance, Action: res.Action, Status: res.Status, Started: res.StartedAt, Finished: res.FinishedAt, Output: string(res.Output)}
		if res.Error != nil {
			v.Code, v.Message = res.Error.Code, res.Error.Message
		}
	}
	if len(v.Output) > 2048 {
		v.Output = v.Output[:2048] + "…"
	}
	w.mu.Lock()
	if _, seen := w.results[v.JobID]; !seen {
		w.resOrder = append(w.resOrder, v.JobID)
	}
	w.results[v.JobID] = &v
	if len(w.resOrder) > w.cfg.MaxJobs {
		delete(w.results, w.resOrder[0])
		w.resOrder = w.resOrder[1:]
	}
	w.bump()
	w.mu.Unlock()
}

func (w *watcher) onJob(m jetstream.Msg) {
	addr, err := w.topo.Subjects.ParseJobSubject(m.Subject())
	if err != nil {
		return
	}
	var env struct {
		ID     string `json:"id"`
		Action string `json:"action"`
	}
	if json.Unmarshal(m.Data(), &env) != nil || env.ID == "" {
		return
	}
	md, _ := m.Metadata()
	// A job is taken from the stream its pool's consumer is on, so that
	// its sequence counts against that consumer: a site pool's jobs are
	// also in the jobs stream (its stream sources them from there).
	if md != nil && md.Stream != w.topo.PoolJobsStream(addr.Pool) {
		return
	}
	j := &jobRef{ID: env.ID, Pool: addr.Pool, Instance: addr.Instance, Action: jobs.ShortAction(env.Action), Subject: m.Subject(), ReplayOf: m.Headers().Get(worker.HeaderReplayOf)}
	if md != nil {
		j.Stream, j.Seq, j.At = md.Stream, md.Sequence.Stream, md.Timestamp
	}
	w.mu.Lock()
	if _, seen := w.jobs[j.ID]; !seen {
		w.jobOrder = append(w.jobOrder, j.ID)
	}
	w.jobs[j.ID] = j
	if len(w.jobOrder) > w.cfg.MaxJobs {
		delete(w.jobs, w.jobOrder[0])
		w.jobOrder = w.jobOrder[1:]
	}
	w.bump()
	w.mu.Unlock()
}

func (w *watcher) onAudit(m jetstream.Msg) {
	var e auditEntry
	if json.Unmarshal(m.Data(), &e) != nil {
		return
	}
	w.mu.Lock()
	w.audit = append(w.audit, e)
	w.bump()
	w.mu.Unlock()
}

// refreshLoop reads the instances' sync state and the pools every Refresh.
func (w *watcher) refreshLoop(ctx context.Context) {
	t := time.NewTicker(w.cfg.Refresh)
	defer t.Stop()
	for {
		w.refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (w *watcher) refresh(ctx context.Context) {
	w.mu.RLock()
	ids := make([]*instanceView, 0, len(w.instances))
	for _, v := range w.instances {
		ids = append(ids, v)
	}
	w.mu.RUnlock()
	running, _ := handlers.ReadSyncProgress(ctx, w.state)
	type read struct {
		meta handlers.SyncMeta
		next time.Time
	}
	got := map[string]read{}
	pools := map[string]bool{jobs.DefaultPool: true}
	for _, p := range w.topo.SitePools {
		pools[p] = true
	}
	for _, v := range ids {
		if ctx.Err() != nil {
			return
		}
		pools[v.Pool] = true
		m, err := handlers.ReadSyncMeta(ctx, w.state.For(v.Pool, v.ID))
		if err != nil {
			w.log.Debug("console: read sync state", "instance", v.ID, "error", err)
		}
		m.UserLink, m.GroupLink = "", ""
		next, _ := w.sched.Next(ctx, v.Pool, v.ID)
		got[v.ID] = read{m, next}
	}
	pv := map[string]*poolView{}
	var total uint64
	for p := range pools {
		n, _ := w.state.LiveWorkers(ctx, p)
		// A site pool's consumer is on its own jobs stream.
		s := &poolView{Pool: p, Live: n, Stream: w.topo.PoolJobsStream(p)}
		if c, err := w.js.Consumer(ctx, s.Stream, w.topo.ConsumerName(p)); err == nil {
			if info, err := c.Info(ctx); err == nil {
				s.Read = true
				s.Backlog, s.InFlight = info.NumPending, info.NumAckPending
				s.AckFloor, s.Delivered = info.AckFloor.Stream, info.Delivered.Stream
			}
		}
		total += s.Backlog
		pv[p] = s
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, r := range got {
		v := w.instances[id]
		if v == nil {
			continue
		}
		v.Sync, v.Next = r.meta, r.next
		v.Running = nil
		if p, ok := running[id]; ok {
			v.Running = &p
		}
		v.Health = health(r.meta)
	}
	w.pools = pv
	w.backlog = append(w.backlog, sample{time.Now(), total})
	if len(w.backlog) > 120 {
		w.backlog = w.backlog[1:]
	}
	w.bump()
}

// health is an instance's health from its sync state.
func health(m handlers.SyncMeta) string {
	switch {
	case m.AuthFailed:
		return "credentials refused"
	case m.LastAt.IsZero():
		return "not synced yet"
	case m.LastOutcome != "" && m.LastOutcome != jobs.OutcomeSucceeded:
		return "last round " + m.LastOutcome
	}
	return "healthy"
}

// sortedInstances are the instances by id (w.mu held; not to be changed).
func (w *watcher) sortedInstances() []*instanceView { return w.sorted }

package console

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// batch is one replay of the records a filter selected: each record's new
// job id (or why it could not be replayed) as it goes.
type batch struct {
	ID, By  string
	Filter  failureFilter
	Started time.Time
	Total   int
	mu      sync.Mutex
	Items   []replayItem
	Done    bool
}

// replayItem is one record replayed.
type replayItem struct {
	Of, Instance, Action, NewID, Err string
}

// replayRow is a replayed record with its replay's result so far.
type replayRow struct {
	replayItem
	Result *resultView
}

// maxBatch is the most records one confirmation replays.
const maxBatch = 100_000

// replay is the operators' replay: of one record (seq), or of every record
// the filter selects, first as a dry run that counts them, then, with the
// typed confirmation "replay N", for real. The audit record comes first.
func (s *Server) replay(w http.ResponseWriter, r *http.Request, ss *session) {
	f, err := parseFailureFilter(r.PostForm, time.Now())
	if err != nil {
		s.refuse(w, r, ss, http.StatusBadRequest, err.Error())
		return
	}
	one, confirm := r.PostFormValue("seq"), strings.TrimSpace(r.PostFormValue("confirm"))
	recs, n, sample := s.selectReplay(f, one, confirm)
	want := fmt.Sprintf("replay %d", n)
	switch {
	case n == 0:
		s.refuse(w, r, ss, http.StatusNotFound, "No failure record matches: nothing to replay.")
		return
	case n > maxBatch:
		s.refuse(w, r, ss, http.StatusBadRequest, fmt.Sprintf("%d records match; narrow the filter to at most %d.", n, maxBatch))
		return
	case one == "" && confirm != want:
		d := map[string]any{"F": f, "Count": n, "Want": want, "Query": f.Query(), "Sample": sample}
		if confirm != "" {
			d["Mismatch"] = fmt.Sprintf("You typed %q; the filter now selects %d records: type %q.", confirm, n, want)
			w.WriteHeader(http.StatusConflict)
		}
		s.render(w, r, ss, "confirm", "Replay: dry run", d)
		return
	}
	target := "filter " + f.Query().Encode()
	if one != "" {
		target = recs[0].Rec.JobID
	}
	if err := record(r.Context(), s.js, s.cfg.Topology, ss, AuditReplay, target, fmt.Sprintf("%d records", n)); err != nil {
		s.refuse(w, r, ss, http.StatusServiceUnavailable, err.Error())
		return
	}
	b := s.newBatch(ss, f, n)
	go s.runBatch(context.WithoutCancel(r.Context()), b, recs)
	http.Redirect(w, r, "/replays/"+b.ID, http.StatusSeeOther)
}

// selectReplay finds what a replay request names: the one record seq, or
// the records the filter selects, counted with a sample of ten for the dry
// run and all of them once the count is confirmed. Records never change
// once read, so pointers to them stay valid outside the lock.
func (s *Server) selectReplay(f failureFilter, one, confirm string) (recs []*failureView, n int, sample []jobs.FailureRecord) {
	s.w.mu.RLock()
	defer s.w.mu.RUnlock()
	if one != "" {
		seq, _ := strconv.ParseUint(one, 10, 64)
		if v := s.w.failBySeq[seq]; v != nil {
			return []*failureView{v}, 1, nil
		}
		return nil, 0, nil
	}
	first, n := s.w.page(f, 0)
	for _, v := range first[:min(len(first), 10)] {
		sample = append(sample, v.Rec)
	}
	if confirm == fmt.Sprintf("replay %d", n) && n <= maxBatch {
		recs = s.w.matching(f)
	}
	return recs, n, sample
}

func (s *Server) newBatch(ss *session, f failureFilter, n int) *batch {
	s.batchMu.Lock()
	defer s.batchMu.Unlock()
	s.batchSeq++
	b := &batch{ID: strconv.Itoa(s.batchSeq) + "-" + randomToken()[:8], By: ss.Name, Filter: f, Started: time.Now(), Total: n}
	s.batches[b.ID] = b
	return b
}

// runBatch replays each record once, in order, recording each outcome.
func (s *Server) runBatch(ctx context.Context, b *batch, recs []*failureView) {
	for _, v := range recs {
		rec := v.Rec
		it := replayItem{Of: rec.JobID, Instance: rec.Instance, Action: jobs.ShortAction(rec.Action)}
		newID, err := worker.Replay(ctx, s.js, s.cfg.Topology, &rec)
		if err != nil {
			it.Err = err.Error()
			s.log.Warn("console: replay", "job_id", rec.JobID, "error", err)
		}
		it.NewID = newID
		b.mu.Lock()
		b.Items = append(b.Items, it)
		b.mu.Unlock()
	}
	b.mu.Lock()
	b.Done = true
	b.mu.Unlock()
	s.w.mu.Lock()
	s.w.bump()
	s.w.mu.Unlock()
}

func (s *Server) replayPage(w http.ResponseWriter, r *http.Request, ss *session) {
	s.batchMu.Lock()
	b := s.batches[r.PathValue("id")]
	s.batchMu.Unlock()
	if b == nil {
		w.WriteHeader(http.StatusNotFound)
		s.render(w, r, ss, "error", "Not found", map[string]any{"Message": "No replay " + r.PathValue("id") + " in this console process (the audit page lists every replay)."})
		return
	}
	b.mu.Lock()
	items := append([]replayItem(nil), b.Items...)
	done := b.Done
	b.mu.Unlock()
	rows := make([]replayRow, len(items))
	counts := map[string]int{}
	s.w.mu.RLock()
	for i, it := range items {
		rows[i].replayItem = it
		switch res := s.w.results[it.NewID]; {
		case it.Err != "":
			counts["not replayed"]++
		case res != nil:
			c := *res
			rows[i].Result = &c
			counts[res.Status]++
		default:
			counts["waiting"]++
		}
	}
	s.w.mu.RUnlock()
	finished := done && counts["waiting"] == 0
	s.render(w, r, ss, "replay", "Replay "+b.ID, map[string]any{"B": b, "Rows": rows, "Published": len(items), "Counts": counts,
		"Done": done, "Finished": finished, "Query": b.Filter.Query(), "Live": !finished})
}

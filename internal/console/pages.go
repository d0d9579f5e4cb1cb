package console

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/tevyra/m365-worker/internal/redact"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

const pageSize = 100

// actionStat is one action's results in the last hour.
type actionStat struct {
	Action            string
	Succeeded, Failed int
	PerMinute         float64
}

func (s *Server) overview(w http.ResponseWriter, r *http.Request, ss *session) {
	now := time.Now()
	s.w.mu.RLock()
	byHealth := map[string]int{}
	var req, thr int64
	for _, v := range s.w.instances {
		byHealth[v.Health]++
		req += v.Sync.LastRequests
		thr += v.Sync.LastThrottled
	}
	stats := map[string]*actionStat{}
	for _, id := range s.w.resOrder {
		res := s.w.results[id]
		if res == nil || now.Sub(res.Finished) > time.Hour {
			continue
		}
		a := stats[jobs.ShortAction(res.Action)]
		if a == nil {
			a = &actionStat{Action: jobs.ShortAction(res.Action)}
			stats[a.Action] = a
		}
		if res.Status == jobs.StatusSucceeded {
			a.Succeeded++
		} else {
			a.Failed++
		}
	}
	pools := s.sortedPools()
	workers := 0
	for _, p := range pools {
		workers += p.Live
	}
	backlog := append([]sample(nil), s.w.backlog...)
	nInst, nFail := len(s.w.instances), len(s.w.failures)
	s.w.mu.RUnlock()
	var list []*actionStat
	for _, a := range stats {
		a.PerMinute = float64(a.Succeeded+a.Failed) / 60
		list = append(list, a)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Action < list[j].Action })
	var maxB uint64 = 1
	for _, b := range backlog {
		maxB = max(maxB, b.Backlog)
	}
	s.render(w, r, ss, "overview", "Overview", map[string]any{"Health": byHealth, "Instances": nInst, "Failures": nFail,
		"Pools": pools, "Workers": workers, "Actions": list, "Requests": req, "Throttled": thr, "Bars": bars(backlog, maxB), "MaxBacklog": maxB, "Refresh": s.cfg.Refresh, "Now": now0(backlog)})
}

func (s *Server) sortedPools() []*poolView {
	out := make([]*poolView, 0, len(s.w.pools))
	for _, p := range s.w.pools {
		c := *p
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pool < out[j].Pool })
	return out
}

func (s *Server) instancesPage(w http.ResponseWriter, r *http.Request, ss *session) {
	q := r.URL.Query()
	health, text := q.Get("health"), q.Get("q")
	page, _ := pageOf(q, 0)
	from := (page - 1) * pageSize
	list := make([]instanceView, 0, pageSize)
	total := 0
	s.w.mu.RLock()
	for _, v := range s.w.sortedInstances() {
		if (health == "" || v.Health == health) && (text == "" || containsFold(v.ID, text)) {
			if total >= from && len(list) < pageSize {
				list = append(list, *v)
			}
			total++
		}
	}
	s.w.mu.RUnlock()
	s.render(w, r, ss, "instances", "Instances", map[string]any{"Instances": list, "Total": total,
		"Health": health, "Q": text, "Page": page, "Pages": (total + pageSize - 1) / pageSize, "Query": q})
}

func (s *Server) instancePage(w http.ResponseWriter, r *http.Request, ss *session) {
	id := r.PathValue("id")
	s.w.mu.RLock()
	v, ok := s.w.instances[id]
	var inst instanceView
	if ok {
		inst = *v
	}
	var fails []failureView
	for i := len(s.w.failures) - 1; i >= 0 && len(fails) < 20; i-- {
		if f := s.w.failures[i]; f.Rec.Instance == id {
			fails = append(fails, *f)
		}
	}
	var recent []jobRow
	for i := len(s.w.jobOrder) - 1; i >= 0 && len(recent) < 20; i-- {
		if j := s.w.jobs[s.w.jobOrder[i]]; j.Instance == id {
			recent = append(recent, s.w.row(j))
		}
	}
	s.w.mu.RUnlock()
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		s.render(w, r, ss, "error", "Not found", map[string]any{"Message": "No instance " + id + "."})
		return
	}
	s.render(w, r, ss, "instance", "Instance "+id, map[string]any{"I": inst, "Failures": fails, "Jobs": recent, "Synced": r.URL.Query().Get("synced")})
}

// syncNow asks for an on-demand sync of an instance (operators; audited).
func (s *Server) syncNow(w http.ResponseWriter, r *http.Request, ss *session) {
	id := r.PathValue("id")
	s.w.mu.RLock()
	v, ok := s.w.instances[id]
	pool := ""
	if ok {
		pool = v.Pool
	}
	s.w.mu.RUnlock()
	if !ok {
		s.refuse(w, r, ss, http.StatusNotFound, "No instance "+id+".")
		return
	}
	if err := record(r.Context(), s.js, s.cfg.Topology, ss, AuditSync, id, "pool "+pool); err != nil {
		s.refuse(w, r, ss, http.StatusServiceUnavailable, err.Error())
		return
	}
	jobID, err := worker.RequestSync(r.Context(), s.js, s.cfg.Topology.Subjects, pool, id, r.PostFormValue("full") == "1")
	if err != nil {
		s.refuse(w, r, ss, http.StatusServiceUnavailable, err.Error())
		return
	}
	http.Redirect(w, r, "/instances/"+id+"?synced="+jobID, http.StatusSeeOther)
}

// jobRow is a job with where it is.
type jobRow struct {
	Job     jobRef
	Where   string // queued, in flight, succeeded, failed, settled
	Detail  string
	Result  *resultView
	Failure *failureView
}

// row locates a job (w.mu held): its result, its failure record, or its
// place against its pool's consumer.
func (w *watcher) row(j *jobRef) jobRow {
	row := jobRow{Job: *j}
	if res := w.results[j.ID]; res != nil {
		c := *res
		row.Result, row.Where = &c, res.Status
	}
	if fs := w.failByJob[j.ID]; len(fs) > 0 {
		c := *fs[len(fs)-1]
		row.Failure, row.Where = &c, jobs.StatusFailed
	}
	if row.Where != "" {
		return row
	}
	p := w.pools[j.Pool]
	switch {
	case p == nil:
		row.Where, row.Detail = "unknown", "its pool "+j.Pool+" has no consumer here"
	case !p.Read:
		row.Where, row.Detail = "unknown", "pool "+j.Pool+"'s consumer "+w.topo.ConsumerName(j.Pool)+" on "+p.Stream+" could not be read (a customer site's pool: start the console with --site-pools "+j.Pool+")"
	case j.Seq > p.Delivered:
		row.Where, row.Detail = "queued", strconv.FormatUint(j.Seq-p.Delivered, 10)+" ahead in pool "+j.Pool+"'s queue (counting it)"
	case j.Seq > p.AckFloor:
		row.Where, row.Detail = "in flight", "delivered to a worker of pool "+j.Pool+", holding no lock: waiting for its target's turn or its instance's lock"
	default:
		row.Where, row.Detail = "settled", "acknowledged; its result is not among the results this console follows"
	}
	return row
}

// holder finds the worker running an in-flight job from the instance's
// locks (one read, for this one job's page): the job is then "running".
func (w *watcher) holder(ctx context.Context, row *jobRow) {
	hs, err := w.state.For(row.Job.Pool, row.Job.Instance).Holders(ctx)
	if err != nil {
		row.Detail += " (its locks could not be read: " + err.Error() + ")"
		return
	}
	for _, h := range hs {
		if h.JobID == row.Job.ID {
			row.Where, row.Detail = "running", "on worker "+h.Worker+" since "+h.Since.UTC().Format(time.RFC3339)
			return
		}
	}
}

// outcome is a job's where for filtering.
func (j jobRow) outcome() string { return j.Where }

func (s *Server) jobsPage(w http.ResponseWriter, r *http.Request, ss *session) {
	q := r.URL.Query()
	f, ferr := parseJobFilter(q, time.Now())
	id := q.Get("id")
	var found *jobRow
	var recent []jobRow
	s.w.mu.RLock()
	if id != "" {
		if j := s.w.jobs[id]; j != nil {
			row := s.w.row(j)
			found = &row
		} else if res := s.w.results[id]; res != nil {
			row := jobRow{Job: jobRef{ID: id, Instance: res.Instance, Action: res.Action}, Where: res.Status, Result: res}
			found = &row
		}
	}
	for i := len(s.w.jobOrder) - 1; i >= 0 && len(recent) < pageSize; i-- {
		j := s.w.jobs[s.w.jobOrder[i]]
		row := s.w.row(j)
		if f.match(j, row.outcome()) {
			recent = append(recent, row)
		}
	}
	s.w.mu.RUnlock()
	if found != nil && found.Where == "in flight" {
		s.w.holder(r.Context(), found)
	}
	d := map[string]any{"ID": id, "Found": found, "Recent": recent, "F": f, "Live": found != nil && (found.Where == "queued" || found.Where == "in flight")}
	if ferr != nil {
		d["Error"] = ferr.Error()
	}
	s.render(w, r, ss, "jobs", "Jobs", d)
}

// page is one page of the records the filter selects, newest first, from
// the from-th match, and how many match (w.mu held): one pass, nothing
// allocated for the records it skips.
func (w *watcher) page(f failureFilter, from int) ([]failureView, int) {
	rows := make([]failureView, 0, pageSize)
	total := 0
	for i := len(w.failures) - 1; i >= 0; i-- {
		if v := w.failures[i]; f.match(v) {
			if total >= from && len(rows) < pageSize {
				rows = append(rows, *v)
			}
			total++
		}
	}
	return rows, total
}

// matching are the failure records the filter selects, newest first.
func (w *watcher) matching(f failureFilter) []*failureView {
	var out []*failureView
	for i := len(w.failures) - 1; i >= 0; i-- {
		if v := w.failures[i]; f.match(v) {
			out = append(out, v)
		}
	}
	return out
}

func (s *Server) failuresPage(w http.ResponseWriter, r *http.Request, ss *session) {
	q := r.URL.Query()
	f, err := parseFailureFilter(q, time.Now())
	d := map[string]any{"F": f}
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		d["Error"] = err.Error()
		s.render(w, r, ss, "failures", "Failures", d)
		return
	}
	page, _ := pageOf(q, 0)
	s.w.mu.RLock()
	rows, total := s.w.page(f, (page-1)*pageSize)
	s.w.mu.RUnlock()
	if total > 0 && len(rows) == 0 { // past the last page: show the last
		page = (total + pageSize - 1) / pageSize
		s.w.mu.RLock()
		rows, total = s.w.page(f, (page-1)*pageSize)
		s.w.mu.RUnlock()
	}
	d["Rows"], d["Total"], d["Page"], d["Pages"], d["Query"] = rows, total, page, (total+pageSize-1)/pageSize, f.Query()
	s.render(w, r, ss, "failures", "Failures", d)
}

func pageOf(q map[string][]string, total int) (page, from int) {
	page = 1
	if v, ok := q["page"]; ok && len(v) > 0 {
		if n, err := strconv.Atoi(v[0]); err == nil && n > 0 {
			page = n
		}
	}
	from = (page - 1) * pageSize
	if from >= total {
		from = max(0, (total-1)/pageSize*pageSize)
	}
	return page, from
}

func (s *Server) failure(r *http.Request) (failureView, bool) {
	seq, _ := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	s.w.mu.RLock()
	defer s.w.mu.RUnlock()
	v, ok := s.w.failBySeq[seq]
	if !ok {
		return failureView{}, false
	}
	return *v, true
}

func (s *Server) failurePage(w http.ResponseWriter, r *http.Request, ss *session) {
	s.showFailure(w, r, ss, false)
}

// reveal shows a record's personal data to an operator (audited); secrets
// stay masked for everyone.
func (s *Server) reveal(w http.ResponseWriter, r *http.Request, ss *session) {
	v, ok := s.failure(r)
	if !ok {
		s.refuse(w, r, ss, http.StatusNotFound, "No such failure record.")
		return
	}
	if err := record(r.Context(), s.js, s.cfg.Topology, ss, AuditReveal, v.Rec.JobID, "failure record "+strconv.FormatUint(v.Seq, 10)); err != nil {
		s.refuse(w, r, ss, http.StatusServiceUnavailable, err.Error())
		return
	}
	s.showFailure(w, r, ss, true)
}

func (s *Server) showFailure(w http.ResponseWriter, r *http.Request, ss *session, revealed bool) {
	v, ok := s.failure(r)
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		s.render(w, r, ss, "error", "Not found", map[string]any{"Message": "No failure record " + r.PathValue("seq") + "."})
		return
	}
	d := map[string]any{"V": v, "Revealed": revealed, "Message": v.Rec.Error.Message}
	if !revealed {
		d["Message"] = redact.Text(v.Rec.Error.Message)
	}
	orig, err := worker.OriginalJob(r.Context(), s.js, s.cfg.Topology, &v.Rec)
	if err != nil {
		d["JobError"] = err.Error()
	} else {
		var env any
		if json.Unmarshal(orig.Data, &env) != nil {
			d["JobError"] = "the job is not JSON (" + strconv.Itoa(len(orig.Data)) + " bytes)"
		} else {
			var masked []string
			if revealed {
				env, masked = redact.Secrets(env)
			} else {
				env, masked = redact.Personal(env)
			}
			b, _ := json.MarshalIndent(env, "", "  ")
			d["Job"], d["Masked"] = string(b), masked
		}
	}
	s.render(w, r, ss, "failure", "Failure of "+v.Rec.JobID, d)
}

func (s *Server) auditPage(w http.ResponseWriter, r *http.Request, ss *session) {
	s.w.mu.RLock()
	n := len(s.w.audit)
	list := make([]auditEntry, 0, min(n, 500))
	for i := n - 1; i >= 0 && len(list) < 500; i-- {
		list = append(list, s.w.audit[i])
	}
	s.w.mu.RUnlock()
	s.render(w, r, ss, "audit", "Audit", map[string]any{"Entries": list, "Total": n, "Stream": AuditStream(s.cfg.Topology)})
}

// bar is one reading of the backlog chart (an inline SVG: no inline styles
// under the console's Content-Security-Policy).
type bar struct {
	X, Y, H float64
	Title   string
}

func bars(samples []sample, maxB uint64) []bar {
	out := make([]bar, len(samples))
	for i, s := range samples {
		h := 40 * float64(s.Backlog) / float64(maxB)
		out[i] = bar{X: float64(i), Y: 40 - h, H: max(h, 0.3), Title: s.At.UTC().Format("15:04:05") + ": " + strconv.FormatUint(s.Backlog, 10)}
	}
	return out
}

// now0 is the latest backlog reading.
func now0(samples []sample) uint64 {
	if len(samples) == 0 {
		return 0
	}
	return samples[len(samples)-1].Backlog
}

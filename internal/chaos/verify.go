package chaos

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
)

// maxAssetMismatches bounds the asset-view mismatches listed one by one.
const maxAssetMismatches = 40

// outputs are the fields of action outputs the checks read.
type output struct {
	UserID   string             `json:"user_id"`
	GroupID  string             `json:"group_id"`
	Password *jobs.SealedSecret `json:"password"`
}

type collected struct {
	results  map[string][]jobs.ActionResult
	reports  map[string][]jobs.SyncReport
	failures map[string][]jobs.FailureRecord
	deltas   []deltaAt
	inds     []jobs.Indicators
	order    []tailMsg // every result-stream message
}

type deltaAt struct {
	seq uint64
	d   jobs.AssetDelta
}

func (h *harness) collect() *collected {
	c := &collected{results: map[string][]jobs.ActionResult{}, reports: map[string][]jobs.SyncReport{}, failures: map[string][]jobs.FailureRecord{}}
	c.order = h.resultsTail.all()
	for _, m := range c.order {
		switch {
		case strings.HasSuffix(m.Subject, ".actions"):
			var r jobs.ActionResult
			_ = json.Unmarshal(m.Data, &r)
			c.results[r.JobID] = append(c.results[r.JobID], r)
		case strings.HasSuffix(m.Subject, ".syncs"):
			var r jobs.SyncReport
			_ = json.Unmarshal(m.Data, &r)
			c.reports[r.JobID] = append(c.reports[r.JobID], r)
		case strings.HasSuffix(m.Subject, ".indicators"):
			var r jobs.Indicators
			_ = json.Unmarshal(m.Data, &r)
			c.inds = append(c.inds, r)
		case strings.Contains(m.Subject, ".assets."):
			var d jobs.AssetDelta
			_ = json.Unmarshal(m.Data, &d)
			c.deltas = append(c.deltas, deltaAt{seq: m.Seq, d: d})
		}
	}
	for _, m := range h.failuresTail.all() {
		var f jobs.FailureRecord
		_ = json.Unmarshal(m.Data, &f)
		c.failures[f.JobID] = append(c.failures[f.JobID], f)
	}
	return c
}

func errText(e *jobs.Error) string {
	if e == nil {
		return "no error"
	}
	return e.Code + ": " + e.Message
}

// verify runs every check and records the mismatches.
func (h *harness) verify(p *plan, initial, truth *graphsim.Snapshot, final string) {
	c := h.collect()
	h.mu.Lock()
	for _, rs := range c.results {
		h.rep.Results += len(rs)
	}
	for _, rs := range c.reports {
		h.rep.SyncReports += len(rs)
		for _, r := range rs {
			if r.Outcome == jobs.OutcomeSucceeded {
				h.rep.SyncRounds++
			}
		}
	}
	for _, fs := range c.failures {
		for _, f := range fs {
			h.rep.FailuresByCode[f.Error.Code]++
		}
	}
	h.mu.Unlock()
	h.rep.Conformance = h.sim.Conformance()
	for _, v := range h.rep.Conformance.Violations {
		h.mismatch("graph_conformance", "", "", "%s", v)
	}
	h.checkResults(p, c, final)
	h.checkFailures(p, c)
	h.checkRounds(c)
	ids := h.checkEffects(p, c, initial, truth)
	h.checkPasswords(p, c, ids)
	h.checkAssets(c, truth)
	h.checkIndicators(c, truth)
}

func (h *harness) checkResults(p *plan, c *collected, final string) {
	for _, j := range p.jobs {
		if j.Action == jobs.ActionSync {
			rs := c.reports[j.ID]
			switch {
			case len(rs) == 0:
				h.mismatch("result", j.ID, j.Action, "no sync report%s", h.whereIs(j, c))
			case len(rs) > 1:
				h.mismatch("result", j.ID, j.Action, "%d sync reports (want exactly one): %s", len(rs), describeReports(rs))
			}
			for _, r := range rs {
				if r.Outcome != jobs.OutcomeSucceeded {
					h.mismatch("sync", j.ID, j.Action, "round %s ended %s (%s) under faults alone", r.SyncID, r.Outcome, errText(r.Error))
				}
			}
			continue
		}
		rs := c.results[j.ID]
		switch {
		case len(rs) == 0:
			h.mismatch("result", j.ID, j.Action, "no action result (target %s)%s", j.Target, h.whereIs(j, c))
			continue
		case len(rs) > 1:
			var d []string
			for _, r := range rs {
				d = append(d, fmt.Sprintf("%s after %d attempts at %s (%s)", r.Status, r.Attempts, r.FinishedAt.Format("15:04:05.000"), errText(r.Error)))
			}
			h.mismatch("result", j.ID, j.Action, "%d results (want exactly one): %s", len(rs), strings.Join(d, "; "))
		}
		r := rs[0]
		switch {
		case j.Expect == "" && r.Status != jobs.StatusSucceeded:
			h.mismatch("result", j.ID, j.Action, "failed after %d attempts with %s; it should have succeeded (target %s, params %s)", r.Attempts, errText(r.Error), j.Target, j.Params)
		case j.Expect != "" && (r.Status != jobs.StatusFailed || r.Error == nil || r.Error.Code != j.Expect):
			h.mismatch("result", j.ID, j.Action, "ended %s (%s); it should have failed with %s", r.Status, errText(r.Error), j.Expect)
		}
	}
	h.mu.Lock()
	var twice []string
	for id, ks := range h.published {
		if len(ks) > 1 {
			twice = append(twice, id)
		}
	}
	sort.Strings(twice)
	pub := map[string][]string{}
	for _, id := range twice {
		pub[id] = h.published[id]
	}
	h.mu.Unlock()
	for _, id := range twice {
		var d []string
		for _, k := range pub[id] {
			d = append(d, maskPasswords(k))
		}
		action := ""
		if j := p.byID[id]; j != nil {
			action = j.Action
		}
		h.mismatch("result", id, action, "%d different results were published for the job (the stream kept the first by its msg id; the job ran twice): %s", len(d), strings.Join(d, " | "))
	}
	for id, rs := range c.results {
		if p.byID[id] == nil {
			h.mismatch("result", id, rs[0].Action, "%d results for a job id never published", len(rs))
		}
	}
	for id, rs := range c.reports {
		if p.byID[id] == nil && id != final {
			h.note("sync report for a job the run did not publish: %s (%s)", id, rs[0].Outcome)
		}
	}
	if rs := c.reports[final]; len(rs) == 1 && rs[0].Outcome != jobs.OutcomeSucceeded {
		h.mismatch("sync", final, jobs.ActionSync, "the final round (faults off) ended %s: %s", rs[0].Outcome, errText(rs[0].Error))
	} else if len(rs) > 1 {
		h.mismatch("result", final, jobs.ActionSync, "%d sync reports for the final round", len(rs))
	}
}

func describeReports(rs []jobs.SyncReport) string {
	var d []string
	for _, r := range rs {
		d = append(d, fmt.Sprintf("%s %s %s", r.SyncID, r.Mode, r.Outcome))
	}
	return strings.Join(d, "; ")
}

// whereIs says what the streams know of a job without a result.
func (h *harness) whereIs(j *job, c *collected) string {
	var s []string
	if fs := c.failures[j.ID]; len(fs) > 0 {
		s = append(s, fmt.Sprintf("a failure record says %s after %d deliveries", errText(&fs[0].Error), fs[0].Deliveries))
	} else {
		s = append(s, "no failure record either")
	}
	if j.CopyAfter > 0 {
		s = append(s, "it was republished later")
	}
	return "; " + strings.Join(s, "; ")
}

func (h *harness) checkFailures(p *plan, c *collected) {
	for id, fs := range c.failures {
		j := p.byID[id]
		if j == nil || j.Action == jobs.ActionSync {
			for _, f := range fs {
				h.mismatch("failure", id, f.Action, "failure record %s (stream seq %d, %d deliveries, worker %s) for a job the run did not mean to fail", errText(&f.Error), f.StreamSeq, f.Deliveries, f.Worker)
			}
			continue
		}
		if len(fs) > 1 {
			h.mismatch("failure", id, j.Action, "%d failure records (want at most one)", len(fs))
		}
		for _, f := range fs {
			if j.Expect == "" {
				h.mismatch("failure", id, j.Action, "failure record %s after %d attempts, %d deliveries (stream seq %d, worker %s): fault injection may only cause retries",
					errText(&f.Error), f.Attempts, f.Deliveries, f.StreamSeq, f.Worker)
			} else if f.Error.Code != j.Expect {
				h.mismatch("failure", id, j.Action, "failure record %s, want code %s", errText(&f.Error), j.Expect)
			}
		}
	}
	for _, j := range p.jobs {
		if j.Expect != "" && len(c.failures[j.ID]) == 0 {
			h.mismatch("failure", j.ID, j.Action, "no failure record for a job that failed with %s", j.Expect)
		}
	}
}

// checkRounds holds every round to the contract's order (licences, users,
// groups, each numbered from 1 with the last marked, then the indicators,
// then the report) and a succeeded report to what its run published.
func (h *harness) checkRounds(c *collected) {
	rank := map[string]int{jobs.AssetLicense: 1, jobs.AssetUser: 2, jobs.AssetGroup: 3}
	type run struct {
		rank      int
		batch     map[string]int
		last      map[string]bool
		upserts   map[string]int
		deletes   map[string]int
		indicator bool
		broken    string
	}
	runs := map[string]*run{}
	get := func(id string) *run {
		if runs[id] == nil {
			runs[id] = &run{batch: map[string]int{}, last: map[string]bool{}, upserts: map[string]int{}, deletes: map[string]int{}}
		}
		return runs[id]
	}
	for _, m := range c.order {
		switch {
		case strings.Contains(m.Subject, ".assets."):
			var d jobs.AssetDelta
			_ = json.Unmarshal(m.Data, &d)
			if strings.HasPrefix(d.SyncID, "action:") {
				continue
			}
			r := get(d.SyncID)
			if r.broken == "" && (rank[d.Type] < r.rank || r.last[d.Type] || d.Batch != r.batch[d.Type]+1 || r.indicator) {
				r.broken = fmt.Sprintf("%s batch %d (last %v) at stream seq %d after rank %d, batch %d, closed %v, indicators %v", d.Type, d.Batch, d.Last, m.Seq, r.rank, r.batch[d.Type], r.last[d.Type], r.indicator)
			}
			r.rank, r.batch[d.Type], r.last[d.Type] = rank[d.Type], d.Batch, d.Last
			for _, ch := range d.Changes {
				switch ch.Op {
				case jobs.OpUpsert:
					r.upserts[d.Type]++
				case jobs.OpDelete:
					r.deletes[d.Type]++
				}
			}
		case strings.HasSuffix(m.Subject, ".indicators"):
			var ind jobs.Indicators
			_ = json.Unmarshal(m.Data, &ind)
			get(ind.SyncID).indicator = true
		case strings.HasSuffix(m.Subject, ".syncs"):
			var rep jobs.SyncReport
			_ = json.Unmarshal(m.Data, &rep)
			if rep.Outcome != jobs.OutcomeSucceeded {
				continue
			}
			r := runs[rep.SyncID]
			if r == nil {
				h.mismatch("sync", rep.JobID, jobs.ActionSync, "succeeded report for run %s that published nothing", rep.SyncID)
				continue
			}
			var missing []string
			for _, typ := range []string{jobs.AssetLicense, jobs.AssetUser, jobs.AssetGroup} {
				if !r.last[typ] {
					missing = append(missing, typ)
				}
				if cnt := rep.Counts[typ]; cnt.Upserts != r.upserts[typ] || cnt.Deletes != r.deletes[typ] {
					h.mismatch("sync", rep.JobID, jobs.ActionSync, "run %s reports %s %d upserts %d deletes, but published %d upserts %d deletes",
						rep.SyncID, typ, cnt.Upserts, cnt.Deletes, r.upserts[typ], r.deletes[typ])
				}
			}
			if len(missing) > 0 || !r.indicator {
				h.mismatch("sync", rep.JobID, jobs.ActionSync, "run %s reported success without the last batch of %v (indicators published: %v)", rep.SyncID, missing, r.indicator)
			}
			if r.broken != "" {
				h.mismatch("sync", rep.JobID, jobs.ActionSync, "run %s out of the contract's order: %s", rep.SyncID, r.broken)
			}
		}
	}
}

// createdIDs maps the plan's model keys of created objects to their ids.
type createdIDs map[string]string

func (h *harness) outputOf(c *collected, jobID string) (*output, bool) {
	rs := c.results[jobID]
	if len(rs) == 0 || rs[0].Status != jobs.StatusSucceeded {
		return nil, false
	}
	var o output
	if err := json.Unmarshal(rs[len(rs)-1].Output, &o); err != nil {
		return nil, false
	}
	return &o, true
}

func sameStrings(a, b []string) bool {
	a, b = append([]string(nil), a...), append([]string(nil), b...)
	for i := range a {
		a[i] = strings.ToLower(a[i])
	}
	for i := range b {
		b[i] = strings.ToLower(b[i])
	}
	sort.Strings(a)
	sort.Strings(b)
	return strings.Join(a, ",") == strings.Join(b, ",")
}

func licenceText(m map[string][]string) string {
	var out []string
	for id, plans := range m {
		p := append([]string(nil), plans...)
		sort.Strings(p)
		out = append(out, strings.ToLower(id)+"["+strings.ToLower(strings.Join(p, ","))+"]")
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func truthLicences(u graphsim.SnapshotUser) map[string][]string {
	m := map[string][]string{}
	for _, l := range u.AssignedLicenses {
		m[l.SkuID] = l.DisabledPlans
	}
	return m
}

// checkEffects compares the ground truth with the model: every job's
// effect, once, and nothing else.
func (h *harness) checkEffects(p *plan, c *collected, initial, truth *graphsim.Snapshot) createdIDs {
	ids := createdIDs{}
	tu := map[string]graphsim.SnapshotUser{}
	byUPN := map[string]graphsim.SnapshotUser{}
	for _, u := range truth.Users {
		tu[u.ID] = u
		byUPN[strings.ToLower(u.UserPrincipalName)] = u
	}
	tg := map[string]graphsim.SnapshotGroup{}
	byNick := map[string]graphsim.SnapshotGroup{}
	for _, g := range truth.Groups {
		tg[g.ID] = g
		byNick[strings.ToLower(g.MailNickname)] = g
	}
	recycled := map[string]bool{}
	for _, id := range truth.Deleted {
		recycled[id] = true
	}
	accounted := map[string]bool{}

	keys := make([]string, 0, len(p.users))
	for k := range p.users {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		u := p.users[k]
		id := u.ID
		if u.Created {
			n := h.proxy.createCount("user:" + u.UPN)
			if n != 1 {
				h.mismatch("create", u.CreateJob, jobs.ActionCreateUser, "Graph created %d users with UPN %s (want exactly one)", n, u.UPN)
			}
			if o, ok := h.outputOf(c, u.CreateJob); ok {
				id = o.UserID
			}
			if t, ok := byUPN[strings.ToLower(u.UPN)]; ok {
				if id != "" && t.ID != id {
					h.mismatch("effect", u.CreateJob, jobs.ActionCreateUser, "the result names user %s, the tenant's %s is %s", id, u.UPN, t.ID)
				}
				if id == "" {
					id = t.ID
				}
			}
			ids[k] = id
		}
		accounted[id] = true
		t, exists := tu[id]
		if u.Deleted {
			if exists {
				h.mismatch("effect", "", jobs.ActionDeleteUser, "user %s (%s) should be in the recycle bin but is in the directory", u.UPN, id)
			} else if id != "" && !recycled[id] {
				h.mismatch("effect", "", jobs.ActionDeleteUser, "user %s (%s) is neither in the directory nor in the recycle bin", u.UPN, id)
			}
			continue
		}
		if !exists {
			h.mismatch("effect", u.CreateJob, "", "user %s (%s) should exist (recycle bin: %v)", u.UPN, id, recycled[id])
			continue
		}
		var diffs []string
		cmp := func(name, want, got string) {
			if want != got {
				diffs = append(diffs, fmt.Sprintf("%s %q, want %q", name, got, want))
			}
		}
		cmp("displayName", u.DisplayName, t.DisplayName)
		cmp("givenName", str(u.GivenName), str(t.GivenName))
		cmp("jobTitle", str(u.JobTitle), str(t.JobTitle))
		cmp("department", str(u.Department), str(t.Department))
		cmp("officeLocation", str(u.OfficeLocation), str(t.OfficeLocation))
		cmp("mobilePhone", str(u.MobilePhone), str(t.MobilePhone))
		cmp("usageLocation", str(u.UsageLocation), str(t.UsageLocation))
		cmp("accountEnabled", fmt.Sprint(u.Enabled), fmt.Sprint(t.AccountEnabled))
		cmp("licences", licenceText(u.Licenses), licenceText(truthLicences(t)))
		if len(diffs) > 0 {
			h.mismatch("effect", "", "", "user %s (%s): %s%s", u.UPN, id, strings.Join(diffs, "; "), h.jobsOf(p, "user:"+u.ref))
		}
	}
	deletedIDs := map[string]bool{}
	for _, u := range p.users {
		if u.Deleted {
			deletedIDs[u.ID] = true
			if x := ids[u.Key]; x != "" {
				deletedIDs[x] = true
			}
		}
	}
	for _, u := range initial.Users {
		if accounted[u.ID] {
			continue
		}
		accounted[u.ID] = true
		t, ok := tu[u.ID]
		a, _ := json.Marshal(u)
		b, _ := json.Marshal(t)
		if !ok || string(a) != string(b) {
			h.mismatch("effect", "", "", "user %s (%s) changed though no job of the run named it: was %s, is %s", u.UserPrincipalName, u.ID, a, b)
		}
	}
	for _, t := range truth.Users {
		if !accounted[t.ID] {
			h.mismatch("effect", "", "", "user %s (%s) exists though no job created it", t.UserPrincipalName, t.ID)
		}
	}

	// Groups.
	gAccounted := map[string]bool{}
	keys = keys[:0]
	for k := range p.groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		g := p.groups[k]
		id := g.ID
		if g.Created {
			n := h.proxy.createCount("group:" + g.Nick)
			if n != 1 {
				h.mismatch("create", g.CreateJob, jobs.ActionCreateGroup, "Graph created %d groups with mail nickname %s (want exactly one)", n, g.Nick)
			}
			if o, ok := h.outputOf(c, g.CreateJob); ok {
				id = o.GroupID
			}
			if t, ok := byNick[strings.ToLower(g.Nick)]; ok {
				if id != "" && t.ID != id {
					h.mismatch("effect", g.CreateJob, jobs.ActionCreateGroup, "the result names group %s, the tenant's %s is %s", id, g.Nick, t.ID)
				}
				if id == "" {
					id = t.ID
				}
			}
			ids[k] = id
		}
		gAccounted[id] = true
		t, exists := tg[id]
		if g.Deleted {
			if exists {
				h.mismatch("effect", "", jobs.ActionDeleteGroup, "group %s (%s) should be in the recycle bin but exists", g.Nick, id)
			} else if id != "" && !recycled[id] {
				h.mismatch("effect", "", jobs.ActionDeleteGroup, "group %s (%s) is neither in the directory nor in the recycle bin", g.Nick, id)
			}
			continue
		}
		if !exists {
			h.mismatch("effect", g.CreateJob, "", "group %s (%s) should exist (recycle bin: %v)", g.Nick, id, recycled[id])
			continue
		}
		var want []string
		for m := range g.Members {
			if !deletedIDs[m] {
				want = append(want, m)
			}
		}
		var diffs []string
		if g.DisplayName != t.DisplayName {
			diffs = append(diffs, fmt.Sprintf("displayName %q, want %q", t.DisplayName, g.DisplayName))
		}
		if str(g.Description) != str(t.Description) {
			diffs = append(diffs, fmt.Sprintf("description %q, want %q", str(t.Description), str(g.Description)))
		}
		if g.Unified && str(g.Visibility) != str(t.Visibility) {
			diffs = append(diffs, fmt.Sprintf("visibility %q, want %q", str(t.Visibility), str(g.Visibility)))
		}
		if !sameStrings(want, t.Members) {
			diffs = append(diffs, "members "+setDiff(want, t.Members))
		}
		if len(diffs) > 0 {
			h.mismatch("effect", "", "", "group %s (%s): %s%s", g.Nick, id, strings.Join(diffs, "; "), h.jobsOf(p, "group:"+g.ref))
		}
	}
	for _, g := range initial.Groups {
		if gAccounted[g.ID] {
			continue
		}
		gAccounted[g.ID] = true
		t, ok := tg[g.ID]
		if !ok {
			h.mismatch("effect", "", "", "group %s (%s) disappeared though no job of the run named it", g.MailNickname, g.ID)
			continue
		}
		var want []string
		for _, m := range g.Members {
			if !deletedIDs[m] {
				want = append(want, m)
			}
		}
		if t.DisplayName != g.DisplayName || str(t.Description) != str(g.Description) || t.MailNickname != g.MailNickname || !sameStrings(want, t.Members) {
			h.mismatch("effect", "", "", "group %s (%s) changed though no job of the run named it: members %s", g.MailNickname, g.ID, setDiff(want, t.Members))
		}
	}
	for _, t := range truth.Groups {
		if !gAccounted[t.ID] {
			h.mismatch("effect", "", "", "group %s (%s) exists though no job created it", t.MailNickname, t.ID)
		}
	}
	return ids
}

// jobsOf lists the jobs of a target with their outcomes, for a mismatch's
// reader.
func (h *harness) jobsOf(p *plan, target string) string {
	var s []string
	for _, j := range p.jobs {
		if j.Target == target {
			s = append(s, jobs.ShortAction(j.Action)+" "+j.ID+" "+string(j.Params))
		}
	}
	if len(s) == 0 {
		return ""
	}
	return "\n    jobs of " + target + " in order:\n      " + strings.Join(s, "\n      ")
}

func setDiff(want, got []string) string {
	w, g := map[string]bool{}, map[string]bool{}
	for _, x := range want {
		w[strings.ToLower(x)] = true
	}
	for _, x := range got {
		g[strings.ToLower(x)] = true
	}
	var missing, extra []string
	for x := range w {
		if !g[x] {
			missing = append(missing, x)
		}
	}
	for x := range g {
		if !w[x] {
			extra = append(extra, x)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	return fmt.Sprintf("missing %v, extra %v", missing, extra)
}

// maskPasswords shortens opened passwords in a published result's key.
func maskPasswords(k string) string {
	for {
		i := strings.Index(k, `"opened:`)
		if i < 0 {
			return k
		}
		j := strings.Index(k[i+8:], `"`)
		if j < 0 {
			return k
		}
		k = k[:i] + `"` + mask(k[i+8:i+8+j]) + k[i+8+j:]
	}
}

func mask(pw string) string {
	if len(pw) <= 6 {
		return "***"
	}
	return pw[:6] + "…"
}

// checkPasswords: the password a user's last password job reports (given,
// or generated and sealed to the reply key) is the user's password in the
// tenant, and no password job set a password besides the one it reports.
func (h *harness) checkPasswords(p *plan, c *collected, ids createdIDs) {
	keys := make([]string, 0, len(p.users))
	for k := range p.users {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		u := p.users[k]
		if len(u.PasswordJobs) == 0 {
			continue
		}
		id := u.ID
		if u.Created {
			id = ids[k]
		}
		if id == "" {
			continue
		}
		var want []string
		known := true
		for _, jid := range u.PasswordJobs {
			j := p.byID[jid]
			if j.Given != "" {
				want = append(want, j.Given)
				continue
			}
			o, ok := h.outputOf(c, jid)
			if !ok || o.Password == nil {
				if ok {
					h.mismatch("password", jid, j.Action, "succeeded without a password sealed to the reply key")
				}
				known = false
				continue
			}
			pw, err := o.Password.Open(h.replyKey)
			if err != nil {
				h.mismatch("password", jid, j.Action, "the password in the result cannot be opened with the reply key: %v", err)
				known = false
				continue
			}
			want = append(want, string(pw))
		}
		cur, sets, why := h.proxy.currentPassword(id)
		last := p.byID[u.LastPasswordJob]
		if !u.Deleted && known && len(want) == len(u.PasswordJobs) {
			h.mu.Lock()
			h.rep.PasswordsChecked++
			h.mu.Unlock()
			if cur != want[len(want)-1] {
				h.mismatch("password", last.ID, last.Action, "user %s (%s): the tenant's password is %s, the job's result says %s (passwords set, in order: %s)",
					u.UPN, id, mask(cur), mask(want[len(want)-1]), passwordTrail(sets))
			} else if why != "" {
				h.mismatch("password", last.ID, last.Action, "user %s (%s): %s (passwords seen, in order: %s)", u.UPN, id, why, passwordTrail(sets))
			}
		}
		// Every password the tenant accepted must be one a job reports.
		reported := map[string]bool{}
		for _, w := range want {
			reported[w] = true
		}
		if known {
			for _, s := range sets {
				if !reported[s.password] {
					h.mismatch("password", "", jobs.ActionResetPassword, "user %s (%s): a password no job reported (%s) was set at %s; jobs %v reported %d passwords (trail: %s)",
						u.UPN, id, mask(s.password), s.at.Format("15:04:05.000"), u.PasswordJobs, len(want), passwordTrail(sets))
				}
			}
		}
	}
}

func passwordTrail(sets []passwordSet) string {
	var s []string
	for _, x := range sets {
		s = append(s, fmt.Sprintf("%s#%d@%s", mask(x.password), x.count, x.at.Format("15:04:05.000")))
	}
	return strings.Join(s, ", ")
}

// view is a consumer's asset view, rebuilt from every asset delta in
// stream order.
type view struct {
	users    map[string]jobs.UserAsset
	groups   map[string]jobs.GroupAsset
	licenses map[string]jobs.LicenseAsset
	writer   map[string]string   // id → sync id and stream seq of the last change
	history  map[string][]string // id → every change, oldest first
}

// summary is a short text of an asset record for a history line.
func summary(typ string, raw []byte) string {
	switch typ {
	case jobs.AssetUser:
		var a jobs.UserAsset
		_ = json.Unmarshal(raw, &a)
		var l []string
		for _, x := range a.AssignedLicenses {
			l = append(l, x.SkuPartNumber)
		}
		return fmt.Sprintf("enabled=%v licences=%v title=%q", a.AccountEnabled, l, str(a.JobTitle))
	case jobs.AssetGroup:
		var a jobs.GroupAsset
		_ = json.Unmarshal(raw, &a)
		return fmt.Sprintf("%d members", len(a.Members))
	}
	var a jobs.LicenseAsset
	_ = json.Unmarshal(raw, &a)
	return fmt.Sprintf("consumed=%d enabled=%d", a.ConsumedUnits, a.PrepaidUnits.Enabled)
}

// historyOf is the last changes of an asset, for a mismatch's reader.
func (v *view) historyOf(id string) string {
	h := v.history[id]
	if len(h) > 6 {
		h = append([]string{"…"}, h[len(h)-6:]...)
	}
	return "\n    changes in stream order: " + strings.Join(h, " → ")
}

func rebuild(c *collected) *view {
	v := &view{users: map[string]jobs.UserAsset{}, groups: map[string]jobs.GroupAsset{}, licenses: map[string]jobs.LicenseAsset{}, writer: map[string]string{},
		history: map[string][]string{}}
	for _, da := range c.deltas {
		d := da.d
		for _, ch := range d.Changes {
			v.writer[ch.ID] = fmt.Sprintf("%s %s (seq %d)", ch.Op, d.SyncID, da.seq)
			line := fmt.Sprintf("seq %d %s %s", da.seq, d.SyncID, ch.Op)
			if ch.Op == jobs.OpUpsert {
				line += " " + summary(d.Type, ch.Asset)
			} else {
				line += " " + ch.Reason
			}
			v.history[ch.ID] = append(v.history[ch.ID], line)
			switch {
			case ch.Op == jobs.OpMembers: // the rest of a large group's members
				var more jobs.GroupMembers
				_ = json.Unmarshal(ch.Asset, &more)
				g := v.groups[ch.ID]
				g.Members = append(g.Members, more.Members...)
				v.groups[ch.ID] = g
			case ch.Op == jobs.OpDelete:
				switch d.Type {
				case jobs.AssetUser:
					delete(v.users, ch.ID)
				case jobs.AssetGroup:
					delete(v.groups, ch.ID)
				default:
					delete(v.licenses, ch.ID)
				}
			case d.Type == jobs.AssetUser:
				var a jobs.UserAsset
				_ = json.Unmarshal(ch.Asset, &a)
				v.users[ch.ID] = a
			case d.Type == jobs.AssetGroup:
				var a jobs.GroupAsset
				_ = json.Unmarshal(ch.Asset, &a)
				v.groups[ch.ID] = a
			default:
				var a jobs.LicenseAsset
				_ = json.Unmarshal(ch.Asset, &a)
				v.licenses[ch.ID] = a
			}
		}
	}
	return v
}

func (h *harness) checkAssets(c *collected, truth *graphsim.Snapshot) {
	v := rebuild(c)
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	seen := map[string]bool{}
	for _, t := range truth.Users {
		seen[t.ID] = true
		a, ok := v.users[t.ID]
		if !ok {
			add("user %s (%s) is missing from the view (last change: %s)%s", t.UserPrincipalName, t.ID, v.writer[t.ID], v.historyOf(t.ID))
			continue
		}
		var d []string
		cmp := func(name, got, want string) {
			if got != want {
				d = append(d, fmt.Sprintf("%s %q, truth %q", name, got, want))
			}
		}
		cmp("userPrincipalName", a.UserPrincipalName, t.UserPrincipalName)
		cmp("displayName", a.DisplayName, t.DisplayName)
		cmp("givenName", str(a.GivenName), str(t.GivenName))
		cmp("jobTitle", str(a.JobTitle), str(t.JobTitle))
		cmp("department", str(a.Department), str(t.Department))
		cmp("officeLocation", str(a.OfficeLocation), str(t.OfficeLocation))
		cmp("mobilePhone", str(a.MobilePhone), str(t.MobilePhone))
		cmp("usageLocation", str(a.UsageLocation), str(t.UsageLocation))
		cmp("accountEnabled", fmt.Sprint(a.AccountEnabled), fmt.Sprint(t.AccountEnabled))
		al := map[string][]string{}
		for _, l := range a.AssignedLicenses {
			al[l.SkuID] = l.DisabledPlans
			if l.SkuPartNumber == "" {
				d = append(d, "licence "+l.SkuID+" without its part number")
			}
		}
		cmp("licences", licenceText(al), licenceText(truthLicences(t)))
		if len(d) > 0 {
			add("user %s (%s): %s (last change: %s)%s", t.UserPrincipalName, t.ID, strings.Join(d, "; "), v.writer[t.ID], v.historyOf(t.ID))
		}
	}
	for id, a := range v.users {
		if !seen[id] {
			add("user %s (%s) is in the view but not in the tenant (last change: %s)%s", a.UserPrincipalName, id, v.writer[id], v.historyOf(id))
		}
	}
	seen = map[string]bool{}
	for _, t := range truth.Groups {
		seen[t.ID] = true
		a, ok := v.groups[t.ID]
		if !ok {
			add("group %s (%s) is missing from the view (last change: %s)%s", t.MailNickname, t.ID, v.writer[t.ID], v.historyOf(t.ID))
			continue
		}
		var d []string
		if a.DisplayName != t.DisplayName || a.MailNickname != t.MailNickname {
			d = append(d, fmt.Sprintf("name %q/%q, truth %q/%q", a.DisplayName, a.MailNickname, t.DisplayName, t.MailNickname))
		}
		if str(a.Description) != str(t.Description) || str(a.Visibility) != str(t.Visibility) {
			d = append(d, fmt.Sprintf("description/visibility %q/%q, truth %q/%q", str(a.Description), str(a.Visibility), str(t.Description), str(t.Visibility)))
		}
		if !sameStrings(a.Members, t.Members) {
			d = append(d, "members: view vs truth "+setDiff(t.Members, a.Members))
		}
		if len(d) > 0 {
			add("group %s (%s): %s (last change: %s)%s", t.MailNickname, t.ID, strings.Join(d, "; "), v.writer[t.ID], v.historyOf(t.ID))
		}
	}
	for id, a := range v.groups {
		if !seen[id] {
			add("group %s (%s) is in the view but not in the tenant (last change: %s)%s", a.MailNickname, id, v.writer[id], v.historyOf(id))
		}
	}
	for _, s := range truth.SKUs {
		l, ok := v.licenses[s.SkuID]
		if !ok {
			add("licence %s is missing from the view%s", s.SkuPartNumber, v.historyOf(s.SkuID))
			continue
		}
		if l.ConsumedUnits != s.Consumed || l.PrepaidUnits.Enabled != s.Enabled || l.AvailableUnits != s.Enabled-s.Consumed {
			add("licence %s: consumed %d, enabled %d, available %d; truth %d, %d, %d (last change: %s)%s", s.SkuPartNumber, l.ConsumedUnits, l.PrepaidUnits.Enabled,
				l.AvailableUnits, s.Consumed, s.Enabled, s.Enabled-s.Consumed, v.writer[s.SkuID], v.historyOf(s.SkuID))
		}
	}
	for i, s := range out {
		if i == maxAssetMismatches {
			h.mismatch("assets", "", "", "… and %d more asset differences", len(out)-i)
			break
		}
		h.mismatch("assets", "", "", "%s", s)
	}
}

func (h *harness) checkIndicators(c *collected, truth *graphsim.Snapshot) {
	if len(c.inds) == 0 {
		h.mismatch("indicators", "", "", "no indicator snapshot was published")
		return
	}
	last := c.inds[len(c.inds)-1]
	want := jobs.Indicators{UsersTotal: len(truth.Users), GroupsTotal: len(truth.Groups)}
	for _, u := range truth.Users {
		if u.AccountEnabled {
			want.UsersEnabled++
		}
		if len(u.AssignedLicenses) > 0 {
			want.UsersLicensed++
		}
	}
	for _, s := range truth.SKUs {
		want.LicensesTotal += s.Enabled
		want.LicensesConsumed += s.Consumed
	}
	got := fmt.Sprintf("users %d (enabled %d, licensed %d), groups %d, licences %d of %d", last.UsersTotal, last.UsersEnabled, last.UsersLicensed, last.GroupsTotal, last.LicensesConsumed, last.LicensesTotal)
	exp := fmt.Sprintf("users %d (enabled %d, licensed %d), groups %d, licences %d of %d", want.UsersTotal, want.UsersEnabled, want.UsersLicensed, want.GroupsTotal, want.LicensesConsumed, want.LicensesTotal)
	if got != exp {
		h.mismatch("indicators", "", "", "the last snapshot (sync %s) says %s; the tenant has %s", last.SyncID, got, exp)
	}
}

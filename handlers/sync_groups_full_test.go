package handlers_test

import (
	"bytes"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// groupChanges are the m365_group changes a round published, by group id
// (a group's own changes in their order; groups in any order).
func (e *env) groupChanges(instance, syncID string) map[string][]string {
	out := map[string][]string{}
	for _, d := range workertest.Decode[jobs.AssetDelta](e.t, workertest.Messages(e.t, e.js, "M365_RESULTS", "m365.results."+instance+".assets."+jobs.AssetGroup)) {
		if d.SyncID != syncID {
			continue
		}
		for _, ch := range d.Changes {
			var b bytes.Buffer
			b.WriteString(ch.Op + " " + ch.Reason + " ")
			b.Write(ch.Asset)
			out[ch.ID] = append(out[ch.ID], b.String())
		}
	}
	return out
}

func sameChanges(t *testing.T, what string, got, want map[string][]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d groups published in parallel, %d by the walk", what, len(got), len(want))
	}
	for id, w := range want {
		if g := got[id]; !slices.Equal(g, w) {
			t.Errorf("%s: group %s published in parallel as\n%.300q\nby the walk as\n%.300q", what, id, g, w)
		}
	}
}

// A full round that reads the groups in parallel (ids listed, then delta
// filtered on chunks of them, then the changes since its tracking point)
// publishes what the one walk from scratch publishes, and so does the next
// incremental round from the link it stored. Groups larger than a delta
// entry and pages of a few entries make the large groups arrive in pieces.
func TestParallelGroupsPublishWhatTheWalkDoes(t *testing.T) {
	var filtered atomic.Int64
	o := graphsim.Options{Users: 5000, Groups: 140, DeltaPageSize: 7, NoThrottling: true, BeforeRequest: func(r *http.Request) {
		if r.URL.Path == "/v1.0/groups/delta" && r.URL.Query().Has("$filter") {
			filtered.Add(1)
		}
	}}
	walk := newEnv(t, o)
	walk.groupSegments = -1
	par := newEnvOn(t, walk.sim)
	par.groupSegments = 1
	for _, e := range []*env{walk, par} {
		e.startWorker(worker.Config{})
		e.addInstance("acme", 0, time.Hour)
	}
	walkFull := walk.syncNow("acme", true)
	if n := filtered.Load(); n != 0 {
		t.Fatalf("the walk made %d filtered group delta requests", n)
	}
	parFull := par.syncNow("acme", true)
	if n := filtered.Load(); n < 3 {
		t.Fatalf("the parallel round made %d filtered group delta requests, want one per chunk of ids", n)
	}
	sameChanges(t, "full round", par.groupChanges("acme", parFull.SyncID), walk.groupChanges("acme", walkFull.SyncID))
	if parFull.Counts[jobs.AssetGroup] != walkFull.Counts[jobs.AssetGroup] {
		t.Errorf("counts: parallel %+v, walk %+v", parFull.Counts, walkFull.Counts)
	}

	// Changes to groups and members, then each incremental round.
	tenant, upn := walk.sim.Credentials()[0].TenantID, firstUser(t, walk.sim)
	_ = walk.sim.Mutate(tenant, func(a *graphsim.Admin) error {
		a.RandomChanges(60, 7)
		g := a.CreateGroup("late", "A late group")
		a.SetMember(g, a.User(upn).ID, true)
		return nil
	})
	walkInc := walk.syncNow("acme", false)
	parInc := par.syncNow("acme", false)
	if walkInc.Mode != jobs.ModeIncremental || parInc.Mode != jobs.ModeIncremental {
		t.Fatalf("modes: walk %s, parallel %s; want incremental rounds", walkInc.Mode, parInc.Mode)
	}
	inc := walk.groupChanges("acme", walkInc.SyncID)
	if len(inc) == 0 {
		t.Fatal("the changes touched no group")
	}
	sameChanges(t, "incremental round", par.groupChanges("acme", parInc.SyncID), inc)
	walk.checkAgainstTruth("acme", 0)
	par.checkAgainstTruth("acme", 0)
}

// A group a parallel full round read and then sees removed in its catch-up
// delta is deleted once, as soft_deleted, and not a second time as
// missing_after_full_sync by the round's pass over the stored states (as
// TestFullRoundDeletesAUserRemovedMeanwhileOnce for users).
func TestFullRoundDeletesAGroupRemovedMeanwhileOnce(t *testing.T) {
	var sim atomic.Pointer[graphsim.Server]
	var armed atomic.Bool
	var deleted, victim atomic.Value
	o := graphsim.Options{Users: 40, Groups: 12, NoThrottling: true, BeforeRequest: func(r *http.Request) {
		tok := r.URL.Query().Get("$deltatoken")
		if r.URL.Path != "/v1.0/groups/delta" || tok == "" || tok == "latest" || !armed.CompareAndSwap(true, false) {
			return
		}
		// The round's catch-up from its tracking point: a group it read
		// is deleted before it.
		s := sim.Load()
		_ = s.Mutate(s.Credentials()[0].TenantID, func(a *graphsim.Admin) error {
			g := a.Group(victim.Load().(string))
			deleted.Store(g.ID)
			a.DeleteGroup(g)
			return nil
		})
	}}
	e := newEnv(t, o)
	sim.Store(e.sim)
	e.groupSegments = 1
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	e.syncNow("acme", true) // the state knows every group
	snap, err := e.sim.Export(e.sim.Credentials()[0].TenantID)
	if err != nil {
		t.Fatal(err)
	}
	victim.Store(snap.Groups[0].ID)
	armed.Store(true)
	rep := e.syncNow("acme", true)
	id, _ := deleted.Load().(string)
	if id == "" {
		t.Fatal("the full round made no catch-up delta request")
	}
	changes := e.groupChanges("acme", rep.SyncID)[id]
	if len(changes) != 1 || changes[0] != jobs.OpDelete+" "+jobs.ReasonSoftDeleted+" " {
		t.Errorf("the round published the group removed meanwhile as %q, want one delete as %s", changes, jobs.ReasonSoftDeleted)
	}
	e.syncNow("acme", false)
	e.checkAgainstTruth("acme", 0)
}

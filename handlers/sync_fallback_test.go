package handlers_test

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// A full round whose parallel segments do not add up to the tenant (a user
// whose name starts with a character no segment covers) reads the users by
// delta from scratch instead. A user the segments read and deleted for
// good before that walk is not in it, nor in any later delta: the round
// must delete it, not keep it as seen (a likely cause of TestChaos's
// indicators once counting 312 users in a tenant of 309).
func TestFullRoundFallbackForgetsUsersDeletedMeanwhile(t *testing.T) {
	var sim atomic.Pointer[graphsim.Server]
	var armed atomic.Bool
	var deleted atomic.Value
	o := graphsim.Options{Users: 40, Groups: 4, NoThrottling: true, BeforeRequest: func(r *http.Request) {
		q := r.URL.Query()
		if r.URL.Path != "/v1.0/users/delta" || q.Has("$deltatoken") || q.Has("$skiptoken") || !armed.CompareAndSwap(true, false) {
			return
		}
		// The walk from scratch begins: a user the segments read is
		// deleted before it.
		deleted.Store(deleteFirstUser(t, sim.Load(), true))
	}}
	e := newEnv(t, o)
	sim.Store(e.sim)
	tenant := e.sim.Credentials()[0].TenantID
	_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error { a.CreateUser("_odd", "Odd One"); return nil })
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	armed.Store(true)
	e.syncNow("acme", true)
	if deleted.Load() == nil {
		t.Fatal("the round did not fall back to a walk from scratch")
	}
	// The groups were read as they were before the deletion (their delta
	// runs beside the users'): the next round brings their members up to
	// date. The deleted user is in no delta after the walk.
	e.syncNow("acme", false)
	e.checkAgainstTruth("acme", 0)
}

// deleteFirstUser deletes the tenant's first user (to the recycle bin, or
// for good with purge) and returns its id.
func deleteFirstUser(t *testing.T, s *graphsim.Server, purge bool) string {
	upn, id := firstUser(t, s), ""
	_ = s.Mutate(s.Credentials()[0].TenantID, func(a *graphsim.Admin) error {
		u := a.User(upn)
		id = u.ID
		a.DeleteUser(u)
		if purge {
			return a.Purge(u.ID)
		}
		return nil
	})
	return id
}

// firstUser is the UPN of the tenant's first user in the simulator's order.
func firstUser(t *testing.T, s *graphsim.Server) string {
	snap, err := s.Export(s.Credentials()[0].TenantID)
	if err != nil {
		t.Error(err)
		return ""
	}
	return snap.Users[0].UserPrincipalName
}

// A user a full round reads and then sees removed in its catch-up delta
// (deleted between the two reads) is deleted once, as soft_deleted: the
// round has accounted for it, and its pass over the stored states (which
// runs before the round's own deletes are stored) must not delete it again
// as missing_after_full_sync (the chaos run's rounds published both).
func TestFullRoundDeletesAUserRemovedMeanwhileOnce(t *testing.T) {
	var sim atomic.Pointer[graphsim.Server]
	var armed atomic.Bool
	var deleted atomic.Value
	o := graphsim.Options{Users: 40, Groups: 4, NoThrottling: true, BeforeRequest: func(r *http.Request) {
		tok := r.URL.Query().Get("$deltatoken")
		if r.URL.Path != "/v1.0/users/delta" || tok == "" || tok == "latest" || !armed.CompareAndSwap(true, false) {
			return
		}
		// The round's catch-up from its tracking point: a user its
		// segments read is deleted (to the recycle bin) before it.
		deleted.Store(deleteFirstUser(t, sim.Load(), false))
	}}
	e := newEnv(t, o)
	sim.Store(e.sim)
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	e.syncNow("acme", true) // the state knows every user
	armed.Store(true)
	rep := e.syncNow("acme", true)
	id, _ := deleted.Load().(string)
	if id == "" {
		t.Fatal("the full round made no catch-up delta request")
	}
	var reasons []string
	for _, d := range workertest.Decode[jobs.AssetDelta](t, workertest.Messages(t, e.js, "M365_RESULTS", "m365.results.acme.assets."+jobs.AssetUser)) {
		for _, ch := range d.Changes {
			if d.SyncID == rep.SyncID && ch.ID == id && ch.Op == jobs.OpDelete {
				reasons = append(reasons, ch.Reason)
			}
		}
	}
	if len(reasons) != 1 || reasons[0] != jobs.ReasonSoftDeleted {
		t.Errorf("the round deleted the user removed meanwhile as %v, want once as %s", reasons, jobs.ReasonSoftDeleted)
	}
	e.syncNow("acme", false)
	e.checkAgainstTruth("acme", 0)
}

// A user a full round reads and then sees changed in its catch-up delta is
// published again; the round counts its indicators from what it published,
// so the user is counted once, as it is now (here: disabled).
func TestFullRoundCountsAUserChangedMeanwhileOnce(t *testing.T) {
	var sim atomic.Pointer[graphsim.Server]
	var armed atomic.Bool
	var changed atomic.Bool
	o := graphsim.Options{Users: 40, Groups: 4, NoThrottling: true, BeforeRequest: func(r *http.Request) {
		tok := r.URL.Query().Get("$deltatoken")
		if r.URL.Path != "/v1.0/users/delta" || tok == "" || tok == "latest" || !armed.CompareAndSwap(true, false) {
			return
		}
		s := sim.Load()
		upn := firstUser(t, s)
		_ = s.Mutate(s.Credentials()[0].TenantID, func(a *graphsim.Admin) error {
			u := a.User(upn)
			if !u.AccountEnabled {
				t.Errorf("%s is disabled already", upn)
			}
			a.UpdateUser(u, func(u *graphsim.User) { u.AccountEnabled = false })
			return nil
		})
		changed.Store(true)
	}}
	e := newEnv(t, o)
	sim.Store(e.sim)
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	armed.Store(true)
	e.syncNow("acme", true)
	if !changed.Load() {
		t.Fatal("the full round made no catch-up delta request")
	}
	e.checkAgainstTruth("acme", 0)
}

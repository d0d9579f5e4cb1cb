package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// A round given back mid-way (its worker drains with a 50 ms deadline) and
// rerun by another worker publishes every change: the rerun has a sync id of
// its own, so the results stream does not drop its batches as duplicates of
// the first run's (their numbering restarts).
func TestSyncGivenBackMidRound(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 3000, Groups: 20, NoThrottling: true, DeltaPageSize: 100,
		Latency: graphsim.Latency{Read: 20 * time.Millisecond}})
	e.startWorker(worker.Config{ID: "A", ShutdownTimeout: 50 * time.Millisecond})
	stopA := e.stops[len(e.stops)-1]
	e.addInstance("acme", 0, time.Hour)
	id, err := worker.RequestSync(context.Background(), e.js, jobs.Subjects{}, "default", "acme", false)
	if err != nil {
		t.Fatal(err)
	}
	userBatches := func() []jobs.AssetDelta {
		return workertest.Decode[jobs.AssetDelta](t, workertest.Messages(t, e.js, "M365_RESULTS", "m365.results.acme.assets.m365_user"))
	}
	workertest.Eventually(t, 60*time.Second, "A's first user batches", func() bool { return len(userBatches()) >= 2 })
	stopA() // drains: the round is cancelled after 50 ms and given back
	e.startWorker(worker.Config{ID: "B"})
	workertest.Eventually(t, 120*time.Second, "the round's report", func() bool {
		for _, r := range e.reports("acme") {
			if r.JobID == id && r.Outcome == jobs.OutcomeSucceeded {
				return true
			}
		}
		return false
	})
	published := map[string]bool{}
	for _, d := range userBatches() {
		for _, ch := range d.Changes {
			published[ch.ID] = true
		}
	}
	if len(published) != 3000 {
		t.Fatalf("%d of 3000 users were ever published", len(published))
	}
	e.checkAgainstTruth("acme", 0)
}

// reset_password run twice (a redelivery after the password was set but
// before the result was stored) sets one password: the second run sets the
// same one again and returns the same sealed copy, and that password is the
// one the user has.
func TestResetPasswordRedeliveredKeepsOnePassword(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 20, Groups: 2, NoThrottling: true})
	e.startWorker(worker.Config{})
	in := e.addInstance("acme", 0, time.Hour)
	tenant := e.sim.Credentials()[0].TenantID
	snap, _ := e.sim.Export(tenant)
	upn := snap.Users[3].UserPrincipalName
	requester, _ := nkeys.CreateCurveKeys()
	replyKey, _ := requester.PublicKey()
	raw, _ := json.Marshal(jobs.ResetPasswordParams{UserRef: jobs.UserRef{User: upn}, PasswordOptions: jobs.PasswordOptions{ReplyKey: replyKey}})
	b, _ := json.Marshal(&jobs.Job{SchemaVersion: 1, ID: "reset-twice", Instance: "acme", Action: jobs.FullAction(jobs.ActionResetPassword), Params: raw})
	j, p, err := jobs.ParseJob(b)
	if err != nil {
		t.Fatal(err)
	}
	var passwords []string
	for delivery := 1; delivery <= 2; delivery++ {
		out, err := e.reg[j.Action].Func(context.Background(), worker.NewJobForTest(j, p, &in, e.poolKey, e.store, delivery))
		if err != nil {
			t.Fatalf("delivery %d: %v", delivery, err)
		}
		pw, err := out.(handlers.UserOutput).Password.Open(requester)
		if err != nil {
			t.Fatal(err)
		}
		passwords = append(passwords, string(pw))
	}
	if passwords[0] != passwords[1] {
		t.Fatal("the redelivery set another password than the one the requester was given first")
	}
	var works bool
	_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error { works = a.User(upn).PasswordIs(passwords[1]); return nil })
	if !works {
		t.Fatal("the password the requester holds is not the user's password")
	}
}

// A round that runs past its deadline (a Graph too slow to ever finish) ends
// and fails once its attempts are used, saying so, instead of holding the
// instance's lock and a worker slot forever.
func TestSyncRoundDeadline(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 2000, Groups: 10, NoThrottling: true, DeltaPageSize: 50,
		Latency: graphsim.Latency{Read: 100 * time.Millisecond}})
	e.roundTimeout = 300 * time.Millisecond
	e.startWorker(worker.Config{MaxAttempts: 1})
	e.addInstance("acme", 0, time.Hour)
	id, err := worker.RequestSync(context.Background(), e.js, jobs.Subjects{}, "default", "acme", false)
	if err != nil {
		t.Fatal(err)
	}
	var rep jobs.SyncReport
	workertest.Eventually(t, 60*time.Second, "the round's report", func() bool {
		for _, r := range e.reports("acme") {
			if r.JobID == id {
				rep = r
				return true
			}
		}
		return false
	})
	if rep.Outcome != jobs.OutcomeFailed || rep.Error == nil || !strings.Contains(rep.Error.Message, "deadline") {
		t.Fatalf("report %+v (error %+v)", rep, rep.Error)
	}
}

// What an action published (its post-action refresh) is what the next round
// compares with: an admin's change that puts an object back the way the
// last round saw it is still published, and the indicators stay true.
func TestActionRefreshThenAdminChangeThenSync(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 30, Groups: 4, NoThrottling: true})
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	e.syncNow("acme", false)
	tenant := e.sim.Credentials()[0].TenantID
	snap, _ := e.sim.Export(tenant)
	var enabled, licensed, sku, created string
	for _, u := range snap.Users {
		switch {
		case enabled == "" && u.AccountEnabled:
			enabled = u.UserPrincipalName
		case licensed == "" && len(u.AssignedLicenses) > 0 && u.UserPrincipalName != enabled:
			licensed, sku = u.UserPrincipalName, u.AssignedLicenses[0].SkuID
		}
	}
	created = "made.by.action@" + strings.SplitN(enabled, "@", 2)[1]
	for _, run := range []struct {
		action string
		params any
	}{
		{jobs.ActionDisableUser, map[string]string{"user": enabled}},
		{jobs.ActionRemoveLicense, map[string]string{"user": licensed, "sku": sku}},
		{jobs.ActionCreateUser, map[string]any{"display_name": "Made By Action", "user_principal_name": created, "password": nil, "reply_key": mustReplyKey(t)}},
	} {
		if res := e.run("acme", run.action, run.params, false); res.Status != jobs.StatusSucceeded {
			t.Fatalf("%s: %+v", run.action, res.Error)
		}
	}
	// The admin puts the first user back as the last round saw it.
	_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error {
		a.UpdateUser(a.User(enabled), func(u *graphsim.User) { u.AccountEnabled = true })
		return nil
	})
	e.syncNow("acme", false)
	e.checkAgainstTruth("acme", 0)
}

func mustReplyKey(t *testing.T) string {
	kp, _ := nkeys.CreateCurveKeys()
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// A create whose answer is lost (Graph made the object, the connection
// dropped) is retried by the transport and meets "already exists": the
// object the job made is taken for the job's own, never a conflict, and
// each job makes exactly one object.
func TestCreateWithLostAnswerIsNoConflict(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 10, Groups: 2, NoThrottling: true, Seed: 7, ConsistencyDelay: 300 * time.Millisecond, Faults: graphsim.Faults{DropAfterWriteRate: 0.4}})
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	tenant := e.sim.Credentials()[0].TenantID
	snap, _ := e.sim.Export(tenant)
	domain := strings.SplitN(snap.Users[0].UserPrincipalName, "@", 2)[1]
	replyKey := mustReplyKey(t)
	for i := range 12 {
		upn := fmt.Sprintf("lost.answer%d@%s", i, domain)
		res := e.run("acme", jobs.ActionCreateUser, map[string]any{"display_name": fmt.Sprintf("Lost Answer %d", i), "user_principal_name": upn, "reply_key": replyKey}, false)
		if res.Status != jobs.StatusSucceeded {
			t.Fatalf("create_user %s: %+v", upn, res.Error)
		}
		nick := fmt.Sprintf("lost-answer-%d", i)
		res = e.run("acme", jobs.ActionCreateGroup, map[string]any{"display_name": "Lost Answer " + nick, "mail_nickname": nick, "group_type": "security"}, false)
		if res.Status != jobs.StatusSucceeded {
			t.Fatalf("create_group %s: %+v", nick, res.Error)
		}
	}
	snap, _ = e.sim.Export(tenant)
	users, groups := 0, 0
	for _, u := range snap.Users {
		if strings.HasPrefix(u.UserPrincipalName, "lost.answer") {
			users++
		}
	}
	for _, g := range snap.Groups {
		if strings.HasPrefix(g.MailNickname, "lost-answer-") {
			groups++
		}
	}
	if users != 12 || groups != 12 {
		t.Fatalf("%d users and %d groups made by 12 jobs each", users, groups)
	}
}

// A sealed secret only opens where it was sealed for: acme's client secret
// copied into another instance's record (pointing wherever the copier
// likes) is refused, and the round says how to seal it for that instance.
func TestSealedSecretCopiedToAnotherInstanceIsRefused(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 10, Groups: 2, NoThrottling: true})
	e.startWorker(worker.Config{})
	acme := e.addInstance("acme", 0, time.Hour)
	e.syncNow("acme", false)
	store, err := worker.OpenInstances(context.Background(), e.js, e.srv.Topology)
	if err != nil {
		t.Fatal(err)
	}
	evil := acme
	evil.ID = "evil"
	if _, err := store.Put(context.Background(), evil); err != nil {
		t.Fatal(err)
	}
	id, err := worker.RequestSync(context.Background(), e.js, jobs.Subjects{}, "default", "evil", false)
	if err != nil {
		t.Fatal(err)
	}
	var rep jobs.SyncReport
	workertest.Eventually(t, 60*time.Second, "evil's report", func() bool {
		for _, r := range e.reports("evil") {
			if r.JobID == id {
				rep = r
				return true
			}
		}
		return false
	})
	if rep.Outcome != jobs.OutcomeFailed || rep.Error == nil || rep.Error.Code != handlers.CodeSecretUnreadable ||
		!strings.Contains(rep.Error.Message, "instance=acme") || !strings.Contains(rep.Error.Message, "instance update evil") {
		t.Fatalf("report %+v (error %+v)", rep, rep.Error)
	}
}

// A licence removal whose answer is lost is sent again and meets "the user
// has no such licence": the job's own effect, a success.
func TestRemoveLicenseWithLostAnswer(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 40, Groups: 2, NoThrottling: true, Seed: 11, Faults: graphsim.Faults{DropAfterWriteRate: 0.5}})
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	tenant := e.sim.Credentials()[0].TenantID
	snap, _ := e.sim.Export(tenant)
	removed := 0
	for _, u := range snap.Users {
		if len(u.AssignedLicenses) == 0 || removed == 10 {
			continue
		}
		removed++
		res := e.run("acme", jobs.ActionRemoveLicense, map[string]string{"user": u.UserPrincipalName, "sku": u.AssignedLicenses[0].SkuID}, false)
		if res.Status != jobs.StatusSucceeded {
			t.Fatalf("remove_license for %s: %+v", u.UserPrincipalName, res.Error)
		}
	}
	if removed < 5 {
		t.Fatalf("only %d licensed users", removed)
	}
}

// A job that waited for its turn longer than the replication grace (behind
// a slow earlier job of its target) still gets the grace for the object that
// earlier job created: it runs from the job's first miss, not from its
// publication.
func TestReplicationGraceAfterAWaitForTheTurn(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 5, Groups: 1, NoThrottling: true, ConsistencyDelay: 4 * time.Second,
		Latency: graphsim.Latency{Write: 2500 * time.Millisecond}})
	e.consistencyWait = 2 * time.Second
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	snap, _ := e.sim.Export(e.sim.Credentials()[0].TenantID)
	upn := "late.turn@" + strings.SplitN(snap.Users[0].UserPrincipalName, "@", 2)[1]
	e.publish("acme", jobs.ActionCreateUser, "late-create", map[string]any{"display_name": "Late Turn", "user_principal_name": upn, "reply_key": mustReplyKey(t)}, false)
	title := "Waited"
	e.publish("acme", jobs.ActionUpdateUser, "late-update", jobs.UpdateUserParams{UserRef: jobs.UserRef{User: upn}, JobTitle: &title}, false)
	if res := e.result("acme", "late-create"); res.Status != jobs.StatusSucceeded {
		t.Fatalf("create: %+v", res.Error)
	}
	if res := e.result("acme", "late-update"); res.Status != jobs.StatusSucceeded {
		t.Fatalf("the update that waited for its turn: %+v", res.Error)
	}
}

// A group of 100,000 members (well over the NATS payload limit as one record)
// syncs and reaches the consumer's view whole, in a full round and after
// member changes in an incremental one, on a stock 1 MiB max_payload; its
// member chunks leave the state with it.
func TestGiantGroupRoundTrips(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 100000, Groups: 2, NoThrottling: true})
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	tenant := e.sim.Credentials()[0].TenantID
	snap, _ := e.sim.Export(tenant)
	var giant string
	_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error {
		g := a.CreateGroup("everyone", "Everyone")
		giant = g.ID
		for _, u := range snap.Users {
			a.SetMember(g, u.ID, true)
		}
		return nil
	})
	e.syncNow("acme", false)
	e.checkAgainstTruth("acme", 0)
	_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error {
		g := a.Group(giant)
		for _, u := range snap.Users[:50] {
			a.SetMember(g, u.ID, false)
		}
		return nil
	})
	if rep := e.syncNow("acme", false); rep.Mode != jobs.ModeIncremental {
		t.Fatalf("second round %s", rep.Mode)
	}
	e.checkAgainstTruth("acme", 0)
	_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error { a.DeleteGroup(a.Group(giant)); return nil })
	e.syncNow("acme", false)
	e.checkAgainstTruth("acme", 0)
	kv, _ := e.js.KeyValue(context.Background(), "m365_state")
	if l, err := kv.ListKeysFiltered(context.Background(), "a.default.acme.gm.>"); err == nil {
		for k := range l.Keys() {
			t.Errorf("member chunk %s left behind", k)
		}
	}
}

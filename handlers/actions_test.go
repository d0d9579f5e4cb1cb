package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// syncBuffer is a concurrency-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

var jobSeq int

// run publishes an action job and waits for its result.
func (e *env) run(instance, action string, params any, dryRun bool) jobs.ActionResult {
	e.t.Helper()
	jobSeq++
	id := fmt.Sprintf("%s-%d-%d", jobs.ShortAction(action), jobSeq, time.Now().UnixNano())
	e.publish(instance, action, id, params, dryRun)
	return e.result(instance, id)
}

func (e *env) publish(instance, action, id string, params any, dryRun bool) {
	e.t.Helper()
	raw, _ := json.Marshal(params)
	workertest.PublishJob(e.t, e.js, "default", &jobs.Job{ID: id, Instance: instance, Action: jobs.FullAction(action), Params: raw, DryRun: dryRun})
}

func (e *env) result(instance, id string) jobs.ActionResult {
	e.t.Helper()
	var res jobs.ActionResult
	workertest.Eventually(e.t, 90*time.Second, "the result of "+id, func() bool {
		for _, r := range workertest.Decode[jobs.ActionResult](e.t, workertest.Messages(e.t, e.js, "M365_RESULTS", "m365.results."+instance+".actions")) {
			if r.JobID == id {
				res = r
				return true
			}
		}
		return false
	})
	return res
}

func ok(t *testing.T, r jobs.ActionResult) map[string]any {
	t.Helper()
	if r.Status != jobs.StatusSucceeded {
		t.Fatalf("%s %s: %+v", r.Action, r.JobID, r.Error)
	}
	var out map[string]any
	_ = json.Unmarshal(r.Output, &out)
	return out
}

func failed(t *testing.T, r jobs.ActionResult, code string) {
	t.Helper()
	if r.Status != jobs.StatusFailed || r.Error == nil || r.Error.Code != code || r.Error.Message == "" {
		t.Fatalf("%s %s: got %+v, want failure %s", r.Action, r.JobID, r.Error, code)
	}
}

func TestActions(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 40, Groups: 8, NoThrottling: true, ConsistencyDelay: 500 * time.Millisecond})
	logs := &syncBuffer{}
	e.logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.consistencyWait = 3 * time.Second
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	tenant := e.sim.Credentials()[0].TenantID
	snap, _ := e.sim.Export(tenant)
	domain := strings.SplitN(snap.Users[len(snap.Users)-1].UserPrincipalName, "@", 2)[1]
	requester, _ := nkeys.CreateCurveKeys()
	replyKey, _ := requester.PublicKey()
	poolPub, _ := e.poolKey.PublicKey()
	const secretPassword = "Pl4intext!Secret-42"

	// The back-to-back chain with replication delay: create, licence, add to
	// a group, published at once.
	upn := "chain.user@" + domain
	e.publish("acme", jobs.ActionCreateUser, "chain-1", jobs.CreateUserParams{DisplayName: "Chain User", UserPrincipalName: upn, UsageLocation: "US",
		PasswordOptions: jobs.PasswordOptions{ReplyKey: replyKey}}, false)
	e.publish("acme", jobs.ActionAssignLicense, "chain-2", jobs.AssignLicenseParams{UserRef: jobs.UserRef{User: upn}, SKU: "FLOW_FREE"}, false)
	var sec string
	for _, g := range snap.Groups {
		if len(g.GroupTypes) == 0 {
			sec = g.MailNickname
			break
		}
	}
	e.publish("acme", jobs.ActionAddGroupMember, "chain-3", jobs.AddGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: sec}, Member: upn}}, false)
	created := ok(t, e.result("acme", "chain-1"))
	ok(t, e.result("acme", "chain-2"))
	ok(t, e.result("acme", "chain-3"))
	// The generated password comes back sealed to the requester.
	var sealed jobs.SealedSecret
	pb, _ := json.Marshal(created["password"])
	_ = json.Unmarshal(pb, &sealed)
	pw, err := sealed.Open(requester)
	if err != nil || len(pw) < 16 {
		t.Fatalf("generated password: %v", err)
	}
	generated := string(pw)
	userID := created["user_id"].(string)

	// Every other action's success path.
	ok(t, e.run("acme", jobs.ActionUpdateUser, jobs.UpdateUserParams{UserRef: jobs.UserRef{User: userID}, JobTitle: ptr("Analyst"), Department: ptr("Finance")}, false))
	out := ok(t, e.run("acme", jobs.ActionDisableUser, jobs.DisableUserParams{UserRef: jobs.UserRef{User: upn}}, false))
	if out["changed"] != true {
		t.Errorf("disable: %v", out)
	}
	out = ok(t, e.run("acme", jobs.ActionDisableUser, jobs.DisableUserParams{UserRef: jobs.UserRef{User: upn}}, false))
	if out["changed"] != false {
		t.Errorf("disabling a disabled account: %v", out)
	}
	ok(t, e.run("acme", jobs.ActionEnableUser, jobs.EnableUserParams{UserRef: jobs.UserRef{User: upn}}, false))
	// A given password is sealed for its job and user: it works there, and
	// copied into another job it is refused.
	sealedPw, _ := jobs.SealFor([]byte(secretPassword), poolPub, jobs.PasswordBinding("acme", "reset-given", upn))
	e.publish("acme", jobs.ActionResetPassword, "reset-given", jobs.ResetPasswordParams{UserRef: jobs.UserRef{User: upn}, PasswordOptions: jobs.PasswordOptions{Password: sealedPw}}, false)
	ok(t, e.result("acme", "reset-given"))
	failed(t, e.run("acme", jobs.ActionResetPassword, jobs.ResetPasswordParams{UserRef: jobs.UserRef{User: upn}, PasswordOptions: jobs.PasswordOptions{Password: sealedPw}}, false), handlers.CodeSecretUnreadable)
	ok(t, e.run("acme", jobs.ActionRemoveLicense, jobs.RemoveLicenseParams{UserRef: jobs.UserRef{User: upn}, SKU: "FLOW_FREE"}, false))
	out = ok(t, e.run("acme", jobs.ActionRemoveLicense, jobs.RemoveLicenseParams{UserRef: jobs.UserRef{User: upn}, SKU: "FLOW_FREE"}, false))
	if out["changed"] != false {
		t.Errorf("removing an absent licence: %v", out)
	}
	grp := ok(t, e.run("acme", jobs.ActionCreateGroup, jobs.CreateGroupParams{DisplayName: "Auditors", MailNickname: "auditors", GroupType: jobs.GroupTypeMicrosoft365, Visibility: "Private", Members: []string{upn}}, false))
	ok(t, e.run("acme", jobs.ActionUpdateGroup, jobs.UpdateGroupParams{GroupRef: jobs.GroupRef{Group: "auditors"}, Description: ptr("Internal audit")}, false))
	out = ok(t, e.run("acme", jobs.ActionAddGroupMember, jobs.AddGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: "auditors"}, Member: upn}}, false))
	if out["changed"] != false {
		t.Errorf("adding a member twice: %v", out)
	}
	ok(t, e.run("acme", jobs.ActionRemoveGroupMember, jobs.RemoveGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: "auditors"}, Member: upn}}, false))
	out = ok(t, e.run("acme", jobs.ActionRemoveGroupMember, jobs.RemoveGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: "auditors"}, Member: upn}}, false))
	if out["changed"] != false {
		t.Errorf("removing a non-member: %v", out)
	}
	ok(t, e.run("acme", jobs.ActionDeleteGroup, jobs.DeleteGroupParams{GroupRef: jobs.GroupRef{Group: grp["group_id"].(string)}}, false))
	out = ok(t, e.run("acme", jobs.ActionDeleteGroup, jobs.DeleteGroupParams{GroupRef: jobs.GroupRef{Group: grp["group_id"].(string)}}, false))
	if out["changed"] != false {
		t.Errorf("deleting a deleted group: %v", out)
	}
	ok(t, e.run("acme", jobs.ActionDeleteUser, jobs.DeleteUserParams{UserRef: jobs.UserRef{User: upn}}, false))
	out = ok(t, e.run("acme", jobs.ActionDeleteUser, jobs.DeleteUserParams{UserRef: jobs.UserRef{User: upn}}, false))
	if out["changed"] != false {
		t.Errorf("deleting what is in the recycle bin: %v", out)
	}

	// The effects, seen in the simulator.
	after, _ := e.sim.Export(tenant)
	found := false
	for _, id := range after.Deleted {
		found = found || id == userID
	}
	if !found {
		t.Error("the user is not in the recycle bin")
	}

	// Post-action refresh: the user's record was published right after the
	// update, tagged with the action's job.
	refreshed := false
	for _, d := range workertest.Decode[jobs.AssetDelta](t, workertest.Messages(t, e.js, "M365_RESULTS", "m365.results.acme.assets.m365_user")) {
		for _, ch := range d.Changes {
			if ch.ID == userID && strings.HasPrefix(d.SyncID, "action:") && strings.Contains(string(ch.Asset), `"jobTitle":"Analyst"`) {
				refreshed = true
			}
		}
	}
	if !refreshed {
		t.Error("no post-action refresh of the updated user")
	}

	// Failure codes.
	failed(t, e.run("acme", jobs.ActionDisableUser, jobs.DisableUserParams{UserRef: jobs.UserRef{User: "nobody@" + domain}}, false), handlers.CodeUserNotFound)
	failed(t, e.run("acme", jobs.ActionDeleteGroup, jobs.DeleteGroupParams{GroupRef: jobs.GroupRef{Group: "no-such-group"}}, false), handlers.CodeGroupNotFound)
	failed(t, e.run("acme", jobs.ActionCreateUser, jobs.CreateUserParams{DisplayName: "Dup", UserPrincipalName: snap.Users[4].UserPrincipalName,
		PasswordOptions: jobs.PasswordOptions{ReplyKey: replyKey}}, false), handlers.CodeUPNConflict)
	weak, _ := jobs.SealFor([]byte("weak"), poolPub, jobs.PasswordBinding("acme", "create-weak", "weak@"+domain))
	e.publish("acme", jobs.ActionCreateUser, "create-weak", jobs.CreateUserParams{DisplayName: "Weak", UserPrincipalName: "weak@" + domain,
		PasswordOptions: jobs.PasswordOptions{Password: weak}}, false)
	failed(t, e.result("acme", "create-weak"), handlers.CodePasswordPolicy)
	var noLoc, unlicensed string
	for _, u := range snap.Users {
		if u.UsageLocation == nil && noLoc == "" {
			noLoc = u.ID
		}
		if u.UsageLocation != nil && len(u.AssignedLicenses) == 0 && u.UserType == "Member" {
			unlicensed = u.ID
		}
	}
	r := e.run("acme", jobs.ActionAssignLicense, jobs.AssignLicenseParams{UserRef: jobs.UserRef{User: unlicensed}, SKU: "POWER_BI_PRO"}, false)
	failed(t, r, handlers.CodeNoFreeSeat)
	if !strings.Contains(r.Error.Message, " of ") || !strings.Contains(r.Error.Message, "used") {
		t.Errorf("no_free_seat without counts: %s", r.Error.Message)
	}
	failed(t, e.run("acme", jobs.ActionAssignLicense, jobs.AssignLicenseParams{UserRef: jobs.UserRef{User: noLoc}, SKU: "ENTERPRISEPACK"}, false), handlers.CodeUsageLocationMissing)
	failed(t, e.run("acme", jobs.ActionAssignLicense, jobs.AssignLicenseParams{UserRef: jobs.UserRef{User: unlicensed}, SKU: "NOT_A_SKU"}, false), handlers.CodeSKUNotFound)
	// A licence inherited through a group cannot be removed per user.
	var flowFree string
	for _, k := range snap.SKUs {
		if k.SkuPartNumber == "FLOW_FREE" {
			flowFree = k.SkuID
		}
	}
	if err := e.sim.Mutate(tenant, func(a *graphsim.Admin) error {
		a.InheritLicense(a.User(unlicensed), flowFree, a.Group(sec))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r = e.run("acme", jobs.ActionRemoveLicense, jobs.RemoveLicenseParams{UserRef: jobs.UserRef{User: unlicensed}, SKU: "FLOW_FREE"}, false)
	failed(t, r, handlers.CodeLicenseFromGroup)
	if !strings.Contains(r.Error.Message, "group") {
		t.Errorf("license_inherited_from_group message does not say what to do: %s", r.Error.Message)
	}
	_ = e.sim.Mutate(tenant, func(a *graphsim.Admin) error { a.SetLicenses(a.User(unlicensed)); return nil })
	for _, g := range snap.Groups {
		if len(g.GroupTypes) == 1 && g.GroupTypes[0] == "DynamicMembership" {
			failed(t, e.run("acme", jobs.ActionAddGroupMember, jobs.AddGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: g.ID}, Member: unlicensed}}, false), handlers.CodeDynamicGroup)
			break
		}
	}

	// A dry run writes nothing.
	before, _ := e.sim.Export(tenant)
	for _, c := range []struct {
		action string
		params any
	}{
		{jobs.ActionCreateUser, jobs.CreateUserParams{DisplayName: "Dry", UserPrincipalName: "dry@" + domain, PasswordOptions: jobs.PasswordOptions{ReplyKey: replyKey}}},
		{jobs.ActionDisableUser, jobs.DisableUserParams{UserRef: jobs.UserRef{User: snap.Users[5].ID}}},
		{jobs.ActionAssignLicense, jobs.AssignLicenseParams{UserRef: jobs.UserRef{User: unlicensed}, SKU: "FLOW_FREE"}},
		{jobs.ActionDeleteGroup, jobs.DeleteGroupParams{GroupRef: jobs.GroupRef{Group: sec}}},
	} {
		out := ok(t, e.run("acme", c.action, c.params, true))
		if out["changed"] != false || out["would_change"] == nil {
			t.Errorf("dry run %s: %v", c.action, out)
		}
	}
	afterDry, _ := e.sim.Export(tenant)
	a, _ := json.Marshal(before)
	b, _ := json.Marshal(afterDry)
	if !bytes.Equal(a, b) {
		t.Error("a dry run changed the tenant")
	}

	// No password or secret anywhere: logs, results, failures, jobs, state.
	secrets := []string{secretPassword, generated, e.sim.Credentials()[0].ClientSecret}
	var everything bytes.Buffer
	everything.WriteString(logs.String())
	for _, st := range []string{"M365_JOBS", "M365_RESULTS", "M365_FAILURES", "KV_m365_state", "KV_m365_instances"} {
		for _, m := range allMessages(t, e.js, st) {
			everything.Write(m)
		}
	}
	for _, s := range secrets {
		if bytes.Contains(everything.Bytes(), []byte(s)) {
			t.Errorf("a secret (%d characters) appears in the logs or the streams", len(s))
		}
	}
	if everything.Len() < 10000 {
		t.Errorf("searched only %d bytes", everything.Len())
	}
}

func allMessages(t *testing.T, js jetstream.JetStream, stream string) [][]byte {
	var out [][]byte
	for _, m := range workertest.Messages(t, js, stream, ">") {
		out = append(out, m.Data())
		for k, vs := range m.Headers() {
			out = append(out, []byte(k+strings.Join(vs, ",")))
		}
	}
	return out
}

func TestActionsAreIdempotentOnRedelivery(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 20, Groups: 4, NoThrottling: true})
	e.startWorker(worker.Config{})
	in := e.addInstance("acme", 0, time.Hour)
	tenant := e.sim.Credentials()[0].TenantID
	snap, _ := e.sim.Export(tenant)
	domain := strings.SplitN(snap.Users[len(snap.Users)-1].UserPrincipalName, "@", 2)[1]
	requester, _ := nkeys.CreateCurveKeys()
	replyKey, _ := requester.PublicKey()
	ctx := context.Background()
	// Run a handler the way the runtime does, twice: the second run stands
	// for a redelivery after a crash between the Graph call and the result.
	twice := func(action string, params any) (first, second any) {
		t.Helper()
		raw, _ := json.Marshal(params)
		job := &jobs.Job{SchemaVersion: 1, ID: "redeliver-" + jobs.ShortAction(action), Instance: "acme", Action: action, Params: raw}
		b, _ := json.Marshal(job)
		j, p, err := jobs.ParseJob(b)
		if err != nil {
			t.Fatal(err)
		}
		inst := in
		for i, dst := range []*any{&first, &second} {
			wj := worker.NewJobForTest(j, p, &inst, e.poolKey, e.store, i+1)
			out, err := e.reg[action].Func(ctx, wj)
			if err != nil {
				t.Fatalf("%s run %d: %v", action, i+1, err)
			}
			*dst = out
		}
		return first, second
	}
	upn := "twice@" + domain
	a, b := twice(jobs.ActionCreateUser, jobs.CreateUserParams{DisplayName: "Twice", UserPrincipalName: upn, PasswordOptions: jobs.PasswordOptions{ReplyKey: replyKey}})
	ua, ub := a.(handlers.UserOutput), b.(handlers.UserOutput)
	if ua.UserID == "" || ua.UserID != ub.UserID || ub.Password == nil || ub.Password.Box != ua.Password.Box {
		t.Errorf("create_user twice: %+v / %+v", ua, ub)
	}
	twice(jobs.ActionAddGroupMember, jobs.AddGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: snap.Groups[0].ID}, Member: upn}})
	g1, g2 := twice(jobs.ActionCreateGroup, jobs.CreateGroupParams{DisplayName: "Twice", MailNickname: "twice", GroupType: jobs.GroupTypeSecurity})
	if g1.(handlers.GroupOutput).GroupID != g2.(handlers.GroupOutput).GroupID {
		t.Errorf("create_group twice: %+v / %+v", g1, g2)
	}
	twice(jobs.ActionDeleteUser, jobs.DeleteUserParams{UserRef: jobs.UserRef{User: upn}})
	after, _ := e.sim.Export(tenant)
	users, groups := 0, 0
	for _, u := range after.Users {
		if u.UserPrincipalName == upn {
			users++
		}
	}
	for _, g := range after.Groups {
		if g.MailNickname == "twice" {
			groups++
		}
	}
	if users != 0 || groups != 1 || len(after.Deleted) != 1 {
		t.Errorf("effects: %d live users named %s, %d groups named twice, %d in the recycle bin", users, upn, groups, len(after.Deleted))
	}
}

func ptr[T any](v T) *T { return &v }

func TestSameTargetInPublicationOrder(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 20, Groups: 2, NoThrottling: true})
	e.startWorker(worker.Config{Concurrency: 8})
	e.addInstance("acme", 0, time.Hour)
	snap, _ := e.sim.Export(e.sim.Credentials()[0].TenantID)
	target, other := snap.Users[2].UserPrincipalName, snap.Users[3].UserPrincipalName
	const n = 15
	for i := 1; i <= n; i++ {
		e.publish("acme", jobs.ActionUpdateUser, fmt.Sprintf("order-%02d", i), jobs.UpdateUserParams{UserRef: jobs.UserRef{User: target}, JobTitle: ptr(fmt.Sprintf("t%02d", i))}, false)
		e.publish("acme", jobs.ActionUpdateUser, fmt.Sprintf("other-%02d", i), jobs.UpdateUserParams{UserRef: jobs.UserRef{User: other}, JobTitle: ptr(fmt.Sprintf("o%02d", i))}, false)
	}
	for i := 1; i <= n; i++ {
		ok(t, e.result("acme", fmt.Sprintf("order-%02d", i)))
	}
	// The effects in publication order: each job publishes the record it
	// made right after its change, under the target's lock, so the records
	// follow one another as the changes did. (A result's started_at is when
	// its delivery began, which may be before it waited for an earlier job
	// of its target: no order follows from it.)
	var titles []string
	for _, d := range workertest.Decode[jobs.AssetDelta](t, workertest.Messages(t, e.js, "M365_RESULTS", "m365.results.acme.assets.m365_user")) {
		if !strings.HasPrefix(d.SyncID, "action:order-") {
			continue
		}
		for _, ch := range d.Changes {
			var u jobs.UserAsset
			if json.Unmarshal(ch.Asset, &u) == nil && u.JobTitle != nil {
				titles = append(titles, *u.JobTitle)
			}
		}
	}
	var want []string
	for i := 1; i <= n; i++ {
		want = append(want, fmt.Sprintf("t%02d", i))
	}
	if !slices.Equal(titles, want) {
		t.Errorf("the target's records in the order they were made: %v, want %v", titles, want)
	}
	after, _ := e.sim.Export(e.sim.Credentials()[0].TenantID)
	for _, u := range after.Users {
		if u.UserPrincipalName == target && (u.JobTitle == nil || *u.JobTitle != fmt.Sprintf("t%02d", n)) {
			t.Errorf("final job title %v, want the last published", u.JobTitle)
		}
	}
}

package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
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

// userAssets are the user assets published for id, by sync id.
func (e *env) userAssets(instance, id string) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for _, d := range workertest.Decode[jobs.AssetDelta](e.t, workertest.Messages(e.t, e.js, "M365_RESULTS", "m365.results."+instance+".assets."+jobs.AssetUser)) {
		for _, ch := range d.Changes {
			if ch.ID == id && ch.Op == jobs.OpUpsert {
				out[d.SyncID] = ch.Asset
			}
		}
	}
	return out
}

// POST /users answers with Graph's default set only; the asset published
// after create_user must still be the user as the next round sees it
// (enabled, usage location, user type, creation date, licences), not the
// POST's answer read as if it held every property.
func TestCreatedUsersAssetIsTheNextRoundsRecord(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 12, Groups: 2, NoThrottling: true})
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	e.syncNow("acme", true)
	requester, _ := nkeys.CreateCurveKeys()
	replyKey, _ := requester.PublicKey()
	r := e.run("acme", jobs.ActionCreateUser, jobs.CreateUserParams{DisplayName: "Fidelity User", UserPrincipalName: "fidelity.user@" + e.sim.Credentials()[0].Domain,
		UsageLocation: "SE", Department: "Finance", PasswordOptions: jobs.PasswordOptions{ReplyKey: replyKey}}, false)
	id := ok(t, r)["user_id"].(string)
	byAction := e.userAssets("acme", id)["action:"+r.JobID]
	if byAction == nil {
		t.Fatalf("no user asset published by create_user %s", r.JobID)
	}
	e.syncNow("acme", true)
	var byRound json.RawMessage
	for sid, a := range e.userAssets("acme", id) {
		if !strings.HasPrefix(sid, "action:") {
			byRound = a
		}
	}
	if byRound == nil {
		t.Fatal("the full round after create_user published no asset for the user")
	}
	if !bytes.Equal(byAction, byRound) {
		t.Fatalf("create_user published\n  %s\nthe next round published\n  %s", byAction, byRound)
	}
	var a jobs.UserAsset
	_ = json.Unmarshal(byAction, &a)
	if !a.AccountEnabled || a.UsageLocation == nil || *a.UsageLocation != "SE" || a.UserType != "Member" || a.CreatedDateTime == nil {
		t.Fatalf("created user's asset lacks what Graph returns only on $select: %s", byAction)
	}

	// A request Graph refuses leaves both ids in the failure, for
	// Microsoft support.
	r = e.run("acme", jobs.ActionUpdateUser, jobs.UpdateUserParams{UserRef: jobs.UserRef{User: id}, UserPrincipalName: ptr("fidelity.user@unverified.example.com")}, false)
	failed(t, r, handlers.CodeGraphRejected)
	if r.Error.GraphRequestID == "" || !regexp.MustCompile(`^[0-9a-f-]{36}$`).MatchString(r.Error.GraphClientRequestID) {
		t.Fatalf("a refused update: request-id %q, client-request-id %q", r.Error.GraphRequestID, r.Error.GraphClientRequestID)
	}
}

// The dry-run membership check filters a group's members: an advanced query
// (ConsistencyLevel: eventual and $count=true, group-list-members), which the
// simulator refuses without them as Graph's description does.
func TestDryRunMembershipCheckIsADocumentedQuery(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 12, Groups: 3, NoThrottling: true})
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	snap, _ := e.sim.Export(e.sim.Credentials()[0].TenantID)
	var group, member, other string
	for _, g := range snap.Groups {
		if len(g.Members) > 0 && g.MembershipRule == nil {
			group, member = g.MailNickname, g.Members[0]
			break
		}
	}
	for _, u := range snap.Users {
		if u.ID != member {
			other = u.ID
		}
	}
	if group == "" {
		t.Fatal("the seeded tenant has no static group with members")
	}
	add := ok(t, e.run("acme", jobs.ActionAddGroupMember, jobs.AddGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: group}, Member: other}}, true))
	rm := ok(t, e.run("acme", jobs.ActionRemoveGroupMember, jobs.RemoveGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: group}, Member: member}}, true))
	if add["would_change"] == nil || rm["would_change"] == nil {
		t.Fatalf("dry runs: add %v, remove %v; both would change", add, rm)
	}
	// update_group to HiddenMembership: Graph allows it only at creation.
	failed(t, e.run("acme", jobs.ActionUpdateGroup, jobs.UpdateGroupParams{GroupRef: jobs.GroupRef{Group: group}, Visibility: ptr("HiddenMembership")}, false), jobs.CodeInvalidParams)
}

// A post-action refresh names the user's licences from the SKUs the
// instance's client has read (a round reads them every time), not by
// reading subscribedSkus (3 resource units) for every action; a SKU bought
// since the last read is read and named.
func TestRefreshedUserNamesItsLicencesWithoutReadingTheSKUsEachTime(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 12, Groups: 2, NoThrottling: true})
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	e.syncNow("acme", true)
	tenant := e.sim.Credentials()[0].TenantID
	snap, _ := e.sim.Export(tenant)
	var u graphsim.SnapshotUser
	for _, su := range snap.Users {
		if len(su.AssignedLicenses) > 0 {
			u = su
			break
		}
	}
	if u.ID == "" {
		t.Fatal("no licensed user in the tenant")
	}
	update := func(title string) (jobs.UserAsset, int64) {
		t.Helper()
		before := e.sim.Requests.Load()
		r := e.run("acme", jobs.ActionUpdateUser, jobs.UpdateUserParams{UserRef: jobs.UserRef{User: u.ID}, JobTitle: ptr(title)}, false)
		ok(t, r)
		n := e.sim.Requests.Load() - before
		raw := e.userAssets("acme", u.ID)["action:"+r.JobID]
		var a jobs.UserAsset
		if err := json.Unmarshal(raw, &a); err != nil {
			t.Fatalf("the refreshed record of %s: %v (%s)", r.JobID, err, raw)
		}
		return a, n
	}
	a, n := update("Analyst")
	if n != 3 {
		t.Errorf("update_user made %d Graph requests, want 3 (find, PATCH, the refreshed user)", n)
	}
	if len(a.AssignedLicenses) != len(u.AssignedLicenses) || a.AssignedLicenses[0].SkuPartNumber != u.AssignedLicenses[0].SkuPartNumber {
		t.Fatalf("refreshed licences %+v, want %+v", a.AssignedLicenses, u.AssignedLicenses)
	}

	// A SKU bought and assigned since the round.
	const added = "4b9405b0-7788-4568-add1-99614e613b69"
	if err := e.sim.Mutate(tenant, func(ad *graphsim.Admin) error {
		ad.AddSKU(graphsim.SKU{SkuID: added, SkuPartNumber: "EXCHANGESTANDARD", Enabled: 5})
		ad.SetLicenses(ad.User(u.ID), u.AssignedLicenses[0].SkuID, added)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	a, n = update("Auditor")
	names := map[string]string{}
	for _, l := range a.AssignedLicenses {
		names[l.SkuID] = l.SkuPartNumber
	}
	if n != 4 || names[added] != "EXCHANGESTANDARD" {
		t.Fatalf("after a SKU was bought: %d Graph requests (want 4: the SKUs read again), licences %v", n, names)
	}
}

// A round that read a user before an action changed it may publish that
// older record after the action's refresh, and be cut off before it stores
// the user's state (the chaos run with seed 589539 did). The state then
// holds what the refresh published, which is not what consumers last got:
// the next round must publish the user again, not take the refresh's
// record for theirs.
func TestRoundAfterARefreshPublishesTheUserAgain(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 12, Groups: 2, NoThrottling: true})
	e.startWorker(worker.Config{})
	e.addInstance("acme", 0, time.Hour)
	first := e.syncNow("acme", true)
	snap, _ := e.sim.Export(e.sim.Credentials()[0].TenantID)
	id := snap.Users[0].ID
	before := e.userAssets("acme", id)[first.SyncID]
	if before == nil {
		t.Fatal("the full round published no record of the user")
	}
	ok(t, e.run("acme", jobs.ActionUpdateUser, jobs.UpdateUserParams{UserRef: jobs.UserRef{User: id}, JobTitle: ptr("Refreshed")}, false))
	// The cut-off round's batch, published after the refresh, its state
	// never stored.
	stale := jobs.AssetDelta{SchemaVersion: jobs.SchemaVersion, Instance: "acme", SyncID: "sync-cut-off", Type: jobs.AssetUser, Mode: jobs.ModeIncremental,
		Batch: 1, Last: true, Changes: []jobs.AssetChange{{Op: jobs.OpUpsert, ID: id, Asset: before}}}
	raw, _ := json.Marshal(stale)
	if _, err := e.js.Publish(context.Background(), "m365.results.acme.assets."+jobs.AssetUser, raw); err != nil {
		t.Fatal(err)
	}
	e.syncNow("acme", false)
	var last json.RawMessage
	for _, d := range workertest.Decode[jobs.AssetDelta](t, workertest.Messages(t, e.js, "M365_RESULTS", "m365.results.acme.assets."+jobs.AssetUser)) {
		for _, ch := range d.Changes {
			if ch.ID == id && ch.Op == jobs.OpUpsert {
				last = ch.Asset
			}
		}
	}
	var a jobs.UserAsset
	_ = json.Unmarshal(last, &a)
	if a.JobTitle == nil || *a.JobTitle != "Refreshed" {
		t.Fatalf("consumers' last record of the user after the next round: %s", last)
	}
}

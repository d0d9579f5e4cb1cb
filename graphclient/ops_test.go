package graphclient_test

import (
	"context"
	"errors"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

func TestOperationsAndSentinels(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 40, Groups: 12, NoThrottling: true, NoUserAdminRole: true})
	cfg := simConfig(sim, 0)
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, MaxWait: time.Second}), cfg)
	ctx := context.Background()
	snap, _ := sim.Export(cfg.TenantID)
	domain := strings.SplitN(snap.Users[0].UserPrincipalName, "@", 2)[1]
	if strings.Contains(snap.Users[0].UserPrincipalName, "#EXT#") {
		domain = strings.SplitN(snap.Users[1].UserPrincipalName, "@", 2)[1]
	}
	is := func(name string, err error, target error) {
		t.Helper()
		if !errors.Is(err, target) {
			t.Errorf("%s: %v, want %v", name, err, target)
		}
	}

	// Lookups.
	u, err := c.GetUser(ctx, snap.Users[3].UserPrincipalName)
	if err != nil || u.ID != snap.Users[3].ID || u.AccountEnabled == nil {
		t.Fatalf("GetUser by UPN: %+v %v", u, err)
	}
	_, err = c.GetUser(ctx, "nobody@"+domain)
	is("unknown user", err, graphclient.ErrNotFound)
	var ge *graphclient.Error
	if !errors.As(err, &ge) || ge.RequestID == "" || ge.Code != "Request_ResourceNotFound" {
		t.Errorf("typed error: %+v", ge)
	}
	g, err := c.GetGroup(ctx, snap.Groups[2].MailNickname)
	if err != nil || g.ID != snap.Groups[2].ID {
		t.Fatalf("GetGroup by nickname: %v", err)
	}
	if g2, err := c.GetGroup(ctx, snap.Groups[2].ID); err != nil || g2.MailNickname != snap.Groups[2].MailNickname {
		t.Fatalf("GetGroup by id: %v", err)
	}
	_, err = c.GetGroup(ctx, "no-such-group")
	is("unknown group", err, graphclient.ErrNotFound)
	sku, err := c.FindSKU(ctx, "ENTERPRISEPACK")
	if err != nil || sku.SkuID != "6fd2c87f-b296-42f0-b197-1e91e994b900" || len(sku.ServicePlans) == 0 {
		t.Fatalf("FindSKU: %+v %v", sku, err)
	}
	if s2, err := c.FindSKU(ctx, sku.SkuID); err != nil || s2.SkuPartNumber != "ENTERPRISEPACK" {
		t.Errorf("FindSKU by id: %v", err)
	}
	_, err = c.FindSKU(ctx, "NOPE")
	is("unknown SKU", err, graphclient.ErrNotFound)

	// Users.
	nu := graphclient.NewUser{DisplayName: "Op Test", UserPrincipalName: "op.test@" + domain, MailNickname: "op.test", AccountEnabled: true,
		Password: "Str0ng!Passw0rd", ForceChangePassword: true, JobTitle: "Clerk"}
	created, err := c.CreateUser(ctx, nu)
	if err != nil {
		t.Fatalf("CreateUser: %v", err)
	}
	_, err = c.CreateUser(ctx, nu)
	is("duplicate UPN", err, graphclient.ErrConflict)
	weak := nu
	weak.UserPrincipalName, weak.MailNickname, weak.Password = "op.weak@"+domain, "op.weak", "abc"
	_, err = c.CreateUser(ctx, weak)
	is("weak password", err, graphclient.ErrBadRequest)
	empty := ""
	dept := "Audit"
	if err := c.UpdateUser(ctx, created.ID, graphclient.UserPatch{JobTitle: &empty, Department: &dept}); err != nil {
		t.Fatalf("UpdateUser: %v", err)
	}
	back, _ := c.GetUser(ctx, created.ID)
	if back.JobTitle != nil || back.Department == nil || *back.Department != "Audit" {
		t.Errorf("after update: jobTitle %v department %v", back.JobTitle, back.Department)
	}
	err = c.SetPassword(ctx, created.ID, "An0ther!Passw0rd", true)
	is("reset without the role", err, graphclient.ErrForbidden)
	if err == nil || !strings.Contains(err.Error(), "User Administrator") {
		t.Errorf("reset error does not name the role: %v", err)
	}

	// Licences.
	var noLoc, full string
	for _, su := range snap.Users {
		if su.UsageLocation == nil && noLoc == "" {
			noLoc = su.ID
		}
		if su.UsageLocation != nil && len(su.AssignedLicenses) == 0 && su.UserType == "Member" {
			full = su.ID
		}
	}
	if noLoc == "" || full == "" {
		t.Fatalf("the seed lacks a user without usage location (%q) or an unlicensed member (%q)", noLoc, full)
	}
	pbi, _ := c.FindSKU(ctx, "POWER_BI_PRO")
	err = c.AssignLicense(ctx, full, []graphclient.LicenseChange{{SkuID: pbi.SkuID}}, nil)
	is("no free seat", err, graphclient.ErrBadRequest)
	if err == nil || !strings.Contains(err.Error(), "no free seat") {
		t.Errorf("no-seat error: %v", err)
	}
	err = c.AssignLicense(ctx, noLoc, []graphclient.LicenseChange{{SkuID: sku.SkuID}}, nil)
	if err == nil || !strings.Contains(err.Error(), "usage location") {
		t.Errorf("no usage location: %v", err)
	}
	flow, _ := c.FindSKU(ctx, "FLOW_FREE")
	if err := c.AssignLicense(ctx, full, []graphclient.LicenseChange{{SkuID: flow.SkuID, DisabledPlans: []string{flow.ServicePlans[0].ID}}}, nil); err != nil {
		t.Fatalf("assign: %v", err)
	}
	lu, _ := c.GetUser(ctx, full)
	if len(lu.AssignedLicenses) != 1 || lu.AssignedLicenses[0].SkuID != flow.SkuID || len(lu.AssignedLicenses[0].DisabledPlans) != 1 {
		t.Errorf("licences after assign: %+v", lu.AssignedLicenses)
	}
	if err := c.AssignLicense(ctx, full, nil, []string{flow.SkuID}); err != nil {
		t.Fatalf("remove licence: %v", err)
	}

	// Recycle bin.
	if err := c.DeleteUser(ctx, created.ID); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetUser(ctx, created.ID)
	is("deleted user", err, graphclient.ErrNotFound)
	if du, err := c.DeletedUser(ctx, created.ID); err != nil || du.UserPrincipalName != nu.UserPrincipalName {
		t.Errorf("DeletedUser: %+v %v", du, err)
	}
	if err := c.Restore(ctx, created.ID); err != nil {
		t.Fatalf("Restore: %v", err)
	}

	// Groups.
	sg, err := c.CreateGroup(ctx, graphclient.NewGroup{DisplayName: "Ops", MailNickname: "ops-sec", Members: []string{created.ID}})
	if err != nil || !sg.SecurityEnabled || sg.MailEnabled {
		t.Fatalf("CreateGroup security: %+v %v", sg, err)
	}
	ug, err := c.CreateGroup(ctx, graphclient.NewGroup{DisplayName: "Ops 365", MailNickname: "ops-365", Unified: true, Visibility: "Private"})
	if err != nil || ug.Mail == nil || ug.Visibility == nil || *ug.Visibility != "Private" {
		t.Fatalf("CreateGroup unified: %+v %v", ug, err)
	}
	if in, err := c.IsMember(ctx, sg.ID, created.ID); err != nil || !in {
		t.Errorf("bound member: %v %v", in, err)
	}
	err = c.AddMember(ctx, sg.ID, created.ID)
	is("member twice", err, graphclient.ErrConflict)
	if err := c.RemoveMember(ctx, sg.ID, created.ID); err != nil {
		t.Fatal(err)
	}
	err = c.RemoveMember(ctx, sg.ID, created.ID)
	is("remove non-member", err, graphclient.ErrNotFound)
	desc := "operations"
	if err := c.UpdateGroup(ctx, sg.ID, graphclient.GroupPatch{Description: &desc}); err != nil {
		t.Fatal(err)
	}
	for _, sgp := range snap.Groups {
		if len(sgp.GroupTypes) == 1 && sgp.GroupTypes[0] == "DynamicMembership" {
			err := c.AddMember(ctx, sgp.ID, created.ID)
			if err == nil || !strings.Contains(err.Error(), "rule-based") {
				t.Errorf("dynamic group: %v", err)
			}
			break
		}
	}
	if err := c.DeleteGroup(ctx, ug.ID); err != nil {
		t.Fatal(err)
	}

	// Counts.
	truth, _ := sim.Export(cfg.TenantID)
	want := graphclient.Counts{Users: len(truth.Users), Groups: len(truth.Groups)}
	for _, su := range truth.Users {
		if su.AccountEnabled {
			want.UsersEnabled++
		}
		if len(su.AssignedLicenses) > 0 {
			want.UsersLicensed++
		}
	}
	if got, err := c.CountDirectory(ctx); err != nil || got != want {
		t.Errorf("counts %+v %v, truth %+v", got, err, want)
	}

	// Throttled beyond the wait threshold.
	_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error { a.ThrottleNextWith(1, time.Minute, false); return nil })
	_, err = c.GetUser(ctx, created.ID)
	is("throttled", err, graphclient.ErrThrottled)
	if !errors.As(err, &ge) || ge.RetryAfter < 50*time.Second {
		t.Errorf("throttled error carries %v", err)
	}
}

func TestForbiddenAndDeltaExpired(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 20, Groups: 4, NoThrottling: true, ReadOnly: true, DeltaTokenTTL: 200 * time.Millisecond})
	cfg := simConfig(sim, 0)
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), cfg)
	ctx := context.Background()
	snap, _ := sim.Export(cfg.TenantID)
	job := "x"
	if err := c.UpdateUser(ctx, snap.Users[0].ID, graphclient.UserPatch{JobTitle: &job}); !errors.Is(err, graphclient.ErrForbidden) {
		t.Errorf("read-only write: %v", err)
	}
	link, err := c.UserDelta(ctx, "latest", func([]graphclient.UserChange) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	glink, err := c.GroupDelta(ctx, "latest", func([]graphclient.GroupChange) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error { a.ResetDelta(); return nil })
	if _, err := c.GroupDelta(ctx, glink, func([]graphclient.GroupChange) error { return nil }); !errors.Is(err, graphclient.ErrDeltaExpired) {
		t.Errorf("410 reset: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		link2, err := c.UserDelta(ctx, "latest", func([]graphclient.UserChange) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		_ = link
		time.Sleep(250 * time.Millisecond)
		_, err = c.UserDelta(ctx, link2, func([]graphclient.UserChange) error { return nil })
		if errors.Is(err, graphclient.ErrDeltaExpired) {
			var ge *graphclient.Error
			if !errors.As(err, &ge) || ge.Code != "syncStateNotFound" {
				t.Errorf("expired: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token never expired: %v", err)
		}
	}
}

func TestDeltaRoundsMatchGroundTruth(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 5100, Groups: 30, NoThrottling: true, DeltaDuplicateRate: 0.01})
	cfg := simConfig(sim, 0)
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), cfg)
	ctx := context.Background()
	usersNow := map[string]graphclient.User{}
	members := map[string]map[string]bool{}
	groupsNow := map[string]bool{}
	applyUsers := func(page []graphclient.UserChange) error {
		for _, ch := range page {
			if ch.Removed != "" {
				delete(usersNow, ch.ID)
			} else {
				usersNow[ch.ID] = *ch.User
			}
		}
		return nil
	}
	applyGroups := func(page []graphclient.GroupChange) error {
		for _, ch := range page {
			if ch.Removed != "" {
				delete(groupsNow, ch.ID)
				delete(members, ch.ID)
				continue
			}
			groupsNow[ch.ID] = true
			if members[ch.ID] == nil {
				members[ch.ID] = map[string]bool{}
			}
			for _, m := range ch.MembersAdded {
				members[ch.ID][m] = true
			}
			for _, m := range ch.MembersRemoved {
				delete(members[ch.ID], m)
			}
		}
		return nil
	}
	ulink, err := c.UserDelta(ctx, "", applyUsers)
	if err != nil {
		t.Fatal(err)
	}
	glink, err := c.GroupDelta(ctx, "", applyGroups)
	if err != nil {
		t.Fatal(err)
	}
	check := func(round int) {
		t.Helper()
		snap, _ := sim.Export(cfg.TenantID)
		if len(usersNow) != len(snap.Users) || len(groupsNow) != len(snap.Groups) {
			t.Fatalf("round %d: %d users (truth %d), %d groups (truth %d)", round, len(usersNow), len(snap.Users), len(groupsNow), len(snap.Groups))
		}
		for _, su := range snap.Users {
			u := usersNow[su.ID]
			if u.UserPrincipalName != su.UserPrincipalName || u.AccountEnabled == nil || *u.AccountEnabled != su.AccountEnabled || len(u.AssignedLicenses) != len(su.AssignedLicenses) {
				t.Fatalf("round %d: user %s differs", round, su.ID)
			}
		}
		for _, sg := range snap.Groups {
			var got []string
			for m := range members[sg.ID] {
				got = append(got, m)
			}
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(sg.Members, ",") {
				t.Fatalf("round %d: group %s has %d members, truth %d", round, sg.ID, len(got), len(sg.Members))
			}
		}
	}
	check(0)
	for round := 1; round <= 3; round++ {
		_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error { a.RandomChanges(100, uint64(round)); return nil })
		if ulink, err = c.UserDelta(ctx, ulink, applyUsers); err != nil {
			t.Fatal(err)
		}
		if glink, err = c.GroupDelta(ctx, glink, applyGroups); err != nil {
			t.Fatal(err)
		}
		check(round)
	}
}

func TestBatchRetriesThrottledItems(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 2, NoThrottling: true})
	cfg := simConfig(sim, 0)
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), cfg)
	snap, _ := sim.Export(cfg.TenantID)
	ctx := context.Background()
	if _, err := c.SubscribedSKUs(ctx); err != nil { // token
		t.Fatal(err)
	}
	_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error { a.ThrottleNextWith(1, 300*time.Millisecond, false); return nil })
	res, err := c.Batch(ctx, []graphclient.BatchRequest{
		{ID: "1", Method: "GET", URL: "/users/" + snap.Users[0].ID + "?$select=id"},
		{ID: "2", Method: "PATCH", URL: "/users/" + snap.Users[1].ID, Body: map[string]any{"jobTitle": "Batched"}, Headers: map[string]string{"Content-Type": "application/json"}},
		{ID: "3", Method: "GET", URL: "/users/" + snap.Users[1].ID + "?$select=jobTitle", DependsOn: []string{"2"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err() != nil {
			t.Errorf("item %s: %v", r.ID, r.Err())
		}
	}
	if !strings.Contains(string(res[2].Body), "Batched") {
		t.Errorf("dependent item: %s", res[2].Body)
	}
	if s := c.Stats(); s.Throttled != 1 || s.Retries != 1 {
		t.Errorf("stats %+v", s)
	}
}

// The bulk reads decode pages with encoding/json, the single-object reads go
// through the SDK: both must give the same records, or the same user would
// be published differently by a sync and by a post-action refresh.
func TestBulkRecordsMatchTheSDK(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 300, Groups: 12, NoThrottling: true})
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), simConfig(sim, 0))
	ctx := context.Background()
	var listed []graphclient.User
	if err := c.ListUsers(ctx, "", func(p []graphclient.User) error { listed = append(listed, p...); return nil }); err != nil {
		t.Fatal(err)
	}
	byDelta := map[string]graphclient.User{}
	if _, err := c.UserDelta(ctx, "", func(p []graphclient.UserChange) error {
		for _, ch := range p {
			if ch.User != nil {
				byDelta[ch.ID] = *ch.User
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 300 || len(byDelta) != 300 {
		t.Fatalf("listed %d users, delta %d", len(listed), len(byDelta))
	}
	licensed, withPhones := 0, 0
	for _, u := range listed {
		one, err := c.GetUser(ctx, u.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(*one, u) || !reflect.DeepEqual(byDelta[u.ID], u) {
			t.Fatalf("user %s:\n list  %+v\n delta %+v\n SDK   %+v", u.ID, u, byDelta[u.ID], *one)
		}
		if len(u.AssignedLicenses) > 0 {
			licensed++
		}
		if len(u.BusinessPhones) > 0 {
			withPhones++
		}
	}
	if licensed == 0 || withPhones == 0 {
		t.Errorf("the tenant should have licensed users (%d) and users with phones (%d) to compare", licensed, withPhones)
	}
	groups := 0
	if _, err := c.GroupDelta(ctx, "", func(p []graphclient.GroupChange) error {
		for _, ch := range p {
			if ch.Group == nil {
				continue
			}
			one, err := c.GetGroup(ctx, ch.ID)
			if err != nil {
				return err
			}
			if !reflect.DeepEqual(*one, *ch.Group) {
				t.Errorf("group %s:\n delta %+v\n SDK   %+v", ch.ID, *ch.Group, *one)
			}
			groups++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if groups != 12 {
		t.Errorf("compared %d groups, want 12", groups)
	}
}

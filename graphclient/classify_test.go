package graphclient_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

// refined are the sentinels the classifier tells apart by message.
var refined = map[string]error{
	"ErrNoFreeSeat": graphclient.ErrNoFreeSeat, "ErrUsageLocation": graphclient.ErrUsageLocation,
	"ErrDynamicGroup": graphclient.ErrDynamicGroup, "ErrPasswordPolicy": graphclient.ErrPasswordPolicy,
	"ErrLicenseInherited": graphclient.ErrLicenseInherited, "ErrConflict": graphclient.ErrConflict,
}

// matchesOnly checks that err matches want (nil: none) and no other
// refined sentinel, and still matches ErrBadRequest when it is a 400.
func matchesOnly(t *testing.T, name string, err, want error) {
	t.Helper()
	var ge *graphclient.Error
	if !errors.As(err, &ge) {
		t.Errorf("%s: %v is not an *Error", name, err)
		return
	}
	for sn, s := range refined {
		if got := errors.Is(err, s); got != (s == want) {
			t.Errorf("%s: errors.Is(%s) = %v for %v", name, sn, got, err)
		}
	}
	if ge.Status == 400 && !errors.Is(err, graphclient.ErrBadRequest) {
		t.Errorf("%s: a 400 that is not ErrBadRequest", name)
	}
}

// Graph's refusals as the simulator makes them, through the client's real
// operations (SDK and batch paths).
func TestClassifierOnSimulatorErrors(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 40, Groups: 12, NoThrottling: true})
	cfg := simConfig(sim, 0)
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, MaxWait: time.Second}), cfg)
	ctx := context.Background()
	snap, _ := sim.Export(cfg.TenantID)
	var noLoc, unlicensed, licensed, dynamic, static string
	for _, u := range snap.Users {
		switch {
		case strings.Contains(u.UserPrincipalName, "#EXT#"):
		case u.UsageLocation == nil && noLoc == "":
			noLoc = u.ID
		case u.UsageLocation != nil && len(u.AssignedLicenses) == 0 && u.UserType == "Member":
			unlicensed = u.ID
		case u.UsageLocation != nil && len(u.AssignedLicenses) > 0:
			licensed = u.ID
		}
	}
	for _, g := range snap.Groups {
		switch {
		case len(g.GroupTypes) == 1 && g.GroupTypes[0] == "DynamicMembership":
			dynamic = g.ID
		case len(g.Members) > 0 && static == "":
			static = g.ID
		case dynamic == "" && len(g.Members) > 0:
			dynamic = g.ID // made rule-based below
		}
	}
	_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error {
		a.UpdateGroup(a.Group(dynamic), func(g *graphsim.Group) { g.GroupTypes = []string{"DynamicMembership"} })
		return nil
	})
	if noLoc == "" || unlicensed == "" || licensed == "" || dynamic == "" || static == "" {
		t.Fatal("the seed lacks a user or group the cases need")
	}
	domain := strings.SplitN(snap.Users[1].UserPrincipalName, "@", 2)[1]
	pbi, _ := c.FindSKU(ctx, "POWER_BI_PRO")
	e3, _ := c.FindSKU(ctx, "ENTERPRISEPACK")
	inherited := snap.Users[0]
	for _, u := range snap.Users {
		if u.ID == licensed {
			inherited = u
		}
	}
	_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error {
		a.InheritLicense(a.User(inherited.ID), inherited.AssignedLicenses[0].SkuID, a.Group(static))
		return nil
	})
	member := snap.Groups[0].Members
	for _, g := range snap.Groups {
		if g.ID == static {
			member = g.Members
		}
	}
	weak := graphclient.NewUser{DisplayName: "Weak", UserPrincipalName: "weak@" + domain, MailNickname: "weak", AccountEnabled: true, Password: "abc"}
	_, weakErr := c.CreateUser(ctx, weak)
	dup := weak
	dup.UserPrincipalName, dup.Password = snap.Users[1].UserPrincipalName, "Str0ng!Passw0rd"
	_, dupErr := c.CreateUser(ctx, dup)
	batch, err := c.Batch(ctx, []graphclient.BatchRequest{{ID: "1", Method: "POST", URL: "/users", Headers: map[string]string{"Content-Type": "application/json"},
		Body: map[string]any{"accountEnabled": true, "displayName": "Weak", "mailNickname": "weak2", "userPrincipalName": "weak2@" + domain,
			"passwordProfile": map[string]any{"password": "abc", "forceChangePasswordNextSignIn": true}}}})
	if err != nil {
		t.Fatal(err)
	}
	_, missing := c.GetUser(ctx, "nobody@"+domain)
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"weak password", weakErr, graphclient.ErrPasswordPolicy},
		{"weak password in a batch", batch[0].Err(), graphclient.ErrPasswordPolicy},
		{"duplicate UPN", dupErr, graphclient.ErrConflict},
		{"no free seat", c.AssignLicense(ctx, unlicensed, []graphclient.LicenseChange{{SkuID: pbi.SkuID}}, nil), graphclient.ErrNoFreeSeat},
		{"no usage location", c.AssignLicense(ctx, noLoc, []graphclient.LicenseChange{{SkuID: e3.SkuID}}, nil), graphclient.ErrUsageLocation},
		{"licence from a group", c.AssignLicense(ctx, inherited.ID, nil, []string{inherited.AssignedLicenses[0].SkuID}), graphclient.ErrLicenseInherited},
		{"add to a dynamic group", c.AddMember(ctx, dynamic, unlicensed), graphclient.ErrDynamicGroup},
		{"remove from a dynamic group", c.RemoveMember(ctx, dynamic, unlicensed), graphclient.ErrDynamicGroup},
		{"member twice", c.AddMember(ctx, static, member[0]), graphclient.ErrConflict},
		{"unknown user", missing, nil},
	} {
		matchesOnly(t, tc.name, tc.err, tc.want)
	}
}

// The classifier on Graph's error bodies as documented (GRAPH.md §5–§7,
// §9), including texts the simulator does not produce, and on answers
// that must not be refined.
func TestClassifierTable(t *testing.T) {
	body := func(code, msg string) []byte {
		return []byte(`{"error":{"code":"` + code + `","message":"` + msg + `"}}`)
	}
	for _, tc := range []struct {
		name   string
		status int
		body   []byte
		want   error
	}{
		{"no free seat", 400, body("Request_BadRequest", "Subscription with SKU 6fd2c87f-b296-42f0-b197-1e91e994b900 does not have any available licenses."), graphclient.ErrNoFreeSeat},
		{"usage location", 400, body("Request_BadRequest", "License assignment cannot be done for user with invalid usage location."), graphclient.ErrUsageLocation},
		{"dynamic group", 400, body("Request_BadRequest", "Insufficient privileges to complete the operation. Members of a group with dynamic membership cannot be changed."), graphclient.ErrDynamicGroup},
		{"password", 400, body("Request_BadRequest", "The specified password does not comply with password complexity requirements. Please provide a different password."), graphclient.ErrPasswordPolicy},
		{"inherited", 400, body("Request_BadRequest", "User license is inherited from a group membership and it cannot be removed directly from the user."), graphclient.ErrLicenseInherited},
		{"group-based licensing", 400, body("Request_BadRequest", "This licence is managed by Group-based licensing."), graphclient.ErrLicenseInherited},
		{"conflict by details", 400, []byte(`{"error":{"code":"Request_BadRequest","message":"Conflict.","details":[{"code":"ObjectConflict","target":"userPrincipalName"}]}}`), graphclient.ErrConflict},
		{"conflict by status", 409, body("Conflict", "Conflict."), graphclient.ErrConflict},
		{"reference already exists", 400, body("Request_BadRequest", "One or more added object references already exist for the following modified properties: 'members'."), graphclient.ErrConflict},
		{"other 400", 400, body("Request_BadRequest", "Invalid value specified for property 'displayName' of resource 'User'."), nil},
		{"a server fault is never a refusal", 500, body("generalException", "The licence is inherited; an unexpected error occurred."), nil},
		{"unreadable body", 400, []byte("<html>"), nil},
	} {
		err := graphclient.BatchResponse{ID: "1", Status: tc.status, Body: tc.body}.Err()
		matchesOnly(t, tc.name, err, tc.want)
	}
}

package graphsim_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/tevyra/m365-worker/graphsim"
)

// crid is a fresh client-request-id header pair, as Graph's clients send.
func crid() []string { return []string{"client-request-id", uuid.NewString()} }

func hdrs(pairs ...string) []string { return append(crid(), pairs...) }

// newUser is a valid create-user body.
func newUser(upn string) map[string]any {
	return map[string]any{"accountEnabled": true, "displayName": "New User", "mailNickname": "newuser", "userPrincipalName": upn,
		"passwordProfile": map[string]any{"password": "Xy7!long-enough-pass", "forceChangePasswordNextSignIn": true}}
}

// The requests Graph's description refuses are refused here too, in
// Graph's error shape, and recorded as violations.
func TestRefusesWhatGraphsDescriptionRefuses(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 20, Groups: 6, NoThrottling: true, Conformance: true})
	cred := sim.Credentials()[0]
	r := newRaw(t, sim, cred)
	snap, _ := sim.Export(cred.TenantID)
	var unified, static string
	var member string
	for _, g := range snap.Groups {
		if len(g.GroupTypes) > 0 && g.GroupTypes[0] == "Unified" && unified == "" {
			unified = g.ID
		}
		if g.MembershipRule == nil && len(g.Members) > 0 && static == "" {
			static, member = g.ID, g.Members[0]
		}
	}
	nullLocation := newUser("null.location@" + cred.Domain)
	nullLocation["usageLocation"] = nil
	secGroup := func(nick string) map[string]any {
		return map[string]any{"displayName": "G", "mailEnabled": false, "mailNickname": nick, "securityEnabled": true, "groupTypes": []string{}}
	}
	filter := "/groups/" + static + "/members?$filter=id eq '" + member + "'&$select=id"
	for _, c := range []struct {
		name, method, path string
		body               any
		code               string
	}{
		{"members $filter without ConsistencyLevel and $count", "GET", filter, nil, "Request_UnsupportedQuery"},
		{"visibility HiddenMembership on update", "PATCH", "/groups/" + unified, map[string]any{"visibility": "HiddenMembership"}, "Request_BadRequest"},
		{"group mailNickname with '", "POST", "/groups", secGroup("o'hare"), "Request_BadRequest"},
		{"group mailNickname with /", "POST", "/groups", secGroup("a/b"), "Request_BadRequest"},
		{"group mailNickname with / on update", "PATCH", "/groups/" + static, map[string]any{"mailNickname": "a/b"}, "Request_BadRequest"},
		{"UPN alias with +", "POST", "/users", newUser("a+b@" + cred.Domain), "Request_BadRequest"},
		{"UPN alias with &", "POST", "/users", newUser("a&b@" + cred.Domain), "Request_BadRequest"},
		{"UPN alias with $", "PATCH", "/users/" + member, map[string]any{"userPrincipalName": "a$b@" + cred.Domain}, "Request_BadRequest"},
		{"UPN alias with %", "PATCH", "/users/" + member, map[string]any{"userPrincipalName": "a%b@" + cred.Domain}, "Request_BadRequest"},
		{"usageLocation null (Not nullable)", "POST", "/users", nullLocation, "Request_BadRequest"},
		{"assignLicense without removeLicenses", "POST", "/users/" + member + "/assignLicense", map[string]any{"addLicenses": []any{}}, "Request_BadRequest"},
	} {
		before := len(sim.Conformance().Violations)
		resp, b := r.do(c.method, c.path, c.body, crid()...)
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		if resp.StatusCode != 400 || e.Error.Code != c.code {
			t.Errorf("%s: %d %s %q, want 400 %s", c.name, resp.StatusCode, e.Error.Code, e.Error.Message, c.code)
		}
		if v := sim.Conformance().Violations; len(v) != before+1 || v[before].Side != "request" {
			t.Errorf("%s: the refusal is not recorded as a violation: %v", c.name, v[before:])
		}
	}
	// The documented forms are taken.
	r.json("GET", strings.Replace(filter, "$select=id", "$select=id&$count=true", 1), nil, 200, hdrs("ConsistencyLevel", "eventual")...)
	r.json("PATCH", "/groups/"+unified, map[string]any{"visibility": "Private"}, 204, crid()...)
	r.json("POST", "/users", newUser("o'neil_x!y#z^w~v-u.ok@"+cred.Domain), 201, crid()...)

	// A request without a client-request-id is recorded (Graph takes it;
	// Microsoft support cannot trace it).
	before := len(sim.Conformance().Violations)
	r.json("GET", "/users?$top=1", nil, 200)
	if v := sim.Conformance().Violations; len(v) != before+1 || v[before].Rule != "client-request-id" {
		t.Errorf("a request without client-request-id: violations %v", v[before:])
	}
	// So is $count=true without ConsistencyLevel: Graph ignores it.
	before = len(sim.Conformance().Violations)
	r.json("GET", "/users?$top=1&$count=true", nil, 200, crid()...)
	if v := sim.Conformance().Violations; len(v) != before+1 || v[before].Rule != "ConsistencyLevel" {
		t.Errorf("$count=true without ConsistencyLevel: violations %v", v[before:])
	}
}

// The simulator's answers are in Graph's shapes, and the conformance checks
// find nothing in them.
func TestAnswersInGraphsShape(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 20, Groups: 6, NoThrottling: true, Conformance: true})
	cred := sim.Credentials()[0]
	r := newRaw(t, sim, cred)
	snap, _ := sim.Export(cred.TenantID)
	root := cred.GraphRoot + "/v1.0/$metadata#"

	// POST /users answers with the default set only.
	created := r.json("POST", "/users", newUser("shape.user@"+cred.Domain), 201, crid()...)
	for _, p := range []string{"accountEnabled", "assignedLicenses", "createdDateTime", "department", "mailNickname", "onPremisesSyncEnabled", "usageLocation", "userType"} {
		if _, ok := created[p]; ok {
			t.Errorf("POST /users answers %s, which Graph returns only on $select", p)
		}
	}
	if created["@odata.context"] != root+"users/$entity" {
		t.Errorf("POST /users @odata.context %v", created["@odata.context"])
	}

	// Members of a directoryObject collection name their type, $select or not.
	var static string
	for _, g := range snap.Groups {
		if g.MembershipRule == nil && len(g.Members) > 0 {
			static = g.ID
		}
	}
	page := r.json("GET", "/groups/"+static+"/members?$select=id", nil, 200, crid()...)
	for _, it := range page["value"].([]any) {
		if it.(map[string]any)["@odata.type"] == nil {
			t.Errorf("a member without @odata.type: %v", it)
			break
		}
	}
	if page["@odata.context"] != root+"directoryObjects(id)" {
		t.Errorf("members @odata.context %v", page["@odata.context"])
	}
	for path, want := range map[string]string{"/users?$top=2": "users", "/users?$select=id,displayName&$top=2": "users(id,displayName)",
		"/users/" + snap.Users[0].ID: "users/$entity", "/groups/" + static + "?$select=id": "groups(id)/$entity", "/subscribedSkus": "subscribedSkus"} {
		if got := r.json("GET", path, nil, 200, crid()...)["@odata.context"]; got != root+want {
			t.Errorf("GET %s: @odata.context %v, want %s", path, got, root+want)
		}
	}

	// Incremental group delta rounds leave out properties never set, as full
	// ones do.
	link := ""
	for next := "/groups/delta?$select=displayName,description,visibility,membershipRule,members"; next != ""; {
		p := r.json("GET", next, nil, 200, crid()...)
		next, _ = p["@odata.nextLink"].(string)
		link, _ = p["@odata.deltaLink"].(string)
	}
	if err := sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error {
		for _, g := range snap.Groups {
			a.UpdateGroup(a.Group(g.ID), func(g *graphsim.Group) { g.DisplayName += " (renamed)" })
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	inc := r.json("GET", link, nil, 200, crid()...)
	if len(inc["value"].([]any)) == 0 {
		t.Fatal("the incremental delta carries no change")
	}
	for _, it := range inc["value"].([]any) {
		for k, v := range it.(map[string]any) {
			if v == nil {
				t.Errorf("incremental group delta reports %s: null; Graph leaves out properties never set", k)
			}
		}
	}

	// An error inside a $batch has Graph's error shape, innerError included.
	batch := r.json("POST", "/$batch", map[string]any{"requests": []any{map[string]any{"id": "1", "method": "GET", "url": "/users/" + uuid.NewString()}}}, 200, crid()...)
	item := batch["responses"].([]any)[0].(map[string]any)
	inner, _ := item["body"].(map[string]any)["error"].(map[string]any)["innerError"].(map[string]any)
	for _, f := range []string{"date", "request-id", "client-request-id"} {
		if _, ok := inner[f]; !ok {
			t.Errorf("a $batch item's error lacks innerError.%s: %v", f, item["body"])
		}
	}

	rep := sim.Conformance()
	for _, v := range rep.Violations {
		t.Error(v)
	}
	if rep.Requests < 9 || rep.Answers < 8 || rep.Values < 100 {
		t.Fatalf("the checks saw too little: %+v", rep)
	}
}

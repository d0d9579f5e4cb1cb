package graphsim_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
)

func TestBatch(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 10, Groups: 2, NoThrottling: true})
	cred := sim.Credentials()[0]
	r := newRaw(t, sim, cred)
	snap, _ := sim.Export(cred.TenantID)
	domain := strings.SplitN(snap.Users[len(snap.Users)-1].UserPrincipalName, "@", 2)[1]
	m := r.json("POST", "/$batch", map[string]any{"requests": []map[string]any{
		{"id": "1", "method": "GET", "url": "/users/" + snap.Users[0].ID + "?$select=id,displayName"},
		{"id": "2", "method": "POST", "url": "/users", "headers": map[string]string{"Content-Type": "application/json"},
			"body": map[string]any{"accountEnabled": true, "displayName": "B", "mailNickname": "b", "userPrincipalName": "b@" + domain, "passwordProfile": map[string]any{"password": "weak"}}},
		{"id": "3", "method": "PATCH", "url": "/users/" + snap.Users[1].ID, "dependsOn": []string{"2"}, "body": map[string]any{"jobTitle": "x"}},
		{"id": "4", "method": "GET", "url": "/users/$count", "headers": map[string]string{"ConsistencyLevel": "eventual"}},
	}}, 200)
	got := map[string]float64{}
	for _, it := range m["responses"].([]any) {
		im := it.(map[string]any)
		got[im["id"].(string)] = im["status"].(float64)
	}
	if got["1"] != 200 || got["2"] != 400 || got["3"] != 424 || got["4"] != 200 {
		t.Errorf("batch statuses %v", got)
	}
	reqs := make([]map[string]any, 21)
	for i := range reqs {
		reqs[i] = map[string]any{"id": fmt.Sprint(i), "method": "GET", "url": "/users"}
	}
	if resp, _ := r.do("POST", "/$batch", map[string]any{"requests": reqs}); resp.StatusCode != 400 {
		t.Errorf("21 items: %d", resp.StatusCode)
	}
	// Throttling applies per item.
	_ = sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error { a.ThrottleNext(1); return nil })
	m = r.json("POST", "/$batch", map[string]any{"requests": []map[string]any{
		{"id": "a", "method": "GET", "url": "/users?$select=id"}, {"id": "b", "method": "GET", "url": "/users?$select=id"}}}, 200)
	items := m["responses"].([]any)
	a, b := items[0].(map[string]any), items[1].(map[string]any)
	if a["status"].(float64) != 429 || a["headers"].(map[string]any)["Retry-After"] == nil || b["status"].(float64) != 200 {
		t.Errorf("per-item throttling: %v", items)
	}
}

func TestWritesAndTheirErrors(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 30, Groups: 12, NoThrottling: true, NoUserAdminRole: true})
	cred := sim.Credentials()[0]
	r := newRaw(t, sim, cred)
	snap, _ := sim.Export(cred.TenantID)
	var noLoc, member string
	for _, u := range snap.Users {
		if u.UsageLocation == nil && noLoc == "" {
			noLoc = u.ID
		}
		if u.UserType == "Member" && u.UsageLocation != nil && len(u.AssignedLicenses) == 0 {
			member = u.ID
		}
	}
	skus := map[string]string{}
	for _, s := range snap.SKUs {
		skus[s.SkuPartNumber] = s.SkuID
	}
	expect := func(name string, resp *http.Response, b []byte, status int, code, msgPart string) {
		t.Helper()
		c, msg := graphErr(t, b)
		if resp.StatusCode != status || c != code || !strings.Contains(msg, msgPart) {
			t.Errorf("%s: %d %s", name, resp.StatusCode, b)
		}
	}
	if noLoc == "" || member == "" {
		t.Fatalf("seed has no user without usage location (%q) or unlicensed member (%q)", noLoc, member)
	}
	{
		resp, b := r.do("POST", "/users/"+noLoc+"/assignLicense", map[string]any{"addLicenses": []any{map[string]any{"skuId": skus["FLOW_FREE"], "disabledPlans": []any{}}}, "removeLicenses": []any{}})
		expect("no usage location", resp, b, 400, "Request_BadRequest", "invalid usage location")
	}
	{
		resp, b := r.do("POST", "/users/"+member+"/assignLicense", map[string]any{"addLicenses": []any{map[string]any{"skuId": skus["POWER_BI_PRO"], "disabledPlans": []any{}}}, "removeLicenses": []any{}})
		expect("no free seat", resp, b, 400, "Request_BadRequest", "does not have any available licenses")
	}
	resp, b := r.do("PATCH", "/users/"+snap.Users[5].ID, map[string]any{"passwordProfile": map[string]any{"password": "Str0ng!Passw0rd"}})
	expect("reset without User Administrator", resp, b, 403, "Authorization_RequestDenied", "Insufficient privileges")
	resp, b = r.do("PATCH", "/users/"+snap.Users[5].ID, map[string]any{"favouriteColour": "blue"})
	expect("unknown property", resp, b, 400, "Request_BadRequest", "favouriteColour")
	resp, b = r.do("GET", "/users/nobody@nowhere.example", nil)
	expect("unknown user", resp, b, 404, "Request_ResourceNotFound", "does not exist")
	resp, b = r.do("POST", "/users", map[string]any{"accountEnabled": true, "displayName": "D", "mailNickname": "dup", "userPrincipalName": snap.Users[7].UserPrincipalName, "passwordProfile": map[string]any{"password": "Str0ng!Passw0rd"}})
	expect("duplicate UPN", resp, b, 400, "Request_BadRequest", "userPrincipalName already exists")
	if !strings.Contains(string(b), `"target":"userPrincipalName"`) || !strings.Contains(string(b), "ObjectConflict") {
		t.Errorf("duplicate UPN details: %s", b)
	}
	for _, g := range snap.Groups {
		if len(g.GroupTypes) == 1 && g.GroupTypes[0] == "DynamicMembership" {
			resp, b = r.do("POST", "/groups/"+g.ID+"/members/$ref", map[string]any{"@odata.id": cred.GraphRoot + "/v1.0/directoryObjects/" + snap.Users[0].ID})
			expect("dynamic group", resp, b, 400, "Request_BadRequest", "dynamic membership")
			break
		}
	}
	// Bodies arrive gzipped from the SDK's compression handler.
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	_, _ = zw.Write([]byte(`{"jobTitle":"Zipped"}`))
	zw.Close()
	req, _ := http.NewRequest("PATCH", cred.GraphRoot+"/v1.0/users/"+snap.Users[2].ID, &zb)
	req.Header.Set("Authorization", "Bearer "+r.token)
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("Content-Type", "application/json")
	gr, err := r.hc.Do(req)
	if err != nil || gr.StatusCode != 204 {
		t.Fatalf("gzip PATCH: %v %v", err, gr)
	}
	m := r.json("GET", "/users/"+snap.Users[2].ID+"?$select=jobTitle", nil, 200)
	if m["jobTitle"] != "Zipped" {
		t.Errorf("gzip body not applied: %v", m)
	}
}

func TestEventualConsistency(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 5, Groups: 1, NoThrottling: true, ConsistencyDelay: 300 * time.Millisecond})
	cred := sim.Credentials()[0]
	r := newRaw(t, sim, cred)
	snap, _ := sim.Export(cred.TenantID)
	domain := strings.SplitN(snap.Users[0].UserPrincipalName, "@", 2)[1]
	m := r.json("POST", "/users", map[string]any{"accountEnabled": true, "displayName": "Fresh", "mailNickname": "fresh", "userPrincipalName": "fresh@" + domain,
		"passwordProfile": map[string]any{"password": "Str0ng!Passw0rd"}}, 201)
	id := m["id"].(string)
	resp, _ := r.do("GET", "/users/"+id, nil)
	if resp.StatusCode != 404 {
		t.Fatalf("a user created a moment ago is readable: %d", resp.StatusCode)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, _ := r.do("GET", "/users/"+id, nil); resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never became visible")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFaultsReproducible(t *testing.T) {
	statuses := func() []int {
		sim := start(t, graphsim.Options{Users: 5, Groups: 1, NoThrottling: true, Seed: 7,
			Faults: graphsim.Faults{Rate500: 0.1, Rate503: 0.1, Rate504: 0.05, RetryAfter: 1500 * time.Millisecond, DropRate: 0.05}})
		r := newRaw(t, sim, sim.Credentials()[0])
		var out []int
		for i := 0; i < 200; i++ {
			req, _ := http.NewRequest("GET", r.cred.GraphRoot+"/v1.0/users?$select=id", nil)
			req.Header.Set("Authorization", "Bearer "+r.token)
			resp, err := r.hc.Do(req)
			if err != nil {
				out = append(out, -1) // dropped
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 503 && resp.Header.Get("Retry-After") != "1.5" {
				t.Errorf("503 Retry-After %q", resp.Header.Get("Retry-After"))
			}
			out = append(out, resp.StatusCode)
		}
		return out
	}
	a, b := statuses(), statuses()
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Error("the same seed gave different faults")
	}
	count := map[int]int{}
	for _, s := range a {
		count[s]++
	}
	if count[500] == 0 || count[503] == 0 || count[504] == 0 || count[-1] == 0 || count[200] < 100 {
		t.Errorf("fault mix %v", count)
	}
}

func TestAdminHTTP(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 8, Groups: 2, NoThrottling: true})
	cred := sim.Credentials()[0]
	hc := sim.Client()
	resp, err := hc.Get(sim.URL() + "/_admin/tenants/" + cred.TenantID + "/export")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("export: %v %v", err, resp)
	}
	var snap graphsim.Snapshot
	_ = json.NewDecoder(resp.Body).Decode(&snap)
	resp.Body.Close()
	if len(snap.Users) != 8 || len(snap.Groups) != 2 || len(snap.SKUs) == 0 {
		t.Fatalf("snapshot: %d users %d groups", len(snap.Users), len(snap.Groups))
	}
	resp, err = hc.Post(sim.URL()+"/_admin/tenants/"+cred.TenantID+"/random-changes", "application/json", strings.NewReader(`{"count":20,"seed":3}`))
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("random changes: %v %v", err, resp)
	}
	after, _ := sim.Export(cred.TenantID)
	a, _ := json.Marshal(after)
	bb, _ := json.Marshal(snap)
	if bytes.Equal(a, bb) {
		t.Error("random changes changed nothing")
	}
	// Seeded tenants are reproducible.
	again := start(t, graphsim.Options{Users: 8, Groups: 2, NoThrottling: true})
	s2, _ := again.Export(again.Credentials()[0].TenantID)
	x, _ := json.Marshal(s2)
	if !bytes.Equal(x, bb) {
		t.Error("the same seed gave another tenant")
	}
}

func TestLatencyProfile(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 300, Groups: 2, NoThrottling: true, Latency: graphsim.RealisticLatency})
	r := newRaw(t, sim, sim.Credentials()[0])
	// A 200-object page takes at least 100 ms + 200 × 0.5 ms; a write 150 ms.
	t0 := time.Now()
	r.json("GET", "/users?$select=id&$top=200", nil, 200)
	if el := time.Since(t0); el < 200*time.Millisecond {
		t.Errorf("a 200-user page answered in %s", el)
	}
	snap, _ := sim.Export(r.cred.TenantID)
	t0 = time.Now()
	r.json("PATCH", "/users/"+snap.Users[0].ID, map[string]any{"jobTitle": "x"}, 204)
	if el := time.Since(t0); el < 150*time.Millisecond {
		t.Errorf("a write answered in %s", el)
	}
}

package graphsim_test

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
)

// replica is what a delta consumer rebuilds.
type replica struct {
	users  map[string]map[string]any
	groups map[string]map[string]any
	member map[string]map[string]bool
	// entries counts how often each group id appeared in the last walk.
	entries map[string]int
	// dups counts entries repeated within one page.
	dups int
}

func newReplica() *replica {
	return &replica{users: map[string]map[string]any{}, groups: map[string]map[string]any{}, member: map[string]map[string]bool{}}
}

// walk follows a delta chain from link and returns the deltaLink.
func (rp *replica) walk(t *testing.T, r *raw, kind, link string) string {
	t.Helper()
	rp.entries = map[string]int{}
	for {
		m := r.json("GET", link, nil, 200)
		inPage := map[string]bool{}
		for _, v := range m["value"].([]any) {
			o := v.(map[string]any)
			id := o["id"].(string)
			if inPage[id] && kind == "users" {
				rp.dups++
			}
			inPage[id] = true
			store := rp.users
			if kind == "groups" {
				store = rp.groups
				rp.entries[id]++
			}
			if _, gone := o["@removed"]; gone {
				delete(store, id)
				delete(rp.member, id)
				continue
			}
			cur := store[id]
			if cur == nil {
				cur = map[string]any{}
				store[id] = cur
			}
			for k, val := range o {
				if k != "members@delta" {
					cur[k] = val
				}
			}
			if md, ok := o["members@delta"].([]any); ok {
				if rp.member[id] == nil {
					rp.member[id] = map[string]bool{}
				}
				for _, e := range md {
					em := e.(map[string]any)
					if _, gone := em["@removed"]; gone {
						delete(rp.member[id], em["id"].(string))
					} else {
						rp.member[id][em["id"].(string)] = true
					}
				}
			}
		}
		if next, ok := m["@odata.nextLink"].(string); ok {
			link = next
			continue
		}
		return m["@odata.deltaLink"].(string)
	}
}

func (rp *replica) check(t *testing.T, snap *graphsim.Snapshot) {
	t.Helper()
	if len(rp.users) != len(snap.Users) {
		t.Fatalf("replica has %d users, truth %d", len(rp.users), len(snap.Users))
	}
	for _, u := range snap.Users {
		got := rp.users[u.ID]
		if got == nil {
			t.Fatalf("user %s missing", u.ID)
		}
		if got["displayName"] != u.DisplayName || got["accountEnabled"] != u.AccountEnabled {
			t.Fatalf("user %s: %v vs %+v", u.ID, got, u)
		}
		var jt any
		if u.JobTitle != nil {
			jt = *u.JobTitle
		}
		if got["jobTitle"] != jt {
			t.Fatalf("user %s jobTitle %v, truth %v", u.ID, got["jobTitle"], jt)
		}
		var skus []string
		if ls, ok := got["assignedLicenses"].([]any); ok {
			for _, l := range ls {
				skus = append(skus, l.(map[string]any)["skuId"].(string))
			}
		}
		var want []string
		for _, l := range u.AssignedLicenses {
			want = append(want, l.SkuID)
		}
		sort.Strings(skus)
		sort.Strings(want)
		if strings.Join(skus, ",") != strings.Join(want, ",") {
			t.Fatalf("user %s licences %v, truth %v", u.ID, skus, want)
		}
	}
	if len(rp.groups) != len(snap.Groups) {
		t.Fatalf("replica has %d groups, truth %d", len(rp.groups), len(snap.Groups))
	}
	for _, g := range snap.Groups {
		got := rp.groups[g.ID]
		if got == nil || got["displayName"] != g.DisplayName {
			t.Fatalf("group %s: %v", g.ID, got)
		}
		var members []string
		for id := range rp.member[g.ID] {
			members = append(members, id)
		}
		sort.Strings(members)
		if !reflect.DeepEqual(nonNilStrings(members), nonNilStrings(g.Members)) {
			t.Fatalf("group %s members: %d in replica, %d in truth", g.ID, len(members), len(g.Members))
		}
	}
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func TestDeltaRebuildsGroundTruth(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 5200, Groups: 40, NoThrottling: true, DeltaDuplicateRate: 0.02})
	cred := sim.Credentials()[0]
	r := newRaw(t, sim, cred)
	rp := newReplica()
	userLink := rp.walk(t, r, "users", "/users/delta?$select=id,displayName,accountEnabled,jobTitle,assignedLicenses")
	groupLink := rp.walk(t, r, "groups", "/groups/delta?$select=id,displayName,description,members")
	snap, _ := sim.Export(cred.TenantID)
	rp.check(t, snap)
	split := 0
	for _, g := range snap.Groups {
		if len(g.Members) > 500 && rp.entries[g.ID] > 1 {
			split++
		}
	}
	if split == 0 {
		t.Error("no large group was split across entries")
	}
	if rp.dups == 0 {
		t.Error("no duplicate entries at a 2 % duplicate rate")
	}
	for round := uint64(1); round <= 4; round++ {
		if err := sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error { a.RandomChanges(150, round); return nil }); err != nil {
			t.Fatal(err)
		}
		userLink = rp.walk(t, r, "users", userLink)
		groupLink = rp.walk(t, r, "groups", groupLink)
		snap, _ = sim.Export(cred.TenantID)
		rp.check(t, snap)
	}
	// A round with no change returns nothing.
	m := r.json("GET", userLink, nil, 200)
	if len(m["value"].([]any)) != 0 || m["@odata.deltaLink"] == nil {
		t.Errorf("quiet round: %v", m)
	}
}

func TestDeltaTokens(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 30, Groups: 3, NoThrottling: true, DeltaTokenTTL: 300 * time.Millisecond})
	cred := sim.Credentials()[0]
	r := newRaw(t, sim, cred)

	// $deltatoken=latest: a tracking point with no data.
	m := r.json("GET", "/users/delta?$deltatoken=latest&$select=id,jobTitle", nil, 200)
	if len(m["value"].([]any)) != 0 {
		t.Fatalf("latest returned data: %v", m["value"])
	}
	link := m["@odata.deltaLink"].(string)
	snap, _ := sim.Export(cred.TenantID)
	target := snap.Users[5]
	_ = sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error {
		a.UpdateUser(a.User(target.ID), func(u *graphsim.User) { u.JobTitle = ptr("Changed") })
		a.DeleteUser(a.User(snap.Users[6].ID))
		return nil
	})
	m = r.json("GET", link, nil, 200)
	vals := m["value"].([]any)
	if len(vals) != 2 {
		t.Fatalf("changes since latest: %v", vals)
	}
	byID := map[string]map[string]any{}
	for _, v := range vals {
		byID[v.(map[string]any)["id"].(string)] = v.(map[string]any)
	}
	if byID[target.ID]["jobTitle"] != "Changed" {
		t.Errorf("update: %v", byID[target.ID])
	}
	if rm, _ := byID[snap.Users[6].ID]["@removed"].(map[string]any); rm["reason"] != "changed" {
		t.Errorf("soft delete: %v", byID[snap.Users[6].ID])
	}
	link = m["@odata.deltaLink"].(string)
	_ = sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error { return a.Purge(snap.Users[6].ID) })
	m = r.json("GET", link, nil, 200)
	if vals := m["value"].([]any); len(vals) != 1 || vals[0].(map[string]any)["@removed"].(map[string]any)["reason"] != "deleted" {
		t.Errorf("purge: %v", vals)
	}

	// id filter on delta.
	m = r.json("GET", "/users/delta?$filter=id eq '"+snap.Users[1].ID+"' or id eq '"+snap.Users[2].ID+"'&$select=id", nil, 200)
	if len(m["value"].([]any)) != 2 {
		t.Errorf("id filter: %v", m["value"])
	}
	if resp, _ := r.do("GET", "/users/delta?$top=5", nil); resp.StatusCode != 400 {
		t.Errorf("$top on delta: %d", resp.StatusCode)
	}

	// A forced reset: 410 Gone with a Location to start again.
	m = r.json("GET", "/groups/delta?$select=id", nil, 200)
	glink := m["@odata.deltaLink"].(string)
	_ = sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error { a.ResetDelta(); return nil })
	resp, b := r.do("GET", glink, nil)
	if code, _ := graphErr(t, b); resp.StatusCode != 410 || code != "resyncRequired" || !strings.Contains(resp.Header.Get("Location"), "$deltatoken=") {
		t.Errorf("reset: %d %s %v", resp.StatusCode, b, resp.Header)
	}

	// Expiry: a token older than its TTL answers syncStateNotFound.
	m = r.json("GET", "/users/delta?$deltatoken=latest", nil, 200)
	old := m["@odata.deltaLink"].(string)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, b := r.do("GET", old, nil)
		if resp.StatusCode == 400 {
			if code, msg := graphErr(t, b); code != "syncStateNotFound" || !strings.Contains(msg, "expired") {
				t.Errorf("expired token: %s %s", code, msg)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("token never expired")
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = fmt.Sprint
}

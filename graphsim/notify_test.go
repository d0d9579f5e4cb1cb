package graphsim_test

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
)

func TestNotifyGraphWrites(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{})
	tid := r.cred.TenantID
	users := r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
	groups := r.subscribe(subBody(sim, rc.url("/notify"), "/groups"))
	snap, _ := sim.Export(tid)
	u, u2, g := snap.Users[0].ID, snap.Users[1].ID, snap.Groups[0].ID

	r.json("PATCH", "/users/"+u, map[string]any{"jobTitle": "Webhook Tester"}, 204)
	n := rc.waitFor(t, users, "Users/"+u, "updated")
	if n.ClientState == nil || *n.ClientState != "secret-/users" || n.TenantID != tid || n.SubscriptionExpirationDateTime == "" ||
		n.ResourceData == nil || n.ResourceData.ODataType != "#Microsoft.Graph.User" || n.ResourceData.ODataID != "Users/"+u ||
		n.ResourceData.ID != u || n.ResourceData.OrganizationID != tid || n.Path != "/notify" {
		t.Errorf("notification %+v %+v", n, n.ResourceData)
	}

	created := r.json("POST", "/users", map[string]any{"accountEnabled": true, "displayName": "Hooked", "mailNickname": "hooked",
		"userPrincipalName": "hooked@" + r.cred.Domain,
		"passwordProfile":   map[string]any{"password": "Str0ng!Passw0rd"}}, 201)
	rc.waitFor(t, users, "Users/"+created["id"].(string), "updated") // Graph reports a creation as an update

	if slices.Contains(snap.Groups[0].Members, u2) {
		r.json("DELETE", "/groups/"+g+"/members/"+u2+"/$ref", nil, 204)
	} else {
		r.json("POST", "/groups/"+g+"/members/$ref", map[string]any{"@odata.id": r.cred.GraphRoot + "/v1.0/directoryObjects/" + u2}, 204)
	}
	n = rc.waitFor(t, groups, "Groups/"+g, "updated")
	if n.ResourceData.ODataType != "#Microsoft.Graph.Group" || *n.ClientState != "secret-/groups" {
		t.Errorf("group notification %+v", n)
	}

	// Soft delete is an update; only the purge is "deleted".
	r.json("DELETE", "/users/"+u, nil, 204)
	rc.waitFor(t, users, "Users/"+u, "updated")
	r.json("DELETE", "/directory/deletedItems/"+u, nil, 204)
	rc.waitFor(t, users, "Users/"+u, "deleted")
}

func TestNotifyAdminChanges(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{})
	snap, _ := sim.Export(r.cred.TenantID)
	target, other := snap.Users[2].ID, snap.Users[3].ID
	one := r.subscribe(subBody(sim, rc.url("/notify"), "/users/"+target))
	all := r.subscribe(subBody(sim, rc.url("/notify"), "users"))
	groups := r.subscribe(subBody(sim, rc.url("/notify"), "/groups"))

	admin(t, sim, func(a *graphsim.Admin) {
		a.UpdateUser(a.User(other), func(u *graphsim.User) { u.Department = nil })
		a.UpdateUser(a.User(target), func(u *graphsim.User) { u.Department = nil })
	})
	rc.waitFor(t, all, "Users/"+other, "updated")
	notes := rc.wait(t, "the target's update", func(ns []note) bool { return of(ns, all) == 2 })
	// One queue per URL, in order: the one-user subscription's notification
	// came no later than the collection's.
	if k := of(notes, one); k != 1 {
		t.Errorf("one-user subscription got %d notifications, want 1: %+v", k, notes)
	}

	var g *graphsim.Group
	admin(t, sim, func(a *graphsim.Admin) {
		g = a.CreateGroup("hooks", "Hooks")
		a.SetMember(g, target, true)
		a.SetLicenses(a.User(target), snap.SKUs[0].SkuID)
		a.DeleteUser(a.User(target))
	})
	rc.waitFor(t, groups, "Groups/"+g.ID, "updated")
	rc.wait(t, "license and soft delete", func(ns []note) bool { return of(ns, one) == 3 })
	admin(t, sim, func(a *graphsim.Admin) {
		if err := a.Purge(target); err != nil {
			t.Fatal(err)
		}
	})
	rc.waitFor(t, one, "Users/"+target, "deleted")
	rc.waitFor(t, all, "Users/"+target, "deleted")

	// Random changes, then a known one: the queue is in order, so once the
	// last has come every earlier one has.
	before := len(rc.snapshot())
	admin(t, sim, func(a *graphsim.Admin) {
		a.RandomChanges(30, 5)
		a.UpdateUser(a.User(other), func(u *graphsim.User) { u.Department = nil })
	})
	rc.wait(t, "the last change", func(ns []note) bool {
		return len(ns) > before+1 && ns[len(ns)-1].Resource == "Users/"+other
	})
	poll(t, "the counters", func() bool {
		sent, delivered, dropped := counters(t, sim)
		return sent == delivered && dropped == 0 && delivered == int64(len(rc.snapshot()))
	})
}

func TestNotifyDropAll(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{NotifyDropRate: 1})
	r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
	admin(t, sim, func(a *graphsim.Admin) { a.RandomChanges(10, 1) })
	// Drops are decided when the change is made: nothing is in flight.
	sent, delivered, dropped := counters(t, sim)
	if sent != 0 || delivered != 0 || dropped == 0 || len(rc.snapshot()) != 0 {
		t.Errorf("sent %d delivered %d dropped %d received %d", sent, delivered, dropped, len(rc.snapshot()))
	}
}

func TestNotifyDuplicates(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{NotifyDuplicateRate: 1, TimeScale: 10})
	sub := r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
	snap, _ := sim.Export(r.cred.TenantID)
	u := snap.Users[0].ID
	admin(t, sim, func(a *graphsim.Admin) { a.UpdateUser(a.User(u), func(u *graphsim.User) { u.JobTitle = nil }) })
	notes := rc.wait(t, "two deliveries", func(ns []note) bool { return of(ns, sub) == 2 })
	if notes[0].Resource != "Users/"+u || notes[1].Resource != notes[0].Resource {
		t.Errorf("duplicates %+v", notes)
	}
	poll(t, "two delivered", func() bool { _, d, _ := counters(t, sim); return d == 2 })
}

func TestNotifyLatency(t *testing.T) {
	const latency = 30 * time.Second // model time: half a second at TimeScale 60
	sim, r, rc := notifySetup(t, graphsim.Options{NotifyLatency: latency, TimeScale: 60})
	sub := r.subscribe(subBody(sim, rc.url("/notify"), "/groups"))
	snap, _ := sim.Export(r.cred.TenantID)
	g := snap.Groups[0].ID
	t0 := sim.Now()
	admin(t, sim, func(a *graphsim.Admin) { a.UpdateGroup(a.Group(g), func(g *graphsim.Group) { g.Description = nil }) })
	n := rc.waitFor(t, sub, "Groups/"+g, "updated")
	if el := n.At.Sub(t0); el < latency {
		t.Errorf("delivered %v (model time) after the change, before the latency %v", el, latency)
	}
}

func TestNotifyRetries(t *testing.T) {
	t.Run("recovers", func(t *testing.T) {
		sim, r, rc := notifySetup(t, graphsim.Options{NotifyRetryDelay: 10 * time.Millisecond, NotifyTimeout: 200 * time.Millisecond})
		rc.setNotify(func(w http.ResponseWriter, r *http.Request, attempt int) bool {
			switch attempt {
			case 1:
				w.WriteHeader(http.StatusServiceUnavailable)
				return false
			case 2: // no answer in time
				rc.hang(r)
				return false
			}
			return true
		})
		sub := r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
		admin(t, sim, func(a *graphsim.Admin) { a.CreateUser("retry.me", "Retry Me") })
		rc.wait(t, "the third attempt", func(ns []note) bool { return of(ns, sub) == 1 })
		poll(t, "delivered", func() bool {
			sent, delivered, dropped := counters(t, sim)
			return sent == 3 && delivered == 1 && dropped == 0
		})
	})
	t.Run("gives up", func(t *testing.T) {
		sim, r, rc := notifySetup(t, graphsim.Options{NotifyRetryDelay: 10 * time.Millisecond, NotifyRetries: 2})
		rc.setNotify(func(w http.ResponseWriter, _ *http.Request, _ int) bool {
			w.WriteHeader(http.StatusInternalServerError)
			return false
		})
		r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
		admin(t, sim, func(a *graphsim.Admin) { a.CreateUser("never.me", "Never Me") })
		poll(t, "dropped after the retries", func() bool {
			sent, delivered, dropped := counters(t, sim)
			return sent == 3 && delivered == 0 && dropped == 1
		})
	})
}

func TestNotifyBatches(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{Users: 200, Groups: 2})
	sub := r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
	snap, _ := sim.Export(r.cred.TenantID)
	admin(t, sim, func(a *graphsim.Admin) {
		for _, u := range snap.Users[:150] {
			a.UpdateUser(a.User(u.ID), func(u *graphsim.User) { u.OfficeLocation = nil })
		}
	})
	rc.wait(t, "150 notifications", func(ns []note) bool { return of(ns, sub) == 150 })
	rc.mu.Lock()
	posts := append([]int(nil), rc.posts...)
	rc.mu.Unlock()
	most := 0
	for _, p := range posts {
		most = max(most, p)
	}
	if most > 100 || most < 2 {
		t.Errorf("POSTs of %v notifications: want batches of 2 to 100", posts)
	}
}

func TestNotifyStops(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{})
	snap, _ := sim.Export(r.cred.TenantID)
	u := snap.Users[0].ID
	deleted := r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
	r.json("DELETE", "/subscriptions/"+deleted, nil, 204)
	forgotten := r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
	admin(t, sim, func(a *graphsim.Admin) { a.ForgetSubscriptions() })
	// control shares the URL, so its queue: once control has a change's
	// notification, any other subscription's for that change has come too
	// (the tests of reauthorization and expiry use the same barrier).
	control := r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
	admin(t, sim, func(a *graphsim.Admin) { a.UpdateUser(a.User(u), func(u *graphsim.User) { u.MobilePhone = nil }) })
	notes := rc.wait(t, "the control notification", func(ns []note) bool { return of(ns, control) == 1 })
	if of(notes, deleted)+of(notes, forgotten) != 0 {
		t.Errorf("deleted or forgotten subscriptions notified: %+v", notes)
	}
	for _, id := range []string{deleted, forgotten} {
		resp, b := r.do("PATCH", "/subscriptions/"+id, map[string]any{"expirationDateTime": expiry(sim, time.Hour)})
		if code, _ := graphErr(t, b); resp.StatusCode != 404 || code != "ExtensionError" {
			t.Errorf("PATCH %s: %d %s", id, resp.StatusCode, b)
		}
	}
	if vs := r.json("GET", "/subscriptions", nil, 200)["value"].([]any); len(vs) != 1 {
		t.Errorf("listed %d subscriptions, want the control only", len(vs))
	}
}

func TestNotifyReauthorization(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{})
	snap, _ := sim.Export(r.cred.TenantID)
	u := snap.Users[0].ID
	body := subBody(sim, rc.url("/notify"), "/users")
	body["lifecycleNotificationUrl"] = rc.url("/lifecycle")
	sub := r.subscribe(body)
	control := r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
	rc.mu.Lock()
	validated := len(rc.tokens)
	rc.mu.Unlock()
	if validated != 3 {
		t.Errorf("%d validation handshakes, want 3 (the lifecycle URL too)", validated)
	}
	k := 0
	change := func() []note {
		k++
		admin(t, sim, func(a *graphsim.Admin) { a.UpdateUser(a.User(u), func(u *graphsim.User) { u.MobilePhone = nil }) })
		return rc.wait(t, "the control notification", func(ns []note) bool { return of(ns, control) == k })
	}

	admin(t, sim, func(a *graphsim.Admin) {
		if err := a.RequireReauthorization(sub); err != nil {
			t.Fatal(err)
		}
		if s := a.Subscriptions(); !s[0].ReauthorizationRequired {
			t.Errorf("not marked: %+v", s[0])
		}
	})
	lifecycles := func(ns []note) []note {
		var out []note
		for _, n := range ns {
			if n.LifecycleEvent != "" {
				out = append(out, n)
			}
		}
		return out
	}
	lc := lifecycles(rc.wait(t, "reauthorizationRequired", func(ns []note) bool { return len(lifecycles(ns)) == 1 }))[0]
	if lc.LifecycleEvent != "reauthorizationRequired" || lc.Path != "/lifecycle" || lc.SubscriptionID != sub || lc.ClientState == nil || *lc.ClientState != "secret-/users" || lc.TenantID != r.cred.TenantID {
		t.Errorf("lifecycle notification %+v", lc)
	}
	if notes := change(); of(notes, sub) != 1 { // the lifecycle one only
		t.Errorf("delivered while awaiting reauthorization: %+v", notes)
	}
	r.json("POST", "/subscriptions/"+sub+"/reauthorize", nil, 204)
	if notes := change(); of(notes, sub) != 2 {
		t.Errorf("not delivered after reauthorize: %+v", notes)
	}
	// A renewal also ends a pending reauthorization.
	admin(t, sim, func(a *graphsim.Admin) { _ = a.RequireReauthorization(sub) })
	rc.wait(t, "a second reauthorizationRequired", func(ns []note) bool { return len(lifecycles(ns)) == 2 })
	r.json("PATCH", "/subscriptions/"+sub, map[string]any{"expirationDateTime": expiry(sim, 48*time.Hour)}, 200)
	if notes := change(); of(notes, sub) != 4 { // second lifecycle + change
		t.Errorf("not delivered after renewal: %+v", notes)
	}
}

func TestNotifyExpiry(t *testing.T) {
	// An hour of model time passes in two real seconds.
	sim, r, rc := notifySetup(t, graphsim.Options{TimeScale: 1800, TokenLifetime: 10000 * time.Hour})
	snap, _ := sim.Export(r.cred.TenantID)
	short := r.json("POST", "/subscriptions", map[string]any{"changeType": "updated", "notificationUrl": rc.url("/notify"),
		"resource": "/users", "expirationDateTime": expiry(sim, time.Minute)}, 201) // rounded up to 45 minutes
	control := r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
	id := short["id"].(string)
	exp, _ := time.Parse(time.RFC3339Nano, short["expirationDateTime"].(string))

	poll(t, "the subscription to expire", func() bool {
		resp, _ := r.do("GET", "/subscriptions/"+id, nil)
		return resp.StatusCode == 404
	})
	if now := sim.Now(); now.Before(exp) {
		t.Errorf("gone at %v, before its expiry %v", now, exp)
	}
	u := snap.Users[0].ID
	admin(t, sim, func(a *graphsim.Admin) {
		a.UpdateUser(a.User(u), func(u *graphsim.User) { u.MobilePhone = nil })
		if s := a.Subscriptions(); len(s) != 1 || s[0].ID != control {
			t.Errorf("live subscriptions %+v", s)
		}
	})
	if notes := rc.wait(t, "the control notification", func(ns []note) bool { return of(ns, control) == 1 }); of(notes, id) != 0 {
		t.Errorf("expired subscription notified: %+v", notes)
	}
}

func TestNotifyCloseStopsDelivery(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{})
	hanging := make(chan struct{}, 1)
	rc.setNotify(func(w http.ResponseWriter, r *http.Request, _ int) bool {
		select {
		case hanging <- struct{}{}:
		default:
		}
		rc.hang(r)
		return false
	})
	r.subscribe(subBody(sim, rc.url("/notify"), "/users"))
	admin(t, sim, func(a *graphsim.Admin) { a.RandomChanges(5, 3) })
	select {
	case <-hanging:
	case <-time.After(20 * time.Second):
		t.Fatal("no notification came")
	}
	done := make(chan struct{})
	go func() { sim.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Close hangs on a receiver that does not answer")
	}
	admin(t, sim, func(a *graphsim.Admin) { a.RandomChanges(5, 4) }) // not notified: no goroutine starts
}

package graphsim_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
)

func TestSubscriptionEndpoints(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{})
	body := subBody(sim, rc.url("/notify"), "/users")
	m := r.json("POST", "/subscriptions", body, 201)
	id, _ := m["id"].(string)
	if id == "" || m["applicationId"] != r.cred.ClientID || m["creatorId"] == nil || m["resource"] != "/users" ||
		m["changeType"] != "updated,deleted" || m["clientState"] != "secret-/users" || m["notificationUrl"] != rc.url("/notify") ||
		m["includeResourceData"] != false {
		t.Errorf("created: %v", m)
	}
	if _, err := time.Parse(time.RFC3339Nano, m["expirationDateTime"].(string)); err != nil {
		t.Errorf("expirationDateTime: %v", err)
	}
	// The handshake's token needed decoding: spaces came as '+', '+' as %2B.
	rc.mu.Lock()
	tokens, rawQ := rc.tokens, rc.rawTokens
	rc.mu.Unlock()
	if len(tokens) != 1 || !strings.Contains(tokens[0], " ") || !strings.Contains(tokens[0], "+") ||
		!strings.Contains(rawQ[0], "%2B") || strings.Contains(rawQ[0], " ") {
		t.Errorf("validation token %q, query %q", tokens, rawQ)
	}

	if got := r.json("GET", "/subscriptions/"+id, nil, 200); got["id"] != id || got["resource"] != "/users" {
		t.Errorf("GET: %v", got)
	}
	if vs := r.json("GET", "/subscriptions", nil, 200)["value"].([]any); len(vs) != 1 || vs[0].(map[string]any)["id"] != id {
		t.Errorf("list: %v", vs)
	}
	admin(t, sim, func(a *graphsim.Admin) {
		if s := a.Subscriptions(); len(s) != 1 || s[0].ID != id || s[0].ApplicationID != r.cred.ClientID || s[0].ClientState != "secret-/users" {
			t.Errorf("Admin.Subscriptions: %+v", s)
		}
	})

	// Another app of the tenant sees only its own.
	other := r.cred
	other.ClientID, other.ClientSecret = "00000000-0000-4000-8000-0000000000aa", "other-secret"
	admin(t, sim, func(a *graphsim.Admin) {
		a.AddApp(&graphsim.App{ClientID: other.ClientID, Secret: other.ClientSecret, Roles: graphsim.FullPermissions})
	})
	r2 := newRaw(t, sim, other)
	if vs := r2.json("GET", "/subscriptions", nil, 200)["value"].([]any); len(vs) != 0 {
		t.Errorf("other app lists %v", vs)
	}
	if resp, _ := r2.do("GET", "/subscriptions/"+id, nil); resp.StatusCode != 404 {
		t.Errorf("other app GET: %d", resp.StatusCode)
	}

	// Renew.
	exp := sim.Now().Add(72 * time.Hour).UTC().Truncate(time.Second)
	m = r.json("PATCH", "/subscriptions/"+id, map[string]any{"expirationDateTime": exp.Format(time.RFC3339)}, 200)
	if got, _ := time.Parse(time.RFC3339Nano, m["expirationDateTime"].(string)); !got.Equal(exp) {
		t.Errorf("renewed to %v, want %v", m["expirationDateTime"], exp)
	}
	if got := r.json("GET", "/subscriptions/"+id, nil, 200); got["expirationDateTime"] != m["expirationDateTime"] {
		t.Errorf("GET after renewal: %v", got["expirationDateTime"])
	}
	r.json("DELETE", "/subscriptions/"+id, nil, 204)
	resp, b := r.do("GET", "/subscriptions/"+id, nil)
	if code, _ := graphErr(t, b); resp.StatusCode != 404 || code != "ExtensionError" {
		t.Errorf("GET deleted: %d %s", resp.StatusCode, b)
	}
}

func TestSubscriptionValidationRefused(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{ValidationTimeout: 200 * time.Millisecond})
	for _, c := range []struct {
		name      string
		handshake func(w http.ResponseWriter, r *http.Request, token string)
		lifecycle bool // refuse only on the lifecycle URL
		code, msg string
	}{
		{"wrong token", func(w http.ResponseWriter, _ *http.Request, token string) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte(token + "x"))
		}, false, "ValidationError", "Response must exactly match validationToken"},
		{"token not decoded", func(w http.ResponseWriter, r *http.Request, _ string) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte(strings.TrimPrefix(r.URL.RawQuery, "validationToken=")))
		}, false, "ValidationError", "Response must exactly match validationToken"},
		{"not text/plain", func(w http.ResponseWriter, _ *http.Request, token string) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(token))
		}, false, "ValidationError", "Response must exactly match validationToken"},
		{"not 200", func(w http.ResponseWriter, _ *http.Request, token string) {
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write([]byte(token))
		}, false, "ValidationError", "must respond with 200 OK"},
		{"too slow", func(w http.ResponseWriter, r *http.Request, token string) { rc.hang(r) }, false, "InvalidRequest", "timed out"},
		{"lifecycle URL refuses", func(w http.ResponseWriter, r *http.Request, token string) {
			if r.URL.Path == "/lifecycle" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte(token))
		}, true, "ValidationError", "must respond with 200 OK"},
	} {
		t.Run(c.name, func(t *testing.T) {
			rc.setHandshake(c.handshake)
			body := subBody(sim, rc.url("/notify"), "/users")
			if c.lifecycle {
				body["lifecycleNotificationUrl"] = rc.url("/lifecycle")
			}
			resp, b := r.do("POST", "/subscriptions", body)
			code, msg := graphErr(t, b)
			if resp.StatusCode != 400 || code != c.code || !strings.Contains(msg, c.msg) || !strings.HasPrefix(msg, "Subscription validation request") {
				t.Errorf("%d %s", resp.StatusCode, b)
			}
			admin(t, sim, func(a *graphsim.Admin) {
				if s := a.Subscriptions(); len(s) != 0 {
					t.Errorf("kept %+v", s)
				}
			})
		})
	}
}

func TestSubscriptionRules(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{})
	url := rc.url("/notify")
	for _, c := range []struct {
		name   string
		change func(b map[string]any)
		status int
		code   string
	}{
		{"http URL", func(b map[string]any) { b["notificationUrl"] = "http://127.0.0.1:1/notify" }, 400, "InvalidRequest"},
		{"http lifecycle URL", func(b map[string]any) { b["lifecycleNotificationUrl"] = "http://127.0.0.1:1/lc" }, 400, "InvalidRequest"},
		{"mail resource", func(b map[string]any) { b["resource"] = "/users/x/messages" }, 400, "InvalidRequest"},
		{"members resource", func(b map[string]any) { b["resource"] = "/groups/x/members" }, 400, "InvalidRequest"},
		{"query resource", func(b map[string]any) { b["resource"] = "/users?$filter=x" }, 400, "InvalidRequest"},
		{"bad changeType", func(b map[string]any) { b["changeType"] = "updated,moved" }, 400, "InvalidRequest"},
		{"no resource", func(b map[string]any) { delete(b, "resource") }, 400, "InvalidRequest"},
		{"no expiry", func(b map[string]any) { delete(b, "expirationDateTime") }, 400, "InvalidRequest"},
		{"expiry too far", func(b map[string]any) { b["expirationDateTime"] = expiry(sim, 41760*time.Minute+10*time.Minute) }, 400, "ExtensionError"},
		{"expiry past", func(b map[string]any) { b["expirationDateTime"] = expiry(sim, -time.Minute) }, 400, "ExtensionError"},
		{"clientState 129", func(b map[string]any) { b["clientState"] = strings.Repeat("c", 129) }, 400, "InvalidRequest"},
		{"includeResourceData", func(b map[string]any) { b["includeResourceData"] = true }, 400, "InvalidRequest"},
		{"unknown property", func(b map[string]any) { b["colour"] = "blue" }, 400, "Request_BadRequest"},
		{"clientState 128", func(b map[string]any) { b["clientState"] = strings.Repeat("c", 128) }, 201, ""},
		{"no leading slash, created", func(b map[string]any) { b["resource"], b["changeType"] = "groups", "created,updated" }, 201, ""},
		{"one user", func(b map[string]any) { b["resource"] = "/users/00000000-0000-4000-8000-000000000001" }, 201, ""},
		{"expiry near the limit", func(b map[string]any) { b["expirationDateTime"] = expiry(sim, 41700*time.Minute) }, 201, ""},
		{"includeResourceData false", func(b map[string]any) { b["includeResourceData"] = false }, 201, ""},
	} {
		b := subBody(sim, url, "/users")
		c.change(b)
		resp, body := r.do("POST", "/subscriptions", b)
		if resp.StatusCode != c.status {
			t.Errorf("%s: %d %s, want %d", c.name, resp.StatusCode, body, c.status)
			continue
		}
		if c.code != "" {
			if code, _ := graphErr(t, body); code != c.code {
				t.Errorf("%s: code %s, want %s", c.name, code, c.code)
			}
		}
	}

	// Less than 45 minutes away is rounded up to 45 (model time).
	before := sim.Now()
	m := r.json("POST", "/subscriptions", map[string]any{"changeType": "updated", "notificationUrl": url, "resource": "users",
		"expirationDateTime": expiry(sim, time.Minute)}, 201)
	after := sim.Now()
	got, _ := time.Parse(time.RFC3339Nano, m["expirationDateTime"].(string))
	if got.Before(before.Add(45*time.Minute).Truncate(time.Microsecond)) || got.After(after.Add(45*time.Minute)) {
		t.Errorf("rounded expiry %v, want 45 min after %v..%v", got, before, after)
	}
	if m["clientState"] != nil {
		t.Errorf("clientState %v, want null", m["clientState"])
	}
	id := m["id"].(string)
	// Renewals follow the same limits; the lifecycle URL is fixed at creation.
	for _, c := range []struct {
		name string
		body map[string]any
		code string
	}{
		{"too far", map[string]any{"expirationDateTime": expiry(sim, 41761*time.Minute)}, "ExtensionError"},
		{"lifecycle URL", map[string]any{"lifecycleNotificationUrl": rc.url("/lc")}, "InvalidRequest"},
		{"resource", map[string]any{"resource": "/groups"}, "InvalidRequest"},
		{"http URL", map[string]any{"notificationUrl": "http://127.0.0.1:1/x"}, "InvalidRequest"},
	} {
		resp, b := r.do("PATCH", "/subscriptions/"+id, c.body)
		if code, _ := graphErr(t, b); resp.StatusCode != 400 || code != c.code {
			t.Errorf("PATCH %s: %d %s", c.name, resp.StatusCode, b)
		}
	}
	m = r.json("PATCH", "/subscriptions/"+id, map[string]any{"expirationDateTime": expiry(sim, 10*time.Minute)}, 200)
	if got, _ := time.Parse(time.RFC3339Nano, m["expirationDateTime"].(string)); got.Before(before.Add(45 * time.Minute)) {
		t.Errorf("renewal not rounded up: %v", got)
	}
}

func TestSubscriptionQuota(t *testing.T) {
	sim, r, rc := notifySetup(t, graphsim.Options{SubscriptionQuota: 2})
	a := r.subscribe(subBody(sim, rc.url("/a"), "/users"))
	r.subscribe(subBody(sim, rc.url("/b"), "/groups"))
	resp, b := r.do("POST", "/subscriptions", subBody(sim, rc.url("/c"), "/users"))
	if code, _ := graphErr(t, b); resp.StatusCode != 403 || code != "ExtensionError" {
		t.Fatalf("past the quota: %d %s", resp.StatusCode, b)
	}
	r.json("DELETE", "/subscriptions/"+a, nil, 204)
	r.subscribe(subBody(sim, rc.url("/c"), "/users"))
}

func TestSubscriptionPermissions(t *testing.T) {
	sim, _, rc := notifySetup(t, graphsim.Options{})
	admin(t, sim, func(a *graphsim.Admin) { a.App("").Roles = []string{"User.Read.All"} })
	r := newRaw(t, sim, sim.Credentials()[0]) // a token with the new roles
	r.subscribe(subBody(sim, rc.url("/u"), "/users"))
	snap, _ := sim.Export(r.cred.TenantID)
	for _, res := range []string{"/groups", "groups", "/groups/" + snap.Groups[0].ID} {
		resp, b := r.do("POST", "/subscriptions", subBody(sim, rc.url("/g"), res))
		if code, _ := graphErr(t, b); resp.StatusCode != 403 || code != "ExtensionError" {
			t.Errorf("%s without Group.Read.All: %d %s", res, resp.StatusCode, b)
		}
	}
	admin(t, sim, func(a *graphsim.Admin) { a.App("").Roles = []string{"Directory.Read.All"} })
	r = newRaw(t, sim, sim.Credentials()[0])
	r.subscribe(subBody(sim, rc.url("/g"), "/groups"))
}

package graphsim_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
)

// receiver is a webhook endpoint over TLS, like a product's: it answers the
// validation handshake and records the notifications POSTed to it.
type receiver struct {
	srv *httptest.Server
	sim atomic.Pointer[graphsim.Server] // for receipt times (model clock)

	mu        sync.Mutex
	notes     []note
	posts     []int    // notifications per accepted POST
	attempts  int      // notification POSTs, accepted or not
	tokens    []string // validation tokens, decoded
	rawTokens []string // as they came in the query
	handshake func(w http.ResponseWriter, r *http.Request, token string)
	// notify answers a notification POST (attempt counts from 1); nil
	// accepts with 202.
	notify func(w http.ResponseWriter, r *http.Request, attempt int) bool
	signal chan struct{}
	closed chan struct{} // closed when the test ends: hanging handlers return
}

// note is one notification as a receiver decodes it.
type note struct {
	Path string    `json:"-"` // where it was POSTed
	At   time.Time `json:"-"` // model time of receipt

	SubscriptionID                 string  `json:"subscriptionId"`
	SubscriptionExpirationDateTime string  `json:"subscriptionExpirationDateTime"`
	ChangeType                     string  `json:"changeType"`
	Resource                       string  `json:"resource"`
	ClientState                    *string `json:"clientState"`
	TenantID                       string  `json:"tenantId"`
	LifecycleEvent                 string  `json:"lifecycleEvent"`
	ResourceData                   *struct {
		ODataType      string `json:"@odata.type"`
		ODataID        string `json:"@odata.id"`
		ID             string `json:"id"`
		OrganizationID string `json:"organizationId"`
	} `json:"resourceData"`
}

func newReceiver(t *testing.T) *receiver {
	rc := &receiver{signal: make(chan struct{}, 1), closed: make(chan struct{})}
	rc.srv = httptest.NewTLSServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	t.Cleanup(func() { close(rc.closed) }) // runs first
	return rc
}

// hang answers nothing until the caller gives up or the test ends. The
// body is read first: only then does the server notice a closed connection.
func (rc *receiver) hang(r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	select {
	case <-r.Context().Done():
	case <-rc.closed:
	}
}

func (rc *receiver) url(path string) string { return rc.srv.URL + path }

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Has("validationToken") {
		token := r.URL.Query().Get("validationToken")
		rc.mu.Lock()
		rc.tokens = append(rc.tokens, token)
		rc.rawTokens = append(rc.rawTokens, r.URL.RawQuery)
		h := rc.handshake
		rc.mu.Unlock()
		if h != nil {
			h(w, r, token)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte(token))
		return
	}
	rc.mu.Lock()
	rc.attempts++
	attempt, answer := rc.attempts, rc.notify
	rc.mu.Unlock()
	if answer != nil && !answer(w, r, attempt) {
		return // refused: not recorded
	}
	var body struct {
		Value []note `json:"value"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	at := time.Time{}
	if sim := rc.sim.Load(); sim != nil {
		at = sim.Now()
	}
	rc.mu.Lock()
	for i := range body.Value {
		body.Value[i].Path, body.Value[i].At = r.URL.Path, at
	}
	rc.notes = append(rc.notes, body.Value...)
	rc.posts = append(rc.posts, len(body.Value))
	rc.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
	select {
	case rc.signal <- struct{}{}:
	default:
	}
}

func (rc *receiver) setHandshake(h func(w http.ResponseWriter, r *http.Request, token string)) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.handshake = h
}

func (rc *receiver) setNotify(f func(w http.ResponseWriter, r *http.Request, attempt int) bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.notify = f
}

func (rc *receiver) snapshot() []note {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.notes)
}

// wait returns the notes once ok holds for them; it fails the test after a
// generous deadline (a hang guard, not a timing assertion).
func (rc *receiver) wait(t *testing.T, what string, ok func([]note) bool) []note {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		notes := rc.snapshot()
		if ok(notes) {
			return notes
		}
		select {
		case <-rc.signal:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s; received %+v", what, notes)
		}
	}
}

// waitFor waits for a notification of subscription sub about resource.
func (rc *receiver) waitFor(t *testing.T, sub, resource, changeType string) note {
	t.Helper()
	var found note
	rc.wait(t, changeType+" "+resource+" for "+sub, func(ns []note) bool {
		for _, n := range ns {
			if n.SubscriptionID == sub && n.Resource == resource && n.ChangeType == changeType {
				found = n
				return true
			}
		}
		return false
	})
	return found
}

// of counts the notes of one subscription.
func of(notes []note, sub string) int {
	k := 0
	for _, n := range notes {
		if n.SubscriptionID == sub {
			k++
		}
	}
	return k
}

// poll waits until cond holds, checking every few milliseconds, under a
// generous deadline.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// notifySetup starts a receiver and a simulator that trusts it.
func notifySetup(t *testing.T, o graphsim.Options) (*graphsim.Server, *raw, *receiver) {
	t.Helper()
	rc := newReceiver(t)
	o.NotifyClient = rc.srv.Client()
	o.NoThrottling = true
	if o.Users == 0 {
		o.Users, o.Groups = 20, 4
	}
	sim := start(t, o)
	rc.sim.Store(sim)
	return sim, newRaw(t, sim, sim.Credentials()[0]), rc
}

// subBody is a valid creation body, expiring in a day of model time.
func subBody(sim *graphsim.Server, url, resource string) map[string]any {
	return map[string]any{"changeType": "updated,deleted", "notificationUrl": url, "resource": resource,
		"expirationDateTime": expiry(sim, 24*time.Hour), "clientState": "secret-" + resource}
}

func expiry(sim *graphsim.Server, d time.Duration) string {
	return sim.Now().Add(d).UTC().Format(time.RFC3339Nano)
}

func (r *raw) subscribe(body map[string]any) string {
	r.t.Helper()
	return r.json("POST", "/subscriptions", body, 201)["id"].(string)
}

// admin runs f on tenant 0 of sim.
func admin(t *testing.T, sim *graphsim.Server, f func(a *graphsim.Admin)) {
	t.Helper()
	if err := sim.Mutate(sim.Credentials()[0].TenantID, func(a *graphsim.Admin) error { f(a); return nil }); err != nil {
		t.Fatal(err)
	}
}

func counters(t *testing.T, sim *graphsim.Server) (sent, delivered, dropped int64) {
	admin(t, sim, func(a *graphsim.Admin) {
		sent, delivered, dropped = a.NotificationsSent(), a.NotificationsDelivered(), a.NotificationsDropped()
	})
	return
}

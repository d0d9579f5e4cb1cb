package notify_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/worker"
)

// emptyItems is a POST body of n {} notifications: the cheapest item to
// send, the costliest to decode whole.
func emptyItems(n int) []byte {
	b := bytes.NewBufferString(`{"value":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("{}")
	}
	b.WriteString("]}")
	return b.Bytes()
}

// serve runs one request through the receiver in process and returns the
// answer and the bytes allocated meanwhile.
func serve(rcv http.Handler, path string, body []byte) (*httptest.ResponseRecorder, uint64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rec := httptest.NewRecorder()
	rcv.ServeHTTP(rec, httptest.NewRequest("POST", path, bytes.NewReader(body)))
	runtime.ReadMemStats(&after)
	return rec, after.TotalAlloc - before.TotalAlloc
}

// Finding 1: one anonymous request of {} items cost 163 MiB.
func TestHostileBodyBoundedWork(t *testing.T) {
	e := newEnv(t, notify.Config{})
	for _, n := range []int{60_000, 349_000} {
		body := emptyItems(n)
		rec, alloc := serve(e.rcv, "/default/acme", body)
		if alloc > 4<<20 {
			t.Errorf("%d {} items (%d bytes): answered %d after allocating %d MiB, want at most 4", n, len(body), rec.Code, alloc>>20)
		}
		if rec.Code == http.StatusAccepted {
			t.Errorf("%d {} items: answered 202", n)
		}
	}
}

// Finding 2: large bodies read at once are capped; past the cap, 503 with
// Retry-After before their rest is read. A small body (what Graph sends)
// needs no slot, so held slots do not crowd it out.
func TestConcurrentBodyReadsAreCapped(t *testing.T) {
	e := newEnv(t, notify.Config{})
	const held = notify.DefaultMaxBodyReads
	head := append([]byte(`{"value":[`), bytes.Repeat([]byte(" "), 9<<10)...) // past the small body: takes a slot
	var wg sync.WaitGroup
	writers := make([]*io.PipeWriter, held)
	started := make(chan struct{}, held)
	for i := range held {
		pr, pw := io.Pipe()
		writers[i] = pw
		wg.Go(func() {
			rec := httptest.NewRecorder()
			go func() { _, _ = pw.Write(head); _, _ = pw.Write([]byte(" ")); started <- struct{}{} }()
			e.rcv.ServeHTTP(rec, httptest.NewRequest("POST", "/default/acme", pr))
			_ = pr.Close()
		})
	}
	for range held {
		<-started // each body is read past its first 9 KiB: it holds a slot
	}
	cs := clientState("default", "acme")
	large := notifications(40, &cs)
	if len(large) <= 8<<10 {
		t.Fatalf("the large body is %d bytes", len(large))
	}
	rec, _ := serve(e.rcv, "/default/acme", large)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Errorf("a large POST while %d bodies are being read: %d (Retry-After %q), want 503 with Retry-After", held, rec.Code, rec.Header().Get("Retry-After"))
	}
	if rec, _ := serve(e.rcv, "/default/acme", notifications(1, &cs)); rec.Code != http.StatusAccepted {
		t.Errorf("a small POST while %d bodies are being read: %d, want 202", held, rec.Code)
	}
	for _, pw := range writers {
		_ = pw.CloseWithError(io.ErrUnexpectedEOF)
	}
	wg.Wait()
	if rec, _ := serve(e.rcv, "/default/acme", large); rec.Code != http.StatusAccepted {
		t.Errorf("a large POST once the bodies were read: %d, want 202", rec.Code)
	}
	if s := e.rcv.Stats(); s.Requests["busy"] != 1 {
		t.Errorf("stats %+v, want 1 request answered busy", s)
	}
}

// Finding 5: a trigger that cannot be stored is answered 503 with
// Retry-After, so that Graph delivers the notification again.
func TestUnstorableTriggerIsAnswered503(t *testing.T) {
	e := newEnv(t, notify.Config{})
	if err := e.js.DeleteStream(context.Background(), worker.Topology{}.JobsStream()); err != nil {
		t.Fatal(err)
	}
	cs := clientState("default", "acme")
	rec, _ := serve(e.rcv, "/default/acme", notifications(1, &cs))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Errorf("a notification whose trigger cannot be stored: %d (Retry-After %q), want 503 with Retry-After", rec.Code, rec.Header().Get("Retry-After"))
	}
}

// Finding 4: basic notifications carry no nonce, so a valid one can be
// replayed. Copies replayed after each trigger was stored make one trigger
// at once and exactly one more when the spacing ends.
func TestReplayedNotificationIsSpaced(t *testing.T) {
	e := newEnv(t, notify.Config{Spacing: time.Hour})
	cs := clientState("default", "acme")
	body := notifications(1, &cs)
	for i := range 10 {
		if code := e.post("/default/acme", body); code != 202 {
			t.Fatalf("copy %d: %d", i, code)
		}
	}
	if s := e.rcv.Stats(); s.Published != 1 || s.Deferred != 1 || s.Coalesced != 8 {
		t.Errorf("stats %+v after 10 copies, want 1 trigger stored and 1 deferred", s)
	}
	e.rcv.Close()
	if s := e.rcv.Stats(); s.Published != 2 {
		t.Errorf("10 replayed copies made %d triggers, want 2", s.Published)
	}
}

// Finding 7: one POST of lifecycle notifications with a valid clientState
// writes one log line, however many it carries (it wrote one each).
func TestLifecycleLoggingIsBounded(t *testing.T) {
	e := newEnv(t, notify.Config{})
	cs := clientState("default", "acme")
	var items []map[string]any
	for i := range 500 {
		items = append(items, map[string]any{"subscriptionId": strings.Repeat("s", 200) + fmt.Sprint(i), "lifecycleEvent": "reauthorizationRequired", "clientState": cs})
	}
	body, _ := json.Marshal(map[string]any{"value": items})
	if code := e.post("/default/acme/lifecycle", body); code != 202 {
		t.Fatalf("lifecycle POST: %d", code)
	}
	if recs := e.logs.records("notify: lifecycle notification"); len(recs) != 1 {
		t.Errorf("%d log lines for one POST, want 1", len(recs))
	} else if id, _ := recs[0]["subscription_id"].(string); len(id) > 70 {
		t.Errorf("a subscription id of %d bytes logged", len(id))
	}
}

// A receiver tracks at most MaxPending instances at once; a notification
// for another one past it is answered 503 with Retry-After.
func TestPendingInstancesAreCapped(t *testing.T) {
	e := newEnv(t, notify.Config{MaxPending: 1, Spacing: time.Hour})
	for _, c := range []struct {
		inst string
		want int
	}{{"acme", 202}, {"beta", 503}} {
		cs := clientState("default", c.inst)
		if code := e.post("/default/"+c.inst, notifications(1, &cs)); code != c.want {
			t.Errorf("%s: %d, want %d", c.inst, code, c.want)
		}
	}
	if s := e.rcv.Stats(); s.Requests["busy"] != 1 || s.Published != 1 {
		t.Errorf("stats %+v", s)
	}
}

// A body that does not arrive within BodyTimeout of the headers is
// answered 400: a slow sender holds nothing for long.
func TestSlowBodyIsCutOff(t *testing.T) {
	e := newEnv(t, notify.Config{})
	c, err := tls.Dial("tcp", e.srv.Listener.Addr().String(), e.srv.Client().Transport.(*http.Transport).TLSClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "POST /default/acme HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"value\":[")
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second)) // a hang guard
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a body that stopped: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a body that stopped: %d, want 400", resp.StatusCode)
	}
}

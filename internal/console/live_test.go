package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// failJob publishes a job for acme and a failure record for it, as a
// worker would.
func (e *env) failJob(id, params string) {
	e.t.Helper()
	ctx := context.Background()
	ack, err := e.js.Publish(ctx, "m365.jobs.default.acme.action.reset_password", []byte(`{"schema_version":1,"id":"`+id+`","instance":"acme","action":"microsoft-365.reset_password","params":`+params+`}`))
	if err != nil {
		e.t.Fatal(err)
	}
	rec, _ := json.Marshal(jobs.FailureRecord{SchemaVersion: 1, JobID: id, Instance: "acme", Pool: "default", Action: "microsoft-365.reset_password",
		Subject: "m365.jobs.default.acme.action.reset_password", Stream: "M365_JOBS", StreamSeq: ack.Sequence, FailedAt: time.Now().UTC(),
		Error: jobs.Error{Code: "user_not_found", Message: "user adele.vance@contoso.com does not exist"}})
	if _, err := e.js.Publish(ctx, "m365.failures.acme", rec); err != nil {
		e.t.Fatal(err)
	}
}

// Every open page gets the watcher's changes as server-sent events, and
// however many pages are open the console reads the failures stream
// through one consumer.
func TestLiveUpdatesFromOneWatcher(t *testing.T) {
	e := newEnv(t)
	op := e.browser()
	e.signIn(op, e.users[0])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var streams []*bufio.Reader
	for range 5 {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/events", nil)
		resp, err := op.Do(req)
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("/events: %v %v", resp, err)
		}
		defer resp.Body.Close()
		streams = append(streams, bufio.NewReader(resp.Body))
	}
	e.failJob("live-1", `{"user":"adele.vance@contoso.com"}`)
	for i, r := range streams {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("page %d's event stream ended before it showed the failure: %v", i, err)
			}
			if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"failures":1`) {
				break
			}
		}
	}
	st, _ := e.js.Stream(ctx, "M365_FAILURES")
	info, err := st.Info(ctx)
	if err != nil || info.State.Consumers != 1 {
		t.Errorf("with 5 pages open the failures stream has %d consumers (%v), want the watcher's one", info.State.Consumers, err)
	}
}

// A job waiting in its pool's queue is "queued"; a record's job shows
// its personal data masked, and never a secret sent in clear, even
// revealed.
func TestWhereAJobIsAndMasking(t *testing.T) {
	e := newEnv(t)
	op := e.browser()
	e.signIn(op, e.users[0])
	workertest.PublishJob(t, e.js, "default", &jobs.Job{ID: "waiting-1", Instance: "acme", Action: jobs.FullAction("disable_user"), Params: json.RawMessage(`{"user":"x@contoso.com"}`)})
	workertest.Eventually(t, 30*time.Second, "job waiting-1 shown queued", func() bool {
		_, page := do(t, op, "GET", e.url+"/jobs?id=waiting-1", nil)
		return strings.Contains(page, `<span class="where-queued">queued</span>`) && strings.Contains(page, "ahead in pool default")
	})
	// A worker takes it: in flight, then running once it holds its target's lock.
	ctx := context.Background()
	cons, err := e.js.Consumer(ctx, "M365_JOBS", "m365_pool_default")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	workertest.Eventually(t, 30*time.Second, "job waiting-1 shown in flight", func() bool {
		_, page := do(t, op, "GET", e.url+"/jobs?id=waiting-1", nil)
		return strings.Contains(page, `<span class="where-in flight">in flight</span>`) && strings.Contains(page, "holding no lock")
	})
	st, err := worker.OpenState(ctx, e.js, worker.Topology{})
	if err != nil {
		t.Fatal(err)
	}
	lock, err := st.For("default", "acme").AcquireTarget(ctx, "user:x@contoso.com", state.Holder{Worker: "w-test", JobID: "waiting-1", Since: time.Now()}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release(ctx)
	if _, page := do(t, op, "GET", e.url+"/jobs?id=waiting-1", nil); !strings.Contains(page, `<span class="where-running">running</span>`) || !strings.Contains(page, "on worker w-test") {
		t.Errorf("a job holding its target's lock should be running on w-test:\n%s", page)
	}

	e.failJob("secret-1", `{"user":"adele.vance@contoso.com","password":"Hunter2!Hunter2!"}`)
	var seq string
	workertest.Eventually(t, 30*time.Second, "the failure listed", func() bool {
		_, page := do(t, op, "GET", e.url+"/failures?q=secret-1", nil)
		m := regexp.MustCompile(`href="/failures/(\d+)"`).FindStringSubmatch(page)
		if m != nil {
			seq = m[1]
		}
		return m != nil && !strings.Contains(page, "adele.vance@")
	})
	_, page := do(t, op, "GET", e.url+"/failures/"+seq, nil)
	if strings.Contains(page, "Hunter2") || strings.Contains(page, "adele.vance@") || !strings.Contains(page, "a•••@contoso.com") {
		t.Errorf("the masked record:\n%s", page)
	}
	_, page = do(t, op, "POST", e.url+"/failures/"+seq+"/reveal", url.Values{"csrf": {e.csrf(op)}})
	if strings.Contains(page, "Hunter2") || !strings.Contains(page, "adele.vance@contoso.com") || !strings.Contains(page, "[redacted: sent in clear") {
		t.Errorf("the revealed record shows the user, never the password:\n%s", page)
	}
	workertest.Eventually(t, 30*time.Second, "the reveal in the audit", func() bool {
		_, audit := do(t, op, "GET", e.url+"/audit", nil)
		return strings.Contains(audit, "<td>reveal</td><td>secret-1</td>")
	})
}

// An operator replays one record without a typed confirmation; the replay
// page names the new job, which the jobs stream holds with M365-Replay-Of.
func TestReplayOne(t *testing.T) {
	e := newEnv(t)
	op := e.browser()
	e.signIn(op, e.users[0])
	e.failJob("one-1", `{"user":"adele.vance@contoso.com"}`)
	var seq string
	workertest.Eventually(t, 30*time.Second, "the failure listed", func() bool {
		_, page := do(t, op, "GET", e.url+"/failures?q=one-1", nil)
		m := regexp.MustCompile(`href="/failures/(\d+)"`).FindStringSubmatch(page)
		if m != nil {
			seq = m[1]
		}
		return m != nil
	})
	resp, body := do(t, op, "POST", e.url+"/replay", url.Values{"csrf": {e.csrf(op)}, "seq": {seq}})
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/replays/") {
		t.Fatalf("replay one answered %d to %s:\n%s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	replays := resp.Header.Get("Location")
	workertest.Eventually(t, 30*time.Second, "the replay published", func() bool {
		_, page := do(t, op, "GET", e.url+replays, nil)
		return strings.Contains(page, "1 of 1 replayed") && strings.Contains(page, "one-1~replay-")
	})
	msgs := workertest.Messages(t, e.js, "M365_JOBS", "m365.jobs.default.acme.action.reset_password")
	if last := msgs[len(msgs)-1]; last.Headers().Get("M365-Replay-Of") != "one-1" || !strings.Contains(string(last.Data()), `"id":"one-1~replay-`) {
		t.Errorf("the last reset_password job is not the replay of one-1: %s %v", last.Data(), last.Headers())
	}
}

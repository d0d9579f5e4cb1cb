package console_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// A customer site's pool keeps its jobs in a stream of its own
// (M365_JOBS_<site>), where its workers' consumer is: the console follows
// it, so a site job's id answers where the job is (counted against the
// site pool's consumer, in the site stream's sequence), its result once
// there is one, and the site pool's backlog shows on the overview.
func TestSitePoolJobsAndBacklog(t *testing.T) {
	e := newEnvSites(t, nil, "site-a")
	op := e.browser()
	e.signIn(op, e.users[0])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store, err := worker.OpenInstances(ctx, e.js, worker.Topology{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, worker.Instance{ID: "globex", Pool: "site-a", TenantID: "globex.onmicrosoft.com", ClientID: "11111111-2222-3333-4444-555555555555", FederatedCredential: true}); err != nil {
		t.Fatal(err)
	}
	// Jobs of the default pool first, so the jobs stream's sequences and
	// the site stream's differ.
	for _, id := range []string{"main-1", "main-2", "main-3"} {
		workertest.PublishJob(t, e.js, "default", &jobs.Job{ID: id, Instance: "acme", Action: jobs.FullAction("disable_user"), Params: json.RawMessage(`{"user":"x@contoso.com"}`)})
	}
	for _, id := range []string{"site-1", "site-2"} {
		workertest.PublishJob(t, e.js, "site-a", &jobs.Job{ID: id, Instance: "globex", Action: jobs.FullAction("disable_user"), Params: json.RawMessage(`{"user":"y@globex.com"}`)})
	}
	workertest.Eventually(t, 30*time.Second, "both site jobs in M365_JOBS_site-a", func() bool {
		st, err := e.js.Stream(ctx, "M365_JOBS_site-a")
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 2
	})
	page := ""
	workertest.Eventually(t, 30*time.Second, "job site-2 queued second in site-a's queue", func() bool {
		_, page = do(t, op, "GET", e.url+"/jobs?id=site-2", nil)
		return strings.Contains(page, `<span class="where-queued">queued</span>`) && strings.Contains(page, "2 ahead in pool site-a")
	})
	if !strings.Contains(page, "M365_JOBS_site-a sequence 2") {
		t.Errorf("site-2 should be named by its site stream's sequence:\n%s", page)
	}
	workertest.Eventually(t, 30*time.Second, "site-a's backlog of 2 on the overview", func() bool {
		_, page = do(t, op, "GET", e.url+"/", nil)
		return strings.Contains(page, "<tr><td>site-a</td><td>0</td><td>2</td><td>0</td></tr>")
	})

	// A site worker takes site-1 from its pool's consumer: in flight, and
	// site-2 is next.
	cons, err := e.js.Consumer(ctx, "M365_JOBS_site-a", "m365_pool_site-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range b.Messages() {
		if !strings.Contains(string(m.Data()), `"site-1"`) {
			t.Fatalf("the site pool's consumer delivered %s first", m.Data())
		}
	}
	workertest.Eventually(t, 30*time.Second, "site-1 in flight, site-2 next", func() bool {
		_, one := do(t, op, "GET", e.url+"/jobs?id=site-1", nil)
		_, two := do(t, op, "GET", e.url+"/jobs?id=site-2", nil)
		return strings.Contains(one, `<span class="where-in flight">in flight</span>`) && strings.Contains(two, "1 ahead in pool site-a")
	})

	// Its result answers once there is one.
	res, _ := json.Marshal(jobs.ActionResult{SchemaVersion: 1, JobID: "site-2", Instance: "globex", Action: jobs.FullAction("disable_user"), Status: jobs.StatusSucceeded,
		StartedAt: time.Now().UTC(), FinishedAt: time.Now().UTC(), Output: json.RawMessage(`{"changed":true}`)})
	if _, err := e.js.Publish(ctx, jobs.Subjects{}.Results("globex", jobs.ResultActions), res); err != nil {
		t.Fatal(err)
	}
	workertest.Eventually(t, 30*time.Second, "site-2 succeeded with its result", func() bool {
		_, page = do(t, op, "GET", e.url+"/jobs?id=site-2", nil)
		return strings.Contains(page, `<span class="where-succeeded">succeeded</span>`) && strings.Contains(page, "changed")
	})
}

package worker_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

func scrape(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Finding 7: made-up action names do not become metric series, and a
// scrape costs no JetStream request of its own.
func TestMetricsAreBoundedAndCheap(t *testing.T) {
	srv := workertest.Start(t)
	nc, js := srv.Connect(t)
	r := startWorker(t, srv, worker.Config{Pool: "default"}, worker.Registry{})
	for i := range 40 {
		name := "made_up_" + string(rune('a'+i%26)) + strings.Repeat("x", i)
		j := &jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: "j-" + name, Instance: "acme", Action: jobs.FullAction(name), Params: json.RawMessage(`{}`)}
		if _, err := js.Publish(context.Background(), jobs.Subjects{}.ActionJob("default", "acme", name), mustJSON(t, j)); err != nil {
			t.Fatal(err)
		}
	}
	workertest.Eventually(t, 60*time.Second, "the jobs settled", func() bool { return r.w.Stats().Failed.Load() == 40 && consumerIdle(t, js)() })
	web := httptest.NewServer(worker.NewObserver(r.w, r.nc).Handler())
	t.Cleanup(web.Close)

	infos, err := nc.SubscribeSync("$JS.API.CONSUMER.INFO.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var body string
	for range 20 {
		body = scrape(t, web)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := infos.Pending(); n > 1 {
		t.Errorf("20 scrapes made %d consumer info requests, want at most 1", n)
	}
	labels := map[string]bool{}
	for _, m := range regexp.MustCompile(`m365_jobs_total\{action="([^"]*)"`).FindAllStringSubmatch(body, -1) {
		labels[m[1]] = true
	}
	if len(labels) > 1 {
		t.Errorf("%d action labels for unregistered actions, want 1: %v", len(labels), labels)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

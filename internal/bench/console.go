package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/console"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// ConsoleOptions size the console benchmark.
type ConsoleOptions struct {
	Instances int // instance records (default 2,000)
	Failures  int // failure records (default 100,000)
	Results   int // action results (default 20,000)
	Requests  int // requests per page (default 20)
	Log       io.Writer
}

// ConsolePage is one page's render times, end to end over HTTPS on loopback.
type ConsolePage struct {
	Page          string        `json:"page"`
	P50, P95, Max time.Duration `json:"-"`
	P50MS         float64       `json:"p50_ms"`
	P95MS         float64       `json:"p95_ms"`
	MaxMS         float64       `json:"max_ms"`
	Bytes         int           `json:"bytes"`
}

// ConsoleResult is what `bench console` prints.
type ConsoleResult struct {
	Instances, Failures, Results int
	// Load is how long the console's watcher took to read everything (the
	// instances, failure records, results and jobs) after it started;
	// HeapMB the Go heap in use after that.
	Load   time.Duration
	HeapMB float64
	Pages  []ConsolePage
	// PageViews were served while the console sent NATSMsgs messages to
	// NATS (its live followers only: no request per page view).
	PageViews, NATSMsgs int
	// RefreshRound is one round of the watcher's periodic read of every
	// instance's sync state and the pools (every 5 s, whatever the viewers).
	RefreshRound time.Duration
}

// RunConsole fills an embedded JetStream with instances, failure records,
// jobs and results, starts a console on it, and times each page.
func RunConsole(ctx context.Context, o ConsoleOptions) (*ConsoleResult, error) {
	o = o.withDefaults()
	dir, err := os.MkdirTemp("", "m365-bench-console-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ns, err := worker.StartEmbedded(worker.EmbeddedOptions{StoreDir: filepath.Join(dir, "jetstream"), Port: -1, ServerName: "m365-bench-console"})
	if err != nil {
		return nil, err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	topo := worker.Topology{}
	if err := worker.Setup(ctx, js, topo); err != nil {
		return nil, err
	}
	if err := console.EnsureAuditStream(ctx, js, topo, 1); err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := fillConsole(ctx, js, topo, o); err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Log, "filled: %d instances, %d failure records with their jobs, %d results in %s\n", o.Instances, o.Failures, o.Results, time.Since(t0).Round(time.Millisecond))
	return measureConsole(ctx, ns.ClientURL(), topo, o)
}

func (o ConsoleOptions) withDefaults() ConsoleOptions {
	if o.Instances <= 0 {
		o.Instances = 2000
	}
	if o.Failures <= 0 {
		o.Failures = 100_000
	}
	if o.Results <= 0 {
		o.Results = 20_000
	}
	if o.Requests <= 0 {
		o.Requests = 20
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return o
}

var benchCodes = []string{"user_not_found", "no_free_seat", "usage_location_missing", "sku_not_found", "group_not_found", "throttled_out"}
var benchActions = []string{"disable_user", "assign_license", "create_user", "add_group_member", "update_user"}

// fillConsole writes the instance records, then a job and a failure record
// per failure, and action results, with asynchronous publishes.
func fillConsole(ctx context.Context, js jetstream.JetStream, topo worker.Topology, o ConsoleOptions) error {
	store, err := worker.OpenInstances(ctx, js, topo)
	if err != nil {
		return err
	}
	for i := range o.Instances {
		in := worker.Instance{ID: fmt.Sprintf("tenant-%04d", i), Pool: jobs.DefaultPool, TenantID: fmt.Sprintf("t%04d.onmicrosoft.com", i),
			ClientID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i), FederatedCredential: true}
		if _, err := store.Put(ctx, in); err != nil {
			return err
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	start := time.Now().Add(-7 * 24 * time.Hour)
	for i := range o.Failures {
		inst, action := fmt.Sprintf("tenant-%04d", r.IntN(o.Instances)), benchActions[r.IntN(len(benchActions))]
		id := fmt.Sprintf("job-bench-%06d", i)
		subject := "m365.jobs.default." + inst + ".action." + action
		job := fmt.Sprintf(`{"schema_version":1,"id":%q,"instance":%q,"action":"microsoft-365.%s","params":{"user":"user%d@%s.onmicrosoft.com"}}`, id, inst, action, i, inst)
		ack, err := js.Publish(ctx, subject, []byte(job))
		if err != nil {
			return err
		}
		code := benchCodes[r.IntN(len(benchCodes))]
		rec, _ := json.Marshal(jobs.FailureRecord{SchemaVersion: 1, JobID: id, Instance: inst, Pool: jobs.DefaultPool, Action: "microsoft-365." + action, Subject: subject,
			Stream: topo.JobsStream(), StreamSeq: ack.Sequence, Attempts: 1, FailedAt: start.Add(time.Duration(i) * 6 * time.Second), Worker: "bench",
			Error: jobs.Error{Code: code, Message: fmt.Sprintf("%s: user%d@%s.onmicrosoft.com (bench record %d)", code, i, inst, i)}})
		if err := publishPaced(ctx, js, topo.Subjects.Failures(inst), rec, i); err != nil {
			return err
		}
	}
	for i := range o.Results {
		inst := fmt.Sprintf("tenant-%04d", r.IntN(o.Instances))
		now := time.Now().Add(-time.Duration(r.IntN(3600)) * time.Second)
		res, _ := json.Marshal(jobs.ActionResult{SchemaVersion: 1, JobID: fmt.Sprintf("res-bench-%06d", i), Instance: inst, Action: "microsoft-365." + benchActions[i%len(benchActions)],
			Status: jobs.StatusSucceeded, StartedAt: now.Add(-time.Second), FinishedAt: now, Output: json.RawMessage(`{"changed":true}`)})
		if err := publishPaced(ctx, js, topo.Subjects.Results(inst, jobs.ResultActions), res, i); err != nil {
			return err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// publishPaced publishes asynchronously and, every 1,000 messages, waits
// for the acks of those in flight (a loaded machine otherwise stalls the
// client's window).
func publishPaced(ctx context.Context, js jetstream.JetStream, subject string, data []byte, i int) error {
	if i > 0 && i%1000 == 0 {
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	_, err := js.PublishAsync(subject, data)
	return err
}

// measureConsole starts a console of its own connection, waits until its
// watcher has read everything, and times every page.
func measureConsole(ctx context.Context, natsURL string, topo worker.Topology, o ConsoleOptions) (*ConsoleResult, error) {
	cnc, err := nats.Connect(natsURL)
	if err != nil {
		return nil, err
	}
	defer cnc.Close()
	cjs, _ := jetstream.New(cnc)
	var h http.Handler
	hs := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	defer hs.Close()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t0 := time.Now()
	cs, err := console.New(cctx, console.Config{URL: hs.URL, Topology: topo, Refresh: time.Hour}, cjs, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	h = cs
	res := &ConsoleResult{Instances: o.Instances, Failures: o.Failures, Results: o.Results}
	for {
		i, f, r, j := cs.Counts()
		if i >= o.Instances && f >= o.Failures && r >= o.Results && j >= o.Failures {
			break
		}
		if ctx.Err() != nil || time.Since(t0) > 10*time.Minute {
			return nil, fmt.Errorf("the console read %d instances, %d failures, %d results, %d jobs of %d, %d, %d, %d", i, f, r, j, o.Instances, o.Failures, o.Results, o.Failures)
		}
		time.Sleep(50 * time.Millisecond) // a benchmark's poll, not a test's wait
	}
	res.Load = time.Since(t0)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.HeapMB = float64(ms.HeapInuse) / (1 << 20)
	res.RefreshRound = cs.Refresh(ctx)
	fmt.Fprintf(o.Log, "console loaded in %s; one refresh round %s\n", res.Load.Round(time.Millisecond), res.RefreshRound.Round(time.Millisecond))

	client := hs.Client()
	client.Jar, _ = cookiejar.New(nil)
	if _, err := client.Get(cs.OneTimeLink(time.Minute)); err != nil {
		return nil, err
	}
	body, err := fetch(client, hs.URL+"/failures")
	if err != nil {
		return nil, err
	}
	m := regexp.MustCompile(`name="csrf" content="([^"]+)"`).FindStringSubmatch(body)
	if m == nil {
		return nil, fmt.Errorf("no CSRF token in the failures page")
	}
	csrf := m[1]
	seq := regexp.MustCompile(`href="/failures/(\d+)"`).FindStringSubmatch(body)
	pages := []struct{ name, path string }{
		{"overview", "/"},
		{"instances", "/instances"},
		{"instances, page 15", "/instances?page=15"},
		{"one instance", "/instances/tenant-0042"},
		{"jobs", "/jobs"},
		{"where is job X", "/jobs?id=job-bench-050000"},
		{"failures (all 100k)", "/failures"},
		{"failures by code", "/failures?code=no_free_seat"},
		{"failures by instance+action+since", "/failures?instance=tenant-0007&action=assign_license&since=3d"},
		{"failures by text", "/failures?q=bench+record+9999"},
		{"failures, page 200", "/failures?page=200"},
		{"audit", "/audit"},
		{"replay dry run (every record)", "POST /replay"},
	}
	if seq != nil {
		pages = append(pages, struct{ name, path string }{"one failure with its job", "/failures/" + seq[1]})
	}
	before := cnc.Stats().OutMsgs
	for _, p := range pages {
		var times []time.Duration
		size := 0
		for range o.Requests {
			t := time.Now()
			var b string
			var err error
			if p.path == "POST /replay" {
				b, err = postForm(client, hs.URL+"/replay", url.Values{"csrf": {csrf}})
			} else {
				b, err = fetch(client, hs.URL+p.path)
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p.name, err)
			}
			times = append(times, time.Since(t))
			size = len(b)
			res.PageViews++
		}
		slices.Sort(times)
		cp := ConsolePage{Page: p.name, P50: times[len(times)/2], P95: times[len(times)*95/100], Max: times[len(times)-1], Bytes: size}
		cp.P50MS, cp.P95MS, cp.MaxMS = ms3(cp.P50), ms3(cp.P95), ms3(cp.Max)
		res.Pages = append(res.Pages, cp)
	}
	res.NATSMsgs = int(cnc.Stats().OutMsgs - before)
	return res, nil
}

func ms3(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func fetch(c *http.Client, u string) (string, error) {
	resp, err := c.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET %s: %s: %.200s", u, resp.Status, b)
	}
	return string(b), nil
}

func postForm(c *http.Client, u string, form url.Values) (string, error) {
	resp, err := c.PostForm(u, form)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), "match-count") {
		return "", fmt.Errorf("POST %s: %s: %.200s", u, resp.Status, b)
	}
	return string(b), nil
}

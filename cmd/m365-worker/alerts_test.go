package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"go.yaml.in/yaml/v3"

	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// alertRule is one rule of deploy/prometheus/m365-worker.rules.yml.
type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type ruleGroup struct {
	Name  string      `yaml:"name"`
	Rules []alertRule `yaml:"rules"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// shippedRules reads the rules file and the PrometheusRule, which must hold
// the same groups.
func shippedRules(t *testing.T) []alertRule {
	var plain struct {
		Groups []ruleGroup `yaml:"groups"`
	}
	readYAML(t, "../../deploy/prometheus/m365-worker.rules.yml", &plain)
	var pr struct {
		Kind string `yaml:"kind"`
		Spec struct {
			Groups []ruleGroup `yaml:"groups"`
		} `yaml:"spec"`
	}
	readYAML(t, "../../deploy/k8s/prometheusrule.yaml", &pr)
	if pr.Kind != "PrometheusRule" || !reflect.DeepEqual(pr.Spec.Groups, plain.Groups) {
		t.Fatalf("deploy/k8s/prometheusrule.yaml (%s) and deploy/prometheus/m365-worker.rules.yml differ", pr.Kind)
	}
	var out []alertRule
	for _, g := range plain.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// dashboardQueries are every panel query of the shipped Grafana dashboards,
// by dashboard, and the metrics their variables read.
func dashboardQueries(t *testing.T) (map[string][]string, []string) {
	files, _ := filepath.Glob("../../deploy/grafana/*.json")
	if len(files) != 5 {
		t.Fatalf("dashboards: %v", files)
	}
	out := map[string][]string{}
	var varMetrics []string
	for _, f := range files {
		var d struct {
			UID    string `json:"uid"`
			Panels []struct {
				Title   string `json:"title"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
			Templating struct {
				List []struct {
					Type  string `json:"type"`
					Query any    `json:"query"`
				} `json:"list"`
			} `json:"templating"`
		}
		b, _ := os.ReadFile(f)
		if err := json.Unmarshal(b, &d); err != nil || d.UID == "" || len(d.Panels) == 0 {
			t.Fatalf("%s: %v (uid %q, %d panels)", f, err, d.UID, len(d.Panels))
		}
		for _, p := range d.Panels {
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", f, p.Title)
			}
			for _, tg := range p.Targets {
				out[filepath.Base(f)] = append(out[filepath.Base(f)], tg.Expr)
			}
		}
		for _, v := range d.Templating.List {
			if q, ok := v.Query.(string); ok && v.Type == "query" {
				// label_values(<metric>, <label>)
				inner := strings.TrimSuffix(strings.TrimPrefix(q, "label_values("), ")")
				varMetrics = append(varMetrics, inner)
			}
		}
	}
	return out, varMetrics
}

// Grafana's variables, as a panel query has them before Grafana fills
// them in.
var grafanaVars = strings.NewReplacer(`"$pool"`, `"default"`, `"$instance"`, `"acme"`)

// selectors are the metric names an expression reads, with the labels it
// names on each (matchers) and the labels it groups or matches by.
func selectors(t *testing.T, expr string) (map[string][]string, []string) {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		t.Errorf("%s: %v", expr, err)
		return nil, nil
	}
	names := map[string][]string{}
	var by []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			for _, m := range n.LabelMatchers {
				if m.Name != "__name__" {
					names[n.Name] = append(names[n.Name], m.Name)
				}
			}
			if _, ok := names[n.Name]; !ok {
				names[n.Name] = nil
			}
		case *parser.AggregateExpr:
			by = append(by, n.Grouping...)
		case *parser.BinaryExpr:
			if n.VectorMatching != nil {
				by = append(by, n.VectorMatching.MatchingLabels...)
			}
		}
		return nil
	})
	return names, by
}

// exposition is what one scrape of /metrics said: each series (as the text
// format writes it) and its value.
type exposition map[string]string

func scrape(t *testing.T, url string) exposition {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := exposition{}
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		out[l[:i]] = l[i+1:]
	}
	return out
}

// labelsOf lists the metrics of scrapes with the label names each carries.
func labelsOf(scrapes ...exposition) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, s := range scrapes {
		for series := range s {
			name, rest, _ := strings.Cut(series, "{")
			if out[name] == nil {
				out[name] = map[string]bool{}
			}
			for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
				if k, _, ok := strings.Cut(kv, "="); ok {
					out[name][k] = true
				}
			}
		}
	}
	return out
}

// evaluate runs expr at the second of two scrapes a minute apart (a series
// missing from the first is new in the second; one missing from the second
// is stale there) and returns the series it gives: an alert's expression
// fires when there is one.
func evaluate(t *testing.T, expr string, first, second exposition) promql.Vector {
	t.Helper()
	series := map[string]bool{}
	for s := range first {
		series[s] = true
	}
	for s := range second {
		series[s] = true
	}
	var load strings.Builder
	load.WriteString("load 1m\n")
	for _, s := range sortedKeys(series) {
		v1, ok1 := first[s]
		v2, ok2 := second[s]
		if !ok1 {
			v1 = "_"
		}
		if !ok2 {
			// A series gone from a scrape is marked stale, as
			// Prometheus marks it (a target gone, or a series it no
			// longer exports): absent from then on, not looked back at.
			v2 = "stale"
		}
		fmt.Fprintf(&load, "  %s %s %s\n", s, v1, v2)
	}
	st := promqltest.LoadedStorage(t, load.String())
	ng := promqltest.NewTestEngine(t, false, 5*time.Minute, 1_000_000)
	q, err := ng.NewInstantQuery(context.Background(), st, nil, expr, time.Unix(60, 0))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	res := q.Exec(context.Background())
	if res.Err != nil {
		t.Fatalf("%s: %v", expr, res.Err)
	}
	v, _ := res.Vector()
	return v
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// The shipped dashboards and alert rules hold to what the binaries export:
// every expression parses with Prometheus's own parser and names only
// metrics and labels a running worker's and receiver's /metrics show; each
// alert fires on a fault driven here between two scrapes, and none fires
// on the healthy system of the first scrape: an instance's refused
// credentials (M365CredentialsRefused, M365JobsFailing), a secret that
// ends in 5 days (M365CredentialExpiresSoon), a Graph that cannot validate
// the receiver's URL (M365SubscriptionsUnhealthy), sustained 429s
// (M365GraphThrottledShareHigh), forged notifications
// (M365ReceiverRefusing), the receiver cut off from NATS
// (M365ReceiverPublishFailing), the pool's consumer paused while jobs keep
// coming (M365BacklogGrowing), and no worker scraped (M365NoLiveWorker).
func TestDashboardsAndAlerts(t *testing.T) {
	rules := shippedRules(t)
	dashboards, varMetrics := dashboardQueries(t)

	dir := t.TempDir()
	ca, creds := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "tenants.json")
	// The seeded secrets expire in 5 days: the second tenant's instance,
	// with the right secret, is the fault of M365CredentialExpiresSoon.
	// This Graph does not trust the receiver's certificate, so it cannot
	// validate the notification URL of a subscription: that instance's are
	// the fault of M365SubscriptionsUnhealthy.
	sim := start(t, "graphsim", "--listen", "127.0.0.1:0", "--tenants", "2", "--users", "20", "--groups", "2", "--ca-out", ca, "--credentials-out", creds,
		"--secret-ends", time.Now().Add(5*24*time.Hour).UTC().Format(time.RFC3339))
	simURL := strings.Fields(strings.TrimPrefix(sim.waitLine(t, "graphsim listening on"), "graphsim listening on "))[0]
	// The healthy instance's Graph trusts it (SSL_CERT_FILE of its process).
	pki := newTestPKI(t, t.TempDir())
	ca2, creds2 := filepath.Join(dir, "ca2.pem"), filepath.Join(dir, "tenants2.json")
	t.Setenv("SSL_CERT_FILE", pki.ca)
	sim2 := start(t, "graphsim", "--listen", "127.0.0.1:0", "--users", "20", "--groups", "2", "--seed", "2", "--ca-out", ca2, "--credentials-out", creds2)
	t.Setenv("SSL_CERT_FILE", "")
	sim2URL := strings.Fields(strings.TrimPrefix(sim2.waitLine(t, "graphsim listening on"), "graphsim listening on "))[0]

	const masterKey = "an-alert-test-master-key-of-at-least-32-bytes"
	master, notifyKey := filepath.Join(dir, "master.key"), filepath.Join(dir, "notify.key")
	_ = os.WriteFile(master, []byte(masterKey+"\n"), 0o600)
	for _, args := range [][]string{{"pool", "keygen", "--out", filepath.Join(dir, "pool.seed")}, {"pool", "notify-key", "--master-key-file", master, "--out", notifyKey}} {
		if _, code := cli(t, "", args...); code != 0 {
			t.Fatal(args)
		}
	}
	addr, httpAddr, hooksAddr := freePort(t), freePort(t), freePort(t)
	natsURL := "nats://" + addr
	w := start(t, "run", "--data-dir", filepath.Join(dir, "data"), "--nats-listen", addr, "--demo=false", "--pool-key-file", filepath.Join(dir, "pool.seed"),
		"--http-listen", httpAddr, "--allow-endpoint-overrides", "--notify-url", "https://"+hooksAddr, "--notify-key-file", notifyKey)
	w.waitLine(t, "Workers serving")
	workerMetrics := "http://" + httpAddr + "/metrics"
	// The receiver reaches NATS through a relay the test cuts later.
	toNATS := startRelay(t, addr)
	rcv := start(t, "notify", "--nats", "nats://"+toNATS.addr(), "--listen", hooksAddr, "--tls-cert-file", pki.cert, "--tls-key-file", pki.key,
		"--master-key-file", master, "--drain", "0s", "--metrics-listen", "127.0.0.1:0")
	rcvMetrics := strings.TrimPrefix(rcv.waitLine(t, "notify metrics on "), "notify metrics on ")
	rcvBase := strings.TrimPrefix(rcv.waitLine(t, "notify listening on "), "notify listening on ")
	hooks, graph2 := trusting(t, pki.ca), trusting(t, ca2)
	notifyAs := func(instance, clientState string) int {
		t.Helper()
		note := `{"value":[{"subscriptionId":"s1","changeType":"updated","resource":"Users/u1","clientState":"` + clientState + `","tenantId":"t1","resourceData":{"id":"u1"}}]}`
		resp, err := hooks.Post(rcvBase+"/default/"+instance, "application/json", strings.NewReader(note))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	tenantsOf := func(file string) []map[string]string {
		var out []map[string]string
		b, _ := os.ReadFile(file)
		_ = json.Unmarshal(b, &out)
		return out
	}
	tenants, tenants2 := tenantsOf(creds), tenantsOf(creds2)
	// addInstance adds an instance and returns the result of its first sync.
	addInstance := func(id, graph, ca string, tenant map[string]string, secret string) *jobs.ActionResult {
		t.Helper()
		cfg, _ := json.Marshal(map[string]string{"tenant_id": tenant["tenant_id"], "client_id": tenant["client_id"], "client_secret": secret})
		out, code := cli(t, string(cfg), "instance", "add", id, "--config", "-", "--authority", graph, "--graph-root", graph, "--ca-file", ca,
			"--pool-key-file", filepath.Join(dir, "pool.seed"), "--nats", natsURL, "--sync-interval", "1h")
		if code != 0 || !strings.Contains(out, "syncing now (job ") {
			t.Fatalf("instance add %s: %s", id, out)
		}
		job := strings.TrimSuffix(strings.TrimSpace(out[strings.Index(out, "(job ")+5:]), ")")
		wctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		res, err := worker.WaitResult(wctx, js, worker.Topology{}, id, jobs.ActionSync, job)
		if err != nil {
			t.Fatalf("the first sync of %s: %v", id, err)
		}
		return res
	}
	// atLeast waits until a series of a scrape of url reaches want.
	atLeast := func(url, series string, want float64) {
		t.Helper()
		workertest.Eventually(t, 60*time.Second, fmt.Sprintf("%s at %g", series, want), func() bool {
			v, err := strconv.ParseFloat(scrape(t, url)[series], 64)
			return err == nil && v >= want
		})
	}

	// The healthy system: an instance synced, with its two subscriptions.
	if res := addInstance("busy", sim2URL, ca2, tenants2[0], tenants2[0]["client_secret"]); res.Status != jobs.StatusSucceeded {
		t.Fatalf("the healthy instance's sync: %+v", res)
	}
	atLeast(workerMetrics, "m365_subscriptions_created_total", 2)
	workerBefore, rcvBefore := scrape(t, workerMetrics), scrape(t, rcvMetrics)

	// The faults. An instance whose secret Entra refuses.
	res := addInstance("acme", simURL, ca, tenants[0], "not-the-secret")
	if res.Status != jobs.StatusFailed || res.Error == nil || res.Error.Code != "auth_failed" {
		t.Fatalf("the sync with a refused secret: %+v", res)
	}
	// An instance whose secret ends in 5 days, and whose Graph cannot
	// validate the receiver's URL: no subscriptions.
	res = addInstance("soon", simURL, ca, tenants[1], tenants[1]["client_secret"])
	if res.Status != jobs.StatusSucceeded || !strings.Contains(string(res.Output), "expires on") {
		t.Fatalf("the sync of the instance whose secret expires in 5 days: %+v", res)
	}
	atLeast(workerMetrics, "m365_subscriptions_failures_total", 1)
	// A forged notification.
	if code := notifyAs("busy", "forged"); code != http.StatusForbidden {
		t.Fatalf("a forged notification: %d", code)
	}
	// Graph throttles half of the healthy instance's requests from now on.
	resp, err := graph2.Post(sim2URL+"/_admin/tenants/"+tenants2[0]["tenant_id"]+"/throttle", "application/json", strings.NewReader(`{"share":0.5}`))
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("throttle: %v %v", resp, err)
	}
	resp.Body.Close()
	if _, err := worker.RequestSync(context.Background(), js, jobs.Subjects{}, "default", "busy", false); err != nil {
		t.Fatal(err)
	}
	atLeast(workerMetrics, `m365_graph_throttled_total{instance="busy"}`, 1)
	// The receiver loses NATS: a valid notification cannot be stored.
	toNATS.cut()
	workertest.Eventually(t, 60*time.Second, "the receiver to see NATS gone", func() bool {
		resp, err := http.Get(strings.TrimSuffix(rcvMetrics, "/metrics") + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if code := notifyAs("busy", notify.ClientState(notify.PoolKey([]byte(masterKey), "default"), "busy")); code != http.StatusServiceUnavailable {
		t.Fatalf("a notification while the receiver cannot reach NATS: %d", code)
	}
	// The pool's consumer is paused while jobs keep coming.
	if _, err := js.PauseConsumer(context.Background(), "M365_JOBS", "m365_pool_default", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for i := range 150 {
		j := &jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: fmt.Sprintf("backlog-%d", i), Instance: "busy", Action: jobs.ActionSync}
		b, _ := json.Marshal(j)
		if _, err := js.Publish(context.Background(), jobs.Subjects{}.JobSubject("default", j), b); err != nil {
			t.Fatal(err)
		}
	}
	atLeast(workerMetrics, `m365_consumer_pending{pool="default"}`, 150)
	workerAfter, rcvAfter := scrape(t, workerMetrics), scrape(t, rcvMetrics)

	// Every expression parses and names only what the binaries export.
	exported := labelsOf(workerBefore, workerAfter, rcvBefore, rcvAfter)
	check := func(where, expr string) {
		names, by := selectors(t, expr)
		if len(names) == 0 {
			t.Errorf("%s: %s reads no metric", where, expr)
		}
		for name, labels := range names {
			have, ok := exported[name]
			if !ok {
				t.Errorf("%s: %s is not exported by the worker or the receiver", where, name)
				continue
			}
			for _, l := range labels {
				if !have[l] {
					t.Errorf("%s: %s has no label %q", where, name, l)
				}
			}
		}
		for _, l := range by {
			found := false
			for name := range names {
				found = found || exported[name][l]
			}
			if !found {
				t.Errorf("%s: no metric of %s has the label %q it groups by", where, expr, l)
			}
		}
	}
	for _, r := range rules {
		if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("%s: severity, summary and description are required", r.Alert)
		}
		if _, err := time.ParseDuration(r.For); err != nil {
			t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
		}
		check(r.Alert, r.Expr)
	}
	for d, exprs := range dashboards {
		for _, e := range exprs {
			check(d, e)
		}
	}
	for _, v := range varMetrics {
		metric, label, _ := strings.Cut(v, ", ")
		if !exported[metric][label] {
			t.Errorf("a dashboard variable reads %s", v)
		}
	}

	// The driven faults make their alerts fire, and nothing fires before.
	merge := func(a, b exposition) exposition {
		out := exposition{}
		for k, v := range a {
			out[k] = v
		}
		for k, v := range b {
			out[k] = v
		}
		return out
	}
	before, after := merge(workerBefore, rcvBefore), merge(workerAfter, rcvAfter)
	fires := map[string]bool{}
	for _, r := range rules {
		// The samples sit at synthetic times (0 and 1m); time() stands for
		// the real now the scraped timestamps (credential expiries) are
		// compared with.
		expr := strings.ReplaceAll(r.Expr, "time()", strconv.FormatInt(time.Now().Unix(), 10))
		if v := evaluate(t, expr, before, before); len(v) > 0 {
			t.Errorf("%s fires on a healthy system: %v", r.Alert, v)
		}
		v := evaluate(t, expr, before, after)
		fires[r.Alert] = len(v) > 0
		t.Logf("%s on the driven faults: %v", r.Alert, v)
	}
	for _, r := range rules {
		if want := r.Alert != "M365NoLiveWorker" && r.Alert != "M365PoolWithoutWorkers"; fires[r.Alert] != want {
			t.Errorf("%s: fires %v on the driven faults, want %v", r.Alert, fires[r.Alert], want)
		}
	}
	// No worker scraped: only the receiver's samples. And the pool's
	// workers gone: scraped in the first sample, not in the second.
	for _, r := range rules {
		if r.Alert == "M365NoLiveWorker" && len(evaluate(t, r.Expr, rcvBefore, rcvAfter)) == 0 {
			t.Error("M365NoLiveWorker does not fire without a worker")
		}
		if r.Alert == "M365PoolWithoutWorkers" {
			v := evaluate(t, r.Expr, before, rcvAfter)
			if len(v) != 1 || v[0].Metric.Get("pool") != "default" {
				t.Errorf("M365PoolWithoutWorkers once the pool's workers are gone: %v, want pool default", v)
			}
		}
	}
}

// trusting is an HTTPS client trusting the CA of caFile.
func trusting(t *testing.T, caFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}, Timeout: 30 * time.Second}
}

// relay forwards TCP connections to a server until cut: a network path the
// test breaks.
type relay struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  bool
}

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{l: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, c, u)
			if r.done {
				c.Close()
				u.Close()
			}
			r.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(r.cut)
	return r
}

func (r *relay) addr() string { return r.l.Addr().String() }

// cut closes the relay and every connection through it.
func (r *relay) cut() {
	r.l.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done = true
	for _, c := range r.conns {
		c.Close()
	}
}

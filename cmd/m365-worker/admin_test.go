package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// cliStderr runs the binary and returns what it wrote to stderr.
func cliStderr(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	_ = cmd.Run()
	return errb.String()
}

// cli runs the binary to completion and returns stdout and the exit code.
func cli(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Logf("%v: exit %d\n%s", args, code, errb.String())
	}
	return out.String(), code
}

func TestOperatorCommands(t *testing.T) {
	dir := t.TempDir()
	ca, creds := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "tenants.json")
	sim := start(t, "graphsim", "--listen", "127.0.0.1:0", "--users", "60", "--groups", "6", "--ca-out", ca, "--credentials-out", creds)
	simURL := strings.Fields(strings.TrimPrefix(sim.waitLine(t, "graphsim listening on"), "graphsim listening on "))[0]

	out, code := cli(t, "", "pool", "keygen", "--out", filepath.Join(dir, "pool.seed"))
	if code != 0 || !strings.Contains(out, "public key: X") {
		t.Fatalf("pool keygen: %d %s", code, out)
	}
	keyFile := filepath.Join(dir, "pool.seed")

	addr, httpAddr := freePort(t), freePort(t)
	natsURL := "nats://" + addr
	w := start(t, "run", "--data-dir", filepath.Join(dir, "data"), "--nats-listen", addr, "--demo=false", "--pool-key-file", keyFile, "--http-listen", httpAddr, "--allow-endpoint-overrides")
	w.waitLine(t, "Workers serving")

	// The module configuration exactly as Tevyra documents it, on stdin.
	var tenants []map[string]string
	b, _ := os.ReadFile(creds)
	_ = json.Unmarshal(b, &tenants)
	cfg, _ := json.Marshal(map[string]string{"tenant_id": tenants[0]["tenant_id"], "client_id": tenants[0]["client_id"], "client_secret": tenants[0]["client_secret"]})
	out, code = cli(t, string(cfg), "instance", "add", "acme", "--config", "-", "--authority", simURL, "--graph-root", simURL, "--ca-file", ca,
		"--pool-key-file", keyFile, "--nats", natsURL, "--sync-interval", "1h")
	if code != 0 || !strings.Contains(out, "syncing now (job ") {
		t.Fatalf("instance add: %s", out)
	}
	// The added instance syncs at once, not after its hour.
	firstSync := strings.TrimSuffix(strings.TrimSpace(out[strings.Index(out, "(job ")+5:]), ")")
	{
		nc, err := nats.Connect(natsURL)
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := worker.WaitResult(wctx, js, worker.Topology{}, "acme", jobs.ActionSync, firstSync)
		cancel()
		nc.Close()
		if err != nil || res.Status != jobs.StatusSucceeded || !strings.Contains(string(res.Output), `"mode":"full"`) {
			t.Fatalf("the first sync %s: %+v %v", firstSync, res, err)
		}
	}
	out, _ = cli(t, "", "instance", "show", "acme", "--nats", natsURL)
	if !strings.Contains(out, tenants[0]["tenant_id"]) || strings.Contains(out, tenants[0]["client_secret"]) || !strings.Contains(out, "sealed to X") {
		t.Errorf("instance show: %s", out)
	}
	out, _ = cli(t, "", "instance", "list", "--nats", natsURL, "-o", "json")
	if !strings.Contains(out, `"id": "acme"`) || strings.Contains(out, tenants[0]["client_secret"]) {
		t.Errorf("instance list: %s", out)
	}

	out, code = cli(t, "", "job", "submit", "--instance", "acme", "--action", "sync", "--wait", "--nats", natsURL)
	if code != 0 || !strings.Contains(out, "succeeded") {
		t.Fatalf("sync: %d %s", code, out)
	}
	// Find an unlicensed member with a usage location, then fail a job on a
	// full SKU.
	caPEM, _ := os.ReadFile(ca)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get(simURL + "/_admin/tenants/" + tenants[0]["tenant_id"] + "/export")
	if err != nil {
		t.Fatal(err)
	}
	var snap struct {
		Users []struct {
			ID               string          `json:"id"`
			UsageLocation    *string         `json:"usageLocation"`
			UserType         string          `json:"userType"`
			AssignedLicenses json.RawMessage `json:"assignedLicenses"`
		} `json:"users"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&snap)
	resp.Body.Close()
	var user string
	for _, u := range snap.Users {
		if u.UsageLocation != nil && u.UserType == "Member" && string(u.AssignedLicenses) == "[]" {
			user = u.ID
		}
	}
	params := `{"user":"` + user + `","sku":"POWER_BI_PRO"}`
	out, code = cli(t, "", "job", "submit", "--instance", "acme", "--action", "assign_license", "--params", params, "--wait", "--nats", natsURL, "-o", "json")
	var failedRes jobs.ActionResult
	_ = json.Unmarshal([]byte(out), &failedRes)
	if code != 1 || failedRes.Error == nil || failedRes.Error.Code != "no_free_seat" {
		t.Fatalf("job made to fail: %d %s", code, out)
	}
	out, _ = cli(t, "", "failed", "list", "--nats", natsURL, "--code", "no_free_seat")
	if !strings.Contains(out, failedRes.JobID) {
		t.Fatalf("failed list: %s", out)
	}
	out, _ = cli(t, "", "failed", "show", failedRes.JobID, "--nats", natsURL)
	if !strings.Contains(out, `"POWER_BI_PRO"`) || !strings.Contains(out, `"stream_seq"`) {
		t.Errorf("failed show: %s", out)
	}
	// A password sent in clear by mistake: refused, and never printed.
	const clearPw = "Clear-Text-Pw-123!"
	pnc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pnc.Close()
	pjs, _ := jetstream.New(pnc)
	clearJob := `{"schema_version":1,"id":"clear-pw","instance":"acme","action":"microsoft-365.reset_password","params":{"user":"` + user + `","password":"` + clearPw + `"}}`
	if _, err := pjs.Publish(context.Background(), "m365.jobs.default.acme.action.reset_password", []byte(clearJob), jetstream.WithMsgID("clear-pw")); err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer pcancel()
	clearRes, err := worker.WaitResult(pctx, pjs, worker.Topology{}, "acme", jobs.ActionResetPassword, "clear-pw")
	if err != nil || clearRes.Error == nil || clearRes.Error.Code != jobs.CodeInvalidParams || !strings.Contains(clearRes.Error.Message, "sealed") {
		t.Fatalf("a clear password: %+v %v", clearRes, err)
	}
	raw, _ := json.Marshal(clearRes)
	out = string(raw)
	shown, _ := cli(t, "", "failed", "show", clearRes.JobID, "--nats", natsURL)
	listed, _ := cli(t, "", "failed", "list", "--nats", natsURL)
	if strings.Contains(out+shown+listed, clearPw) || !strings.Contains(shown, "job.params.password") || !strings.Contains(shown, "redacted") {
		t.Errorf("a clear password printed: %s\n%s\n%s", out, shown, listed)
	}
	// Fix the cause (buy seats), then replay.
	r2, err := hc.Post(simURL+"/_admin/tenants/"+tenants[0]["tenant_id"]+"/seats", "application/json", strings.NewReader(`{"sku":"POWER_BI_PRO","enabled":1000}`))
	if err != nil || r2.StatusCode != 204 {
		t.Fatalf("seats: %v %v", err, r2)
	}
	out, code = cli(t, "", "failed", "replay", failedRes.JobID, "--nats", natsURL)
	if code != 0 || !strings.Contains(out, "replayed "+failedRes.JobID+" as ") {
		t.Fatalf("failed replay: %s", out)
	}
	newID := strings.TrimSpace(out[strings.LastIndex(out, " as ")+4:])
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := worker.WaitResult(ctx, js, worker.Topology{}, "acme", jobs.ActionAssignLicense, newID)
	if err != nil || res.Status != jobs.StatusSucceeded || res.ReplayOf != failedRes.JobID {
		t.Fatalf("replayed job: %+v %v", res, err)
	}
	// status and the test connection.
	out, code = cli(t, "", "status", "--nats", natsURL)
	if code != 0 || !strings.Contains(out, "instance acme (pool default)") ||
		!strings.Contains(out, "indicators:  60 users") || !strings.Contains(out, "pool default: 1 live workers") ||
		!strings.Contains(out, ", took ") || !strings.Contains(out, "last sync:   succeeded, incremental") || !strings.Contains(out, "m365_user 0 upserts 0 deletes") || !strings.Contains(out, "Graph requests, 0 throttled") {
		t.Errorf("status: %s", out)
	}
	out, code = cli(t, "", "instance", "test", "acme", "--nats", natsURL, "--pool-key-file", keyFile, "--allow-endpoint-overrides")
	if code != 0 || !strings.Contains(out, "✓ sync: users") || !strings.Contains(out, "✓ reset_password") {
		t.Errorf("instance test: %d %s", code, out)
	}
	// A record sealed before seals named their place does not open; one
	// `instance update --pool-key-file` seals it again for the instance.
	istore, err := worker.OpenInstances(ctx, js, worker.Topology{})
	if err != nil {
		t.Fatal(err)
	}
	legacy, _ := istore.Get(ctx, "acme")
	seedB, _ := os.ReadFile(keyFile)
	poolKP, _ := nkeys.FromCurveSeed(bytes.TrimSpace(seedB))
	poolPub, _ := poolKP.PublicKey()
	legacy.ClientSecret, _ = jobs.Seal([]byte(tenants[0]["client_secret"]), poolPub)
	if _, err := istore.Put(ctx, *legacy); err != nil {
		t.Fatal(err)
	}
	out, code = cli(t, "", "instance", "test", "acme", "--nats", natsURL, "--pool-key-file", keyFile, "--allow-endpoint-overrides")
	if code == 0 || !strings.Contains(out+cliStderr(t, "instance", "test", "acme", "--nats", natsURL, "--pool-key-file", keyFile, "--allow-endpoint-overrides"), "instance update acme --pool-key-file") {
		t.Errorf("instance test with an unbound seal: %d %s", code, out)
	}
	if out, code = cli(t, "", "instance", "update", "acme", "--pool-key-file", keyFile, "--nats", natsURL); code != 0 {
		t.Fatalf("instance update (re-seal): %s", out)
	}
	if resealed, _ := istore.Get(ctx, "acme"); resealed.ClientSecret.Alg != jobs.SealAlgBound || !strings.Contains(resealed.ClientSecret.For, "instance=acme") {
		t.Errorf("re-sealed secret %+v", resealed.ClientSecret)
	}
	if out, code = cli(t, "", "instance", "test", "acme", "--nats", natsURL, "--pool-key-file", keyFile, "--allow-endpoint-overrides"); code != 0 {
		t.Errorf("instance test after the re-seal: %d %s", code, out)
	}
	// A read-only app registration: sync works, actions do not, and the
	// permissions to grant are named.
	roCA, roCreds := filepath.Join(dir, "ro-ca.pem"), filepath.Join(dir, "ro.json")
	ro := start(t, "graphsim", "--listen", "127.0.0.1:0", "--users", "10", "--groups", "2", "--read-only", "--no-user-admin-role", "--ca-out", roCA, "--credentials-out", roCreds)
	roURL := strings.Fields(strings.TrimPrefix(ro.waitLine(t, "graphsim listening on"), "graphsim listening on "))[0]
	var roTenants []map[string]string
	b, _ = os.ReadFile(roCreds)
	_ = json.Unmarshal(b, &roTenants)
	out, code = cli(t, roTenants[0]["client_secret"], "instance", "add", "readonly", "--tenant-id", roTenants[0]["tenant_id"], "--client-id", roTenants[0]["client_id"],
		"--secret-file", "-", "--authority", roURL, "--graph-root", roURL, "--ca-file", roCA, "--pool-key-file", keyFile, "--nats", natsURL)
	if code != 0 {
		t.Fatalf("instance add readonly: %s", out)
	}
	out, code = cli(t, "", "instance", "test", "readonly", "--nats", natsURL, "--pool-key-file", keyFile, "--allow-endpoint-overrides")
	if code != 0 || !strings.Contains(out, "✓ sync: users") || !strings.Contains(out, "✗ actions on users") || !strings.Contains(out, "User.ReadWrite.All") ||
		!strings.Contains(out, "Group.ReadWrite.All") || !strings.Contains(out, "User Administrator") {
		t.Errorf("instance test (read-only): %d %s", code, out)
	}
	// Wrong secret: sync cannot work, exit status 1.
	out, code = cli(t, "not-the-secret", "instance", "update", "readonly", "--secret-file", "-", "--pool-key-file", keyFile, "--nats", natsURL)
	if code != 0 {
		t.Fatalf("instance update: %s", out)
	}
	out, code = cli(t, "", "instance", "test", "readonly", "--nats", natsURL, "--pool-key-file", keyFile, "--allow-endpoint-overrides")
	if code != 1 || !strings.Contains(out, "AADSTS7000215") {
		t.Errorf("instance test (wrong secret): %d %s", code, out)
	}
	// Proxy credentials are sealed, never stored or shown in clear.
	if out, code = cli(t, "", "instance", "update", "readonly", "--http-proxy", "http://puser:proxy-pass-9@127.0.0.1:9", "--pool-key-file", keyFile, "--nats", natsURL); code != 0 {
		t.Fatalf("instance update --http-proxy: %s", out)
	}
	shownRO, _ := cli(t, "", "instance", "show", "readonly", "--nats", natsURL)
	ikv, _ := js.KeyValue(ctx, "m365_instances")
	rawRO, err := ikv.Get(ctx, "default.readonly")
	if err != nil || strings.Contains(string(rawRO.Value())+shownRO, "proxy-pass-9") || !strings.Contains(shownRO, "http://127.0.0.1:9 (credentials [sealed to X") {
		t.Errorf("proxy credentials: %v\n%s", err, shownRO)
	}
	ro.interrupt(t)

	// Observability: /metrics, /healthz, /readyz and the NATS micro service.
	for _, p := range []string{"/healthz", "/readyz"} {
		r, err := http.Get("http://" + httpAddr + p)
		if err != nil || r.StatusCode != 200 {
			t.Errorf("%s: %v %v", p, err, r)
		}
	}
	r3, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(r3.Body)
	r3.Body.Close()
	for _, want := range []string{`m365_jobs_total{action="microsoft-365.assign_license",outcome="failed"} 1`, `m365_jobs_total{action="sync",outcome="succeeded"}`,
		`m365_graph_requests_total{instance="acme"}`, `m365_graph_resource_units_total{instance="acme"}`, "m365_consumer_pending", "m365_jobs_in_flight",
		"m365_subscriptions_renewed_total 0", "m365_backstop_skips_total 0", "m365_sync_read_slots 24", "m365_sync_read_slots_in_use 0", "m365_sync_read_slot_waits_total", "m365_sync_read_slot_wait_seconds_total"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s:\n%s", want, metrics)
		}
	}
	if strings.Contains(string(metrics), tenants[0]["client_secret"]) {
		t.Error("a secret in the metrics")
	}
	// The worker's live heap is small: the 64 MiB headroom raised GOGC.
	var gogc float64
	for _, line := range strings.Split(string(metrics), "\n") {
		if v, ok := strings.CutPrefix(line, "m365_gc_percent "); ok {
			gogc, _ = strconv.ParseFloat(v, 64)
		}
	}
	if gogc <= 100 {
		t.Errorf("m365_gc_percent %v, want it raised above 100 by the heap's headroom", gogc)
	}
	ping, err := nc.Request("$SRV.INFO.m365-worker", nil, 5*time.Second)
	if err != nil || !strings.Contains(string(ping.Data), `"name":"m365-worker"`) || !strings.Contains(string(ping.Data), "m365.status.default.") {
		t.Errorf("micro service: %v %v", err, ping)
	}
	// What an operator types: nats micro ls / info list the worker.
	natsBin := natsCLI(t)
	ls, err := exec.Command(natsBin, "--server", natsURL, "micro", "ls").CombinedOutput()
	if err != nil || !strings.Contains(string(ls), "m365-worker") || !strings.Contains(string(ls), version) {
		t.Errorf("nats micro ls: %v\n%s", err, ls)
	}
	info, err := exec.Command(natsBin, "--server", natsURL, "micro", "info", "m365-worker").CombinedOutput()
	if err != nil || !strings.Contains(string(info), "m365.status.default.") {
		t.Errorf("nats micro info m365-worker: %v\n%s", err, info)
	}
	w.interrupt(t)
	sim.interrupt(t)
}

// natsCLI returns the nats CLI, installing natscli v0.5.0 with go install on
// a machine that lacks it (as .ci/run does).
func natsCLI(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	gobin := filepath.Join(goEnv(t, "GOPATH"), "bin")
	if b := goEnv(t, "GOBIN"); b != "" {
		gobin = b
	}
	p := filepath.Join(gobin, "nats")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	out, err := exec.Command("go", "install", "github.com/nats-io/natscli/nats@v0.5.0").CombinedOutput()
	if err != nil {
		t.Fatalf("the nats CLI is needed and could not be installed (go install github.com/nats-io/natscli/nats@v0.5.0): %v\n%s", err, out)
	}
	return p
}

func goEnv(t *testing.T, name string) string {
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		t.Fatalf("go env %s: %v", name, err)
	}
	return strings.TrimSpace(string(out))
}

// Rotating a pool's key without a gap: the workers hold the new key and the
// old one, the operator seals each instance's secrets again to the new
// public key (opening them with the old key), and the old key is dropped.
func TestPoolKeyRotation(t *testing.T) {
	dir := t.TempDir()
	ca, creds := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "tenants.json")
	sim := start(t, "graphsim", "--listen", "127.0.0.1:0", "--users", "10", "--groups", "2", "--ca-out", ca, "--credentials-out", creds)
	simURL := strings.Fields(strings.TrimPrefix(sim.waitLine(t, "graphsim listening on"), "graphsim listening on "))[0]
	keygen := func(name string) (string, string) {
		file := filepath.Join(dir, name)
		out, code := cli(t, "", "pool", "keygen", "--out", file)
		if code != 0 {
			t.Fatalf("keygen: %s", out)
		}
		return file, regexp.MustCompile(`public key: (\S+)`).FindStringSubmatch(out)[1]
	}
	oldKey, _ := keygen("old.seed")
	newKey, newPub := keygen("new.seed")
	addr := freePort(t)
	natsURL := "nats://" + addr
	runWith := func(keyFile string) *started {
		w := start(t, "run", "--data-dir", filepath.Join(dir, "data"), "--nats-listen", addr, "--demo=false", "--pool-key-file", keyFile, "--allow-endpoint-overrides")
		w.waitLine(t, "Workers serving")
		return w
	}
	w := runWith(oldKey)
	var tenants []map[string]string
	b, _ := os.ReadFile(creds)
	_ = json.Unmarshal(b, &tenants)
	if out, code := cli(t, tenants[0]["client_secret"], "instance", "add", "acme", "--tenant-id", tenants[0]["tenant_id"], "--client-id", tenants[0]["client_id"],
		"--secret-file", "-", "--authority", simURL, "--graph-root", simURL, "--ca-file", ca, "--pool-key-file", oldKey, "--nats", natsURL, "--sync-interval", "1h"); code != 0 {
		t.Fatalf("instance add: %s", out)
	}
	sync := func(what string) {
		t.Helper()
		out, code := cli(t, "", "job", "submit", "--instance", "acme", "--action", "sync", "--wait", "--timeout", "60s", "--nats", natsURL)
		if code != 0 || !strings.Contains(out, "succeeded") {
			t.Fatalf("sync %s: %d %s", what, code, out)
		}
	}
	sync("with the old key")

	// 1. The workers get both keys, the new one first.
	both := filepath.Join(dir, "both.seed")
	o, _ := os.ReadFile(oldKey)
	n, _ := os.ReadFile(newKey)
	if err := os.WriteFile(both, append(append(n, ','), o...), 0o600); err != nil {
		t.Fatal(err)
	}
	w.interrupt(t)
	w = runWith(both)
	sync("with both keys, the secret still sealed to the old one")
	// 2. The operator seals the secret again, to the new public key.
	if out, code := cli(t, "", "instance", "update", "acme", "--pool-key-file", oldKey, "--pool-public-key", newPub, "--nats", natsURL); code != 0 {
		t.Fatalf("instance update (re-seal to the new key): %s", out)
	}
	if out, _ := cli(t, "", "instance", "show", "acme", "--nats", natsURL); !strings.Contains(out, "sealed to "+newPub) {
		t.Fatalf("after the re-seal: %s", out)
	}
	sync("with both keys, the secret sealed to the new one")
	if out, code := cli(t, "", "instance", "test", "acme", "--nats", natsURL, "--pool-key-file", oldKey, "--allow-endpoint-overrides"); code == 0 || strings.Contains(out, "✓ token") {
		t.Errorf("the old key alone still opens the secret: %d %s", code, out)
	}
	// 3. The old key is dropped.
	w.interrupt(t)
	w = runWith(newKey)
	sync("with the new key alone")
	w.interrupt(t)
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "m365-worker-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "m365-worker")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		panic("build m365-worker: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// started is a running m365-worker process.
type started struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *bytes.Buffer
}

// conformanceMark starts the line graphsim --conformance prints for a
// request or answer outside Graph's description.
const conformanceMark = "graphsim: outside Graph's description"

func start(t *testing.T, args ...string) *started {
	t.Helper()
	if len(args) > 0 && args[0] == "graphsim" {
		// Every simulator process of the tests checks what the workers and
		// the CLI send it, and the test fails on what Graph would not take.
		args = append(args, "--conformance")
	}
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "M365_LOG_LEVEL=debug")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &started{cmd: cmd, lines: make(chan string, 100), stderr: &bytes.Buffer{}}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		for _, l := range strings.Split(s.stderr.String(), "\n") {
			if strings.HasPrefix(l, conformanceMark) {
				t.Error(l)
			}
		}
	})
	return s
}

// waitLine returns the first stdout line containing substr.
func (s *started) waitLine(t *testing.T, substr string) string {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatalf("exited before printing %q; stderr:\n%s", substr, s.stderr)
			}
			if strings.Contains(l, substr) {
				return l
			}
		case <-timeout:
			t.Fatalf("no line with %q within 60s; stderr:\n%s", substr, s.stderr)
		}
	}
}

func (s *started) interrupt(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGINT: %v; stderr:\n%s", err, s.stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("did not exit within 60s of SIGINT")
	}
}

func streamNames(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	var names []string
	l := js.StreamNames(context.Background())
	for n := range l.Name() {
		names = append(names, n)
	}
	if l.Err() != nil {
		t.Fatal(l.Err())
	}
	sort.Strings(names)
	return names
}

func TestRunEmbeddedDefault(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	addr, simAddr := freePort(t), freePort(t)
	s := start(t, "run", "--data-dir", dataDir, "--nats-listen", addr, "--graphsim-listen", simAddr)
	line := s.waitLine(t, "listening on")
	if !strings.Contains(line, "nats://"+addr) {
		t.Fatalf("startup line %q does not say where NATS listens (%s)", line, addr)
	}
	if open := s.waitLine(t, "It runs open"); !strings.Contains(open, "this machine only") {
		t.Errorf("the embedded server on loopback should say it is open to this machine only: %q", open)
	}
	s.waitLine(t, "stream ls")
	// The main job on the embedded default: the demo tenant's indicators.
	ind := s.waitLine(t, "demo indicators:")
	if !strings.Contains(ind, "250 users") {
		t.Errorf("demo indicators: %q", ind)
	}

	nc, err := nats.Connect("nats://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	want := []string{"KV_m365_instances", "KV_m365_state", "M365_AUDIT", "M365_FAILURES", "M365_JOBS", "M365_RESULTS"} // M365_AUDIT: the console's operator actions
	deadline := time.Now().Add(30 * time.Second)
	for strings.Join(streamNames(t, js), ",") != strings.Join(want, ",") {
		if time.Now().After(deadline) {
			t.Fatalf("streams %v, want %v", streamNames(t, js), want)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// An action against the demo tenant: a user that does not exist.
	sub, err := nc.SubscribeSync("m365.results.demo.actions")
	if err != nil {
		t.Fatal(err)
	}
	job := `{"schema_version":1,"id":"e2e-1","instance":"demo","action":"microsoft-365.disable_user","params":{"user":"nobody@contoso.com"}}`
	if _, err := js.Publish(context.Background(), "m365.jobs.default.demo.action.disable_user", []byte(job), jetstream.WithMsgID("e2e-1")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(60 * time.Second)
	if err != nil {
		t.Fatalf("no result: %v; stderr:\n%s", err, s.stderr)
	}
	var res jobs.ActionResult
	if err := json.Unmarshal(m.Data, &res); err != nil {
		t.Fatal(err)
	}
	if res.JobID != "e2e-1" || res.Status != jobs.StatusFailed || res.Error == nil || res.Error.Code != "user_not_found" {
		t.Fatalf("result %s", m.Data)
	}
	nc.Close()
	s.interrupt(t)
	if !strings.Contains(s.stderr.String(), "worker: stopped") {
		t.Errorf("no clean stop in the log:\n%s", s.stderr)
	}

	// A second start on the same data directory finds the job and its result.
	restarted := time.Now()
	s2 := start(t, "run", "--data-dir", dataDir, "--nats-listen", addr, "--graphsim-listen", simAddr)
	s2.waitLine(t, "listening on")
	s2.waitLine(t, "demo indicators:")
	nc2, err := nats.Connect("nats://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	js2, _ := jetstream.New(nc2)
	st, err := js2.Stream(context.Background(), "M365_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	// The first start's action result is still there, and the second
	// start's sync resumed incrementally.
	prev, err := st.GetLastMsgForSubject(context.Background(), "m365.results.demo.actions")
	if err != nil || !strings.Contains(string(prev.Data), `"e2e-1"`) {
		t.Fatalf("action result after restart: %v", err)
	}
	// The indicators go out just before the round's report: wait for the
	// report of a round started by the second start.
	var rep jobs.SyncReport
	var last *jetstream.RawStreamMsg
	for deadline := time.Now().Add(60 * time.Second); ; {
		if last, err = st.GetLastMsgForSubject(context.Background(), "m365.results.demo.syncs"); err == nil {
			rep = jobs.SyncReport{}
			if json.Unmarshal(last.Data, &rep) == nil && rep.StartedAt.After(restarted) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sync report of the second start within 60s (last %v): %v", rep.StartedAt, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rep.Mode != jobs.ModeIncremental || rep.Outcome != jobs.OutcomeSucceeded {
		t.Errorf("sync after restart: %s", last.Data)
	}
	s2.interrupt(t)
}

func TestUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"worker"}, 2, "--nats"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"run", "--log-level", "loud"}, 2, "--log-level"},
		{[]string{"run", "--nats-listen", "nowhere"}, 2, "host:port"},
		{[]string{}, 2, "Commands:"},
	} {
		cmd := exec.Command(binary, c.args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != c.code || !strings.Contains(stderr.String(), c.says) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, stderr.String(), c.code, c.says)
		}
	}
	out, err := exec.Command(binary, "run", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "M365_DATA_DIR") {
		t.Errorf("run --help: %v\n%s", err, out)
	}
}

func TestGraphsimCommand(t *testing.T) {
	dir := t.TempDir()
	ca, creds := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "tenants.json")
	s := start(t, "graphsim", "--listen", "127.0.0.1:0", "--tenants", "2", "--users", "50", "--groups", "5", "--ca-out", ca, "--credentials-out", creds)
	line := s.waitLine(t, "graphsim listening on")
	base := strings.Fields(strings.TrimPrefix(line, "graphsim listening on "))[0]
	var tenants []struct {
		TenantID     string `json:"tenant_id"`
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
		Authority    string `json:"authority"`
		GraphRoot    string `json:"graph_root"`
	}
	b, err := os.ReadFile(creds)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &tenants); err != nil || len(tenants) != 2 {
		t.Fatalf("credentials: %v %s", err, b)
	}
	caPEM, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA file is not PEM")
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	tn := tenants[1]
	if tn.Authority != base || tn.GraphRoot != base {
		t.Errorf("authority %s, graph root %s, served on %s", tn.Authority, tn.GraphRoot, base)
	}
	resp, err := hc.PostForm(tn.Authority+"/"+tn.TenantID+"/oauth2/v2.0/token", url.Values{"grant_type": {"client_credentials"},
		"client_id": {tn.ClientID}, "client_secret": {tn.ClientSecret}, "scope": {tn.GraphRoot + "/.default"}})
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	req, _ := http.NewRequest("GET", tn.GraphRoot+"/v1.0/users/$count", nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	req.Header.Set("ConsistencyLevel", "eventual")
	req.Header.Set("client-request-id", "6f0c1a52-2b6e-4c1e-9d3f-2a7b5e8c9d01")
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(n) != "50" {
		t.Errorf("users/$count = %q", n)
	}
	s.interrupt(t)
	// --conformance (start adds it) counts what it checked at exit.
	if l := s.waitLine(t, "conformance: "); !strings.HasPrefix(l, "conformance: 1 requests and 1 answers checked") || !strings.HasSuffix(l, "0 outside Graph's description") {
		t.Errorf("the conformance summary: %q", l)
	}
}

// The pool's private key is read from M365_POOL_KEY once and dropped from
// the environment, so child processes never inherit it.
func TestPoolKeyLeavesTheEnvironment(t *testing.T) {
	kp, _ := nkeys.CreateCurveKeys()
	seed, _ := kp.Seed()
	t.Setenv("M365_POOL_KEY", string(seed))
	none := ""
	got, err := (&poolFlags{poolKeyFile: &none}).poolKey()
	if err != nil || got == nil {
		t.Fatalf("pool key: %v", err)
	}
	if v, ok := os.LookupEnv("M365_POOL_KEY"); ok {
		t.Fatalf("M365_POOL_KEY still set (%d bytes)", len(v))
	}
	out, err := exec.Command("sh", "-c", "echo ${M365_POOL_KEY:-unset}").Output()
	if err != nil || strings.TrimSpace(string(out)) != "unset" {
		t.Fatalf("a child process sees %q (%v)", out, err)
	}
}

// A worker started before NATS is up, and before the operator's setup, waits
// for both and then serves its pool.
func TestWorkerWaitsForNATSAndSetup(t *testing.T) {
	addr := freePort(t)
	w := start(t, "worker", "--nats", "nats://"+addr, "--pool", "default")
	w.waitLine(t, "serving pool")
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	srv, err := worker.StartEmbedded(worker.EmbeddedOptions{StoreDir: t.TempDir(), Host: host, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if out, code := cli(t, "", "setup", "--nats", "nats://"+addr); code != 0 {
		t.Fatalf("setup: %s", out)
	}
	nc, err := nats.Connect("nats://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	j := &jobs.Job{ID: "after-setup", Instance: "ghost", Action: jobs.FullAction(jobs.ActionDisableUser), Params: json.RawMessage(`{"user":"adele@contoso.com"}`)}
	if _, err := worker.Submit(ctx, js, jobs.Subjects{}, "default", j); err != nil {
		t.Fatal(err)
	}
	res, err := worker.WaitResult(ctx, js, worker.Topology{}, "ghost", j.Action, j.ID)
	if err != nil || res.Error == nil || res.Error.Code != jobs.CodeInstanceNotFound {
		t.Fatalf("the job's result: %+v %v", res, err)
	}
}

// A pool's workers can run with their own reply-subject prefix, so that NATS
// permissions can give each role its own inbox (a role allowed _INBOX.>
// would receive other roles' replies): the worker serves its pool with only
// _INBOX_wdefault.> to subscribe to, and a client of that user on the shared
// prefix is refused.
func TestWorkerWithItsOwnInboxPrefix(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		Users: []*server.User{
			{Username: "operator", Password: "op"},
			{Username: "wdefault", Password: "w", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{">"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_wdefault.>"}},
			}},
		}}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	addr := srv.Addr().String()
	if out, code := cli(t, "", "setup", "--nats", "nats://operator:op@"+addr); code != 0 {
		t.Fatalf("setup: %s", out)
	}
	w := start(t, "worker", "--nats", "nats://wdefault:w@"+addr, "--inbox-prefix", "_INBOX_wdefault")
	w.waitLine(t, "serving pool")
	nc, err := nats.Connect("nats://operator:op@" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	j := &jobs.Job{ID: "own-inbox", Instance: "ghost", Action: jobs.FullAction(jobs.ActionDisableUser), Params: json.RawMessage(`{"user":"adele@contoso.com"}`)}
	if _, err := worker.Submit(ctx, js, jobs.Subjects{}, "default", j); err != nil {
		t.Fatal(err)
	}
	if res, err := worker.WaitResult(ctx, js, worker.Topology{}, "ghost", j.Action, j.ID); err != nil || res.Error == nil || res.Error.Code != jobs.CodeInstanceNotFound {
		t.Fatalf("the job's result: %+v %v", res, err)
	}
	// The same user on the shared _INBOX prefix gets no JetStream answer.
	shared, err := nats.Connect("nats://wdefault:w@" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	sjs, _ := jetstream.New(shared)
	actx, acancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer acancel()
	if _, err := sjs.AccountInfo(actx); err == nil {
		t.Fatal("a request on the shared inbox prefix was answered")
	}
}

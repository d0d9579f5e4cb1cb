// Package chaos runs the worker pool the way it runs in production (a real
// nats-server process, m365-worker worker processes, the Graph simulator
// over TLS behind a fault-injecting proxy), drives a few hundred or
// thousand mixed jobs of every action through it while it kill -9s workers
// and the server at random moments, and checks the outcome against the
// wire contract (docs/contract.md) and the simulator's ground truth:
// exactly one result per job id, one effect per job, no failure record that
// faults alone caused, and a consumer's asset view equal to the tenant.
//
// It uses only the public contract: jobs are published with nats.go on the
// job subjects, results, failures and asset deltas are read back from the
// streams, the instance is added with the CLI. TestChaos runs it in
// `go test ./...`; `m365-worker bench chaos` runs it longer.
package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
)

// Config configures a chaos run. Zero values take the defaults given.
type Config struct {
	// Jobs is the number of action jobs (deliberate failures included).
	// Default 300.
	Jobs int
	// Kills is the number of worker kill -9s (each worker is restarted).
	// Default 4.
	Kills int
	// ServerKills is the number of nats-server kill -9s (restarted on the
	// same port and store). Default 1; negative: none.
	ServerKills int
	// Pauses is the number of times a worker is stopped (SIGSTOP) for
	// longer than the ack wait and the target-lock TTL, then continued: its
	// jobs are redelivered elsewhere while it still holds them. Default 1;
	// negative: none.
	Pauses int
	// Workers is the number of worker processes. Default 3.
	Workers int
	// Concurrency of each worker. Default 8.
	Concurrency int
	// Seed makes the plan, the kill schedule and the faults reproducible.
	// Default: from the clock (the report and the log name it).
	Seed int64
	// Users and Groups seed the tenant. Defaults 300 and 30.
	Users, Groups int
	// Faults the proxy injects into Graph requests until the final round.
	// Default DefaultFaults; NoFaults turns them off.
	Faults   Faults
	NoFaults bool
	// ConsistencyDelay hides created objects from reads for this long
	// (Graph's replication delay). Default 500ms; negative: none.
	ConsistencyDelay time.Duration
	// AckWait of the workers (a killed worker's jobs come back after it).
	// Default 10s.
	AckWait time.Duration
	// Window bounds the jobs published and not yet finished. Default 60.
	Window int
	// StallTimeout ends the wait for results when none arrived for this
	// long. Default 120s.
	StallTimeout time.Duration
	// Binary is the m365-worker executable, NATSServer a nats-server
	// executable; empty: built with Binaries.
	Binary, NATSServer string
	// Dir holds the server's store, the logs and the keys; empty: a
	// temporary directory, removed unless KeepDir or the run found
	// mismatches.
	Dir     string
	KeepDir bool
}

func (c Config) withDefaults() Config {
	if c.Jobs <= 0 {
		c.Jobs = 300
	}
	if c.Kills < 0 {
		c.Kills = 0
	} else if c.Kills == 0 {
		c.Kills = 4
	}
	if c.ServerKills < 0 {
		c.ServerKills = 0
	} else if c.ServerKills == 0 {
		c.ServerKills = 1
	}
	if c.Pauses < 0 {
		c.Pauses = 0
	} else if c.Pauses == 0 {
		c.Pauses = 1
	}
	if c.Workers <= 0 {
		c.Workers = 3
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 8
	}
	if c.Seed == 0 {
		c.Seed = time.Now().UnixNano()%1_000_000 + 1
	}
	if c.Users <= 0 {
		c.Users = 300
	}
	if c.Groups <= 0 {
		c.Groups = 30
	}
	if c.NoFaults {
		c.Faults = Faults{}
	} else if c.Faults == (Faults{}) {
		c.Faults = DefaultFaults
	}
	if c.ConsistencyDelay == 0 {
		c.ConsistencyDelay = 500 * time.Millisecond
	} else if c.ConsistencyDelay < 0 {
		c.ConsistencyDelay = 0
	}
	if c.AckWait <= 0 {
		c.AckWait = 10 * time.Second
	}
	if c.Window <= 0 {
		c.Window = 60
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 120 * time.Second
	}
	return c
}

// Mismatch is one thing the run found that the contract or the ground
// truth does not allow.
type Mismatch struct {
	// Kind: result, failure, effect, password, create, sync, assets,
	// indicators, process.
	Kind   string `json:"kind"`
	JobID  string `json:"job_id,omitempty"`
	Action string `json:"action,omitempty"`
	Detail string `json:"detail"`
}

func (m Mismatch) String() string {
	s := m.Kind + ":"
	if m.JobID != "" {
		s += " job " + m.JobID
	}
	if m.Action != "" {
		s += " (" + jobs.ShortAction(m.Action) + ")"
	}
	return s + " " + m.Detail
}

// Report is what a run did and found.
type Report struct {
	Seed int64 `json:"seed"`
	// ActionJobs and SyncJobs are the distinct jobs published; Published
	// counts every publication (copies and duplicates included).
	ActionJobs int `json:"action_jobs"`
	SyncJobs   int `json:"sync_jobs"`
	Published  int `json:"published"`
	// Republished counts the second publications of a job (published
	// twice at once, or copied later) the job ledger had to suppress: jobs
	// carry no Nats-Msg-Id, as the contract says.
	Republished int `json:"republished"`
	// Results are action results (messages), SyncReports sync reports;
	// ExpectedFailures the jobs meant to fail.
	Results          int            `json:"results"`
	SyncReports      int            `json:"sync_reports"`
	SyncRounds       int            `json:"sync_rounds_succeeded"`
	FailuresByCode   map[string]int `json:"failures_by_code"`
	ExpectedFailures int            `json:"expected_failures"`
	WorkerKills      int            `json:"worker_kills"`
	WorkerPauses     int            `json:"worker_pauses"`
	ServerKills      int            `json:"server_kills"`
	// WorkerExits are exits no kill caused (a worker starting while NATS
	// was down, or a crash).
	WorkerExits    int            `json:"worker_exits"`
	Throttles      int            `json:"throttle_storms"`
	FaultsInjected map[string]int `json:"faults_injected"`
	// PasswordsChecked counts users whose tenant password was compared
	// with the one their last password job reported.
	PasswordsChecked int           `json:"passwords_checked"`
	Duration         time.Duration `json:"duration"`
	Mismatches       []Mismatch    `json:"mismatches"`
	// Notes are observations that are not contract violations.
	Notes []string `json:"notes,omitempty"`
	// Conformance is what the simulator's checks against Graph's
	// description saw; each violation is also a mismatch.
	Conformance graphsim.ConformanceReport `json:"conformance"`
	// Dir is where the logs are (kept when there are mismatches).
	Dir string `json:"dir,omitempty"`
}

const instanceID = "chaos"

// harness is one run.
type harness struct {
	cfg   Config
	logf  func(string, ...any)
	dir   string
	bin   string
	ns    *natsServer
	nc    *nats.Conn
	js    jetstream.JetStream
	sim   *graphsim.Server
	cred  graphsim.Credential
	proxy *proxy

	poolKey, replyKey nkeys.KeyPair
	poolPub           string
	keyFile           string

	slots []*workerSlot

	mu       sync.Mutex
	rep      Report
	results  map[string]int // job id → action results
	reports  map[string]int // job id → sync reports
	progress time.Time

	noted                     map[string]int
	resultsTail, failuresTail *tail
	// published sees every result publication on core NATS, those the
	// stream's dedup drops included: job id → distinct results.
	published map[string][]string
}

type workerSlot struct {
	idx   int
	mu    sync.Mutex
	proc  *process
	delay time.Duration
	first chan struct{}
}

func (h *harness) mismatch(kind, jobID, action, format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rep.Mismatches = append(h.rep.Mismatches, Mismatch{Kind: kind, JobID: jobID, Action: action, Detail: fmt.Sprintf(format, args...)})
}

// note records an observation once; repeats are counted.
func (h *harness) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.noted == nil {
		h.noted = map[string]int{}
	}
	h.noted[s]++
	if h.noted[s] == 1 {
		h.logf("chaos: note: %s", s)
		h.rep.Notes = append(h.rep.Notes, s)
	}
}

// Run performs one chaos run. The error is for a run that could not be
// carried out (setup); what the run found is in Report.Mismatches.
func Run(ctx context.Context, cfg Config, logf func(format string, args ...any)) (Report, error) {
	cfg = cfg.withDefaults()
	if logf == nil {
		logf = func(string, ...any) {}
	}
	// Times in UTC, to line up with the workers' logs.
	orig := logf
	logf = func(format string, args ...any) { orig(time.Now().UTC().Format("15:04:05.000 ")+format, args...) }
	h := &harness{cfg: cfg, logf: logf, results: map[string]int{}, reports: map[string]int{}}
	h.rep = Report{Seed: cfg.Seed, FailuresByCode: map[string]int{}}
	t0 := time.Now()
	logf("chaos: seed %d (replay with CHAOS_SEED=%d or --seed %d): %d jobs, %d workers, %d worker kills, %d server kills", cfg.Seed, cfg.Seed, cfg.Seed, cfg.Jobs, cfg.Workers, cfg.Kills, cfg.ServerKills)
	err := h.run(ctx)
	h.rep.Duration = time.Since(t0)
	h.mu.Lock()
	for i, n := range h.rep.Notes {
		if c := h.noted[n]; c > 1 {
			h.rep.Notes[i] = fmt.Sprintf("%s (%d times)", n, c)
		}
	}
	h.mu.Unlock()
	if h.proxy != nil {
		h.rep.FaultsInjected = h.proxy.injectedCounts()
	}
	h.cleanup()
	keep := cfg.KeepDir || cfg.Dir != "" || len(h.rep.Mismatches) > 0 || err != nil
	if h.dir != "" {
		if keep {
			h.rep.Dir = h.dir
		} else {
			_ = os.RemoveAll(h.dir)
		}
	}
	return h.rep, err
}

func (h *harness) cleanup() {
	for _, s := range h.slots {
		s.mu.Lock()
		p := s.proc
		s.mu.Unlock()
		if p != nil && !p.exited() {
			p.kill9()
		}
	}
	if h.nc != nil {
		h.nc.Close()
	}
	if h.ns != nil {
		h.ns.stop()
	}
	if h.proxy != nil {
		h.proxy.close()
	}
	if h.sim != nil {
		h.sim.Close()
	}
}

func (h *harness) run(parent context.Context) error {
	cfg := h.cfg
	var err error
	if h.dir = cfg.Dir; h.dir == "" {
		if h.dir, err = os.MkdirTemp("", "m365-chaos-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(h.dir, 0o755); err != nil {
		return err
	}
	h.bin = cfg.Binary
	natsBin := cfg.NATSServer
	if h.bin == "" {
		if h.bin, _, err = Binaries(); err != nil {
			return err
		}
	}
	if natsBin == "" {
		if natsBin, err = NATSServerBinary(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(parent)
	defer cancel()

	// NATS.
	if h.ns, err = newNATSServer(natsBin, h.dir); err != nil {
		return err
	}
	if err := h.ns.start(ctx); err != nil {
		return err
	}
	h.nc, err = nats.Connect(h.ns.url, nats.Name("m365-chaos"), nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond),
		nats.ReconnectBufSize(-1))
	if err != nil {
		return err
	}
	if h.js, err = jetstream.New(h.nc); err != nil {
		return err
	}

	// The tenant, and the proxy in front of it.
	opts := graphsim.Options{Users: cfg.Users, Groups: cfg.Groups, Seed: cfg.Seed, ConsistencyDelay: cfg.ConsistencyDelay, DeltaPageSize: 50, DeltaDuplicateRate: 0.01,
		Latency: graphsim.Latency{Read: 5 * time.Millisecond, Write: 40 * time.Millisecond, Token: 5 * time.Millisecond}, Conformance: true}
	if h.sim, err = graphsim.Start(opts); err != nil {
		return err
	}
	h.cred = h.sim.Credentials()[0]
	dynamic, admins, err := h.prepareTenant()
	if err != nil {
		return err
	}
	skus, err := h.skus(ctx)
	if err != nil {
		return err
	}
	faultLog, err := os.Create(filepath.Join(h.dir, "faults.log"))
	if err != nil {
		return err
	}
	defer faultLog.Close()
	h.proxy = startProxy(h.sim, h.cred.TenantID, uint64(cfg.Seed), faultLog)
	h.proxy.setFaults(cfg.Faults)

	// Keys: the pool's (opens sealed secrets), the requester's (receives
	// generated passwords).
	if h.poolKey, err = nkeys.CreateCurveKeys(); err != nil {
		return err
	}
	if h.replyKey, err = nkeys.CreateCurveKeys(); err != nil {
		return err
	}
	h.poolPub, _ = h.poolKey.PublicKey()
	replyPub, _ := h.replyKey.PublicKey()
	seed, _ := h.poolKey.Seed()
	h.keyFile = filepath.Join(h.dir, "pool.seed")
	if err := os.WriteFile(h.keyFile, seed, 0o600); err != nil {
		return err
	}

	// The operator's step (streams, buckets and the pool's consumer, whose
	// ack wait the workers follow), workers, then the instance (through the
	// CLI).
	if out, err := runCLI(ctx, h.bin, "", "setup", "--nats", h.ns.url, "--ack-wait", cfg.AckWait.String()); err != nil {
		return fmt.Errorf("setup: %v\n%s", err, out)
	}
	wctx, stopWorkers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopWorkers(); wg.Wait() }()
	for i := 0; i < cfg.Workers; i++ {
		s := &workerSlot{idx: i, first: make(chan struct{})}
		h.slots = append(h.slots, s)
		wg.Add(1)
		go func() { defer wg.Done(); h.superviseWorker(wctx, s) }()
	}
	for _, s := range h.slots {
		select {
		case <-s.first:
		case <-time.After(90 * time.Second):
			return fmt.Errorf("worker %d did not start within 90 s (see %s)", s.idx, h.workerLog(s.idx))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := h.addInstance(ctx); err != nil {
		return err
	}

	snap, err := h.sim.Export(h.cred.TenantID)
	if err != nil {
		return err
	}
	p, err := makePlan(planInput{Seed: cfg.Seed, Instance: instanceID, Jobs: cfg.Jobs, Snap: snap, Admins: admins, SKUs: skus, Dynamic: dynamic,
		ReplyKey: replyPub, PoolKey: h.poolPub, Seal: func(pw string, b jobs.Binding) (*jobs.SealedSecret, error) {
			return jobs.SealFor([]byte(pw), h.poolPub, b)
		}})
	if err != nil {
		return err
	}
	h.rep.ActionJobs, h.rep.SyncJobs = p.actionJobs(), len(p.syncJobs)
	for _, j := range p.jobs {
		if j.Expect != "" {
			h.rep.ExpectedFailures++
		}
	}
	logf := h.logf
	logf("chaos: plan: %d action jobs (%d meant to fail), %d sync jobs; tenant %d users, %d groups; logs in %s",
		h.rep.ActionJobs, h.rep.ExpectedFailures, h.rep.SyncJobs, len(snap.Users), len(snap.Groups), h.dir)

	// Every result publication, as a core subscriber sees it.
	h.published = map[string][]string{}
	if _, err := h.nc.Subscribe("m365.results."+instanceID+".actions", h.onPublished); err != nil {
		return err
	}

	// Read the results and failures as they come.
	h.progress = time.Now()
	h.resultsTail = startTail(ctx, h.js, "M365_RESULTS", "m365.results."+instanceID+".>", h.onResult)
	h.failuresTail = startTail(ctx, h.js, "M365_FAILURES", "m365.failures."+instanceID, nil)

	// Publish, with chaos alongside, until every job has its result.
	stalled := make(chan struct{})
	pubDone := make(chan error, 1)
	chaosDone := make(chan struct{})
	go func() { pubDone <- h.publish(ctx, p, stalled, chaosDone) }()
	chaosCtx, stopChaos := context.WithCancel(ctx)
	go func() { defer close(chaosDone); h.chaos(chaosCtx, p) }()
	waitErr := h.waitDone(ctx, p, pubDone, stalled)
	stopChaos()
	<-chaosDone
	if waitErr != nil {
		return waitErr
	}

	// Faults off, everything up: a final round, then the checks.
	h.proxy.setFaults(Faults{})
	if err := h.ensureUp(ctx); err != nil {
		return err
	}
	final := fmt.Sprintf("chaos-%d-final-sync", cfg.Seed)
	if err := h.publishFinal(ctx, final); err != nil {
		return err
	}
	if !h.waitFor(ctx, 3*time.Minute, func() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.reports[final] > 0 }) {
		h.mismatch("sync", final, jobs.ActionSync, "the final round (faults off) has no report after 3 minutes")
	}
	if err := h.catchUp(ctx); err != nil {
		return err
	}
	truth, err := h.sim.Export(h.cred.TenantID)
	if err != nil {
		return err
	}
	h.verify(p, snap, truth, final)
	h.mu.Lock()
	h.rep.FaultsInjected = h.proxy.injectedCounts()
	h.mu.Unlock()
	return nil
}

// prepareTenant makes sure the tenant has a dynamic group (for a
// deliberate dynamic_group failure) and lists its administrators (whose
// passwords need a role the app lacks).
func (h *harness) prepareTenant() (string, map[string]bool, error) {
	dynamic := ""
	admins := map[string]bool{}
	snap, err := h.sim.Export(h.cred.TenantID)
	if err != nil {
		return "", nil, err
	}
	for _, g := range snap.Groups {
		for _, t := range g.GroupTypes {
			if t == "DynamicMembership" && dynamic == "" {
				dynamic = g.ID
			}
		}
	}
	err = h.sim.Mutate(h.cred.TenantID, func(a *graphsim.Admin) error {
		if dynamic == "" {
			g := a.CreateGroup("chaos-dynamic", "Chaos dynamic")
			a.UpdateGroup(g, func(g *graphsim.Group) {
				g.GroupTypes = []string{"DynamicMembership"}
				rule := `(user.department -eq "Chaos")`
				g.MembershipRule = &rule
			})
			dynamic = g.ID
		}
		for _, u := range snap.Users {
			if x := a.User(u.ID); x != nil && x.Admin {
				admins[u.ID] = true
			}
		}
		return nil
	})
	return dynamic, admins, err
}

// skus reads the tenant's SKUs with their service plans through Graph (the
// ground truth has no plans).
func (h *harness) skus(ctx context.Context) ([]skuInfo, error) {
	hc := h.sim.Client()
	form := strings.NewReader("grant_type=client_credentials&client_id=" + h.cred.ClientID + "&client_secret=" + urlQueryEscape(h.cred.ClientSecret) +
		"&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default")
	resp, err := hc.Post(h.cred.Authority+"/"+h.cred.TenantID+"/oauth2/v2.0/token", "application/x-www-form-urlencoded", form)
	if err != nil {
		return nil, err
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil || tok.AccessToken == "" {
		return nil, fmt.Errorf("token from the simulator: %v", err)
	}
	req, _ := newGet(ctx, h.cred.GraphRoot+"/v1.0/subscribedSkus", tok.AccessToken)
	resp, err = hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Value []struct {
			SkuID         string `json:"skuId"`
			SkuPartNumber string `json:"skuPartNumber"`
			ConsumedUnits int    `json:"consumedUnits"`
			PrepaidUnits  struct {
				Enabled int `json:"enabled"`
			} `json:"prepaidUnits"`
			ServicePlans []struct {
				ID   string `json:"servicePlanId"`
				Name string `json:"servicePlanName"`
			} `json:"servicePlans"`
		} `json:"value"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("subscribedSkus: %w", err)
	}
	var out []skuInfo
	for _, s := range body.Value {
		si := skuInfo{ID: s.SkuID, Part: s.SkuPartNumber, Free: s.PrepaidUnits.Enabled - s.ConsumedUnits, Plans: map[string]string{}}
		for _, pl := range s.ServicePlans {
			si.Plans[pl.Name] = pl.ID
		}
		out = append(out, si)
	}
	if len(out) == 0 {
		return nil, errors.New("the tenant has no SKUs")
	}
	return out, nil
}

func (h *harness) workerLog(i int) string {
	return filepath.Join(h.dir, fmt.Sprintf("worker-%d.log", i))
}

// superviseWorker keeps worker slot s running: restarted after a kill
// (after the delay the killer chose) or an exit of its own (after 1 s).
func (h *harness) superviseWorker(ctx context.Context, s *workerSlot) {
	args := []string{"worker", "--allow-endpoint-overrides", "--nats", h.ns.url, "--pool-key-file", h.keyFile, "--ack-wait", h.cfg.AckWait.String(),
		"--concurrency", strconv.Itoa(h.cfg.Concurrency), "--log-level", "info"}
	first := true
	for ctx.Err() == nil {
		p, lw, err := startProcess(h.workerLog(s.idx), "serving pool", h.bin, args...)
		if err != nil {
			h.note("worker %d: start: %v", s.idx, err)
			time.Sleep(time.Second)
			continue
		}
		s.mu.Lock()
		s.proc, s.delay = p, time.Second
		s.mu.Unlock()
		if first {
			go func() {
				select {
				case <-p.ready:
					close(s.first)
				case <-p.done:
				}
			}()
			first = false
		}
		select {
		case <-p.done:
		case <-ctx.Done():
			p.kill9()
			return
		}
		if !p.killed.Load() {
			out := lw.lastOutput()
			if strings.Contains(out, "panic:") || strings.Contains(out, "fatal error:") {
				h.mismatch("process", "", "", "worker %d crashed (%s); its last output:\n%s", s.idx, p.cmd.ProcessState, lastLines(out, 30))
			} else if h.ns.recentlyDown(10 * time.Second) {
				h.logf("chaos: worker %d exited while NATS was down or restarting (%s): %s", s.idx, p.cmd.ProcessState, lastLines(out, 2))
			} else {
				h.note("worker %d exited by itself (%s); last output: %s", s.idx, p.cmd.ProcessState, lastLines(out, 5))
			}
			h.mu.Lock()
			h.rep.WorkerExits++
			h.mu.Unlock()
		}
		s.mu.Lock()
		d := s.delay
		s.mu.Unlock()
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (h *harness) addInstance(ctx context.Context) error {
	ca := filepath.Join(h.dir, "proxy-ca.pem")
	if err := os.WriteFile(ca, h.proxy.caPEM(), 0o644); err != nil {
		return err
	}
	var out string
	var err error
	for i := 0; i < 10; i++ {
		out, err = runCLI(ctx, h.bin, h.cred.ClientSecret, "instance", "add", instanceID, "--tenant-id", h.cred.TenantID, "--client-id", h.cred.ClientID,
			"--secret-file", "-", "--authority", h.proxy.selfURL, "--graph-root", h.proxy.selfURL, "--ca-file", ca, "--pool-key-file", h.keyFile,
			"--nats", h.ns.url, "--sync-interval", "24h")
		if err == nil {
			return nil
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("instance add: %v\n%s", err, out)
}

// onPublished keeps each distinct result published for a job (status,
// error code and output, a sealed password opened, "changed" left out: a
// redelivery may well say false).
func (h *harness) onPublished(m *nats.Msg) {
	var r jobs.ActionResult
	if json.Unmarshal(m.Data, &r) != nil {
		return
	}
	var out map[string]any
	_ = json.Unmarshal(r.Output, &out)
	delete(out, "changed")
	if pw, ok := out["password"]; ok {
		b, _ := json.Marshal(pw)
		var sealed jobs.SealedSecret
		if json.Unmarshal(b, &sealed) == nil {
			if plain, err := sealed.Open(h.replyKey); err == nil {
				out["password"] = "opened:" + string(plain)
			}
		}
	}
	code := ""
	if r.Error != nil {
		code = r.Error.Code
	}
	b, _ := json.Marshal(out)
	key := r.Status + " " + code + " " + string(b)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range h.published[r.JobID] {
		if k == key {
			return
		}
	}
	h.published[r.JobID] = append(h.published[r.JobID], key)
}

// onResult counts a message from the results stream.
func (h *harness) onResult(m tailMsg) {
	kind := m.Subject[strings.LastIndex(m.Subject, ".")+1:]
	if kind != jobs.ResultActions && kind != jobs.ResultSyncs {
		return
	}
	var r struct {
		JobID   string `json:"job_id"`
		Outcome string `json:"outcome"`
	}
	_ = json.Unmarshal(m.Data, &r)
	h.mu.Lock()
	defer h.mu.Unlock()
	if kind == jobs.ResultActions {
		if h.results[r.JobID] == 0 {
			h.progress = time.Now()
		}
		h.results[r.JobID]++
	} else {
		if h.reports[r.JobID] == 0 {
			h.progress = time.Now()
		}
		h.reports[r.JobID]++
	}
}

// finished counts the plan's jobs that have their result.
func (h *harness) finished(p *plan) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, j := range p.jobs {
		if j.Action == jobs.ActionSync {
			if h.reports[j.ID] > 0 {
				n++
			}
		} else if h.results[j.ID] > 0 {
			n++
		}
	}
	return n
}

func (h *harness) unfinished(p *plan, published map[string]bool) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for id := range published {
		if h.results[id] == 0 && h.reports[id] == 0 {
			n++
		}
	}
	return n
}

// publishOne publishes data until the stream has it, the way Tevyra does
// (no Nats-Msg-Id: a retry after a lost ack stores a second copy, which the
// job ledger suppresses).
func (h *harness) publishOne(ctx context.Context, subject string, data []byte) error {
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := h.js.Publish(pctx, subject, data)
		cancel()
		if err == nil {
			h.mu.Lock()
			h.rep.Published++
			h.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func envelope(j *job) []byte {
	now := time.Now().UTC()
	b, _ := json.Marshal(jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: j.ID, Instance: instanceID, Action: j.Action, Params: j.Params,
		RequestedBy: "chaos", RequestedAt: &now})
	return b
}

// publish sends the plan in order, keeping at most Window jobs unfinished;
// the last tenth trickles out until the chaos schedule has run, so that
// every kill meets work in flight.
func (h *harness) publish(ctx context.Context, p *plan, stalled, chaosDone <-chan struct{}) error {
	published := map[string]bool{}
	copies := map[int][]*job{}
	holdAt := len(p.jobs) * 9 / 10
	for i, j := range p.jobs {
		if i >= holdAt {
			// While chaos is still to come, trickle the rest so that it
			// meets work in flight.
			select {
			case <-chaosDone:
			case <-time.After(400 * time.Millisecond):
			case <-stalled:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		for h.unfinished(p, published) >= h.cfg.Window {
			select {
			case <-stalled:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
		data := envelope(j)
		if err := h.publishOne(ctx, j.Subject, data); err != nil {
			return err
		}
		published[j.ID] = true
		if j.Twice {
			if err := h.publishOne(ctx, j.Subject, data); err != nil {
				return err
			}
			h.mu.Lock()
			h.rep.Republished++
			h.mu.Unlock()
		}
		if j.CopyAfter > 0 {
			copies[i+j.CopyAfter] = append(copies[i+j.CopyAfter], j)
		}
		for _, c := range copies[i] {
			if err := h.publishOne(ctx, c.Subject, envelope(c)); err != nil {
				return err
			}
			h.mu.Lock()
			h.rep.Republished++
			h.mu.Unlock()
		}
		delete(copies, i)
	}
	for i := len(p.jobs); len(copies) > 0; i++ {
		for _, c := range copies[i] {
			if err := h.publishOne(ctx, c.Subject, envelope(c)); err != nil {
				return err
			}
			h.mu.Lock()
			h.rep.Republished++
			h.mu.Unlock()
		}
		delete(copies, i)
	}
	return nil
}

func (h *harness) publishFinal(ctx context.Context, id string) error {
	raw, _ := json.Marshal(jobs.SyncParams{})
	j := &job{ID: id, Action: jobs.ActionSync, Params: raw, Subject: "m365.jobs." + jobs.DefaultPool + "." + instanceID + ".sync"}
	return h.publishOne(ctx, j.Subject, envelope(j))
}

// event is one planned act of chaos, fired once the given number of jobs
// have their results.
type event struct {
	at     int
	kind   string // worker, pause, server, throttle
	worker int
	down   time.Duration
	delay  time.Duration
	// targeted kills (and pauses) wait for a write that is not idempotent
	// by nature (create, password, licence, delete; with passwords only a
	// password) to be applied, and hit the worker that sent it before it
	// sees the answer.
	targeted, passwords bool
}

func (h *harness) schedule(p *plan) []event {
	r := rand.New(rand.NewPCG(uint64(h.cfg.Seed), 0xc4a05))
	total := len(p.jobs)
	var evs []event
	at := func() int { return int(float64(total) * (0.05 + 0.8*r.Float64())) }
	for i := 0; i < h.cfg.Kills; i++ {
		evs = append(evs, event{at: at(), kind: "worker", worker: r.IntN(h.cfg.Workers), down: time.Duration(200+r.IntN(2800)) * time.Millisecond,
			delay: time.Duration(r.IntN(1500)) * time.Millisecond, targeted: i%2 == 1, passwords: i%4 == 1})
	}
	for i := 0; i < h.cfg.Pauses; i++ {
		// Longer than the ack wait and the 10 s target-lock TTL.
		evs = append(evs, event{at: at(), kind: "pause", worker: r.IntN(h.cfg.Workers), down: h.cfg.AckWait + time.Duration(3000+r.IntN(4000))*time.Millisecond,
			delay: time.Duration(r.IntN(1500)) * time.Millisecond, targeted: i%2 == 0, passwords: true})
	}
	for i := 0; i < h.cfg.ServerKills; i++ {
		evs = append(evs, event{at: at(), kind: "server", down: time.Duration(500+r.IntN(2500)) * time.Millisecond, delay: time.Duration(r.IntN(1500)) * time.Millisecond})
	}
	if !h.cfg.NoFaults {
		for i := 0; i < 2; i++ {
			evs = append(evs, event{at: at(), kind: "throttle", down: time.Duration(300+r.IntN(1200)) * time.Millisecond})
		}
	}
	sort.SliceStable(evs, func(a, b int) bool { return evs[a].at < evs[b].at })
	return evs
}

// chaos fires the schedule's events as the results come in.
func (h *harness) chaos(ctx context.Context, p *plan) {
	evs := h.schedule(p)
	for _, e := range evs {
		h.logf("chaos: planned: %s at %d finished jobs (worker %d, for %s)", e.kind, e.at, e.worker, e.down)
	}
	var paused sync.WaitGroup
	defer paused.Wait()
	for _, e := range evs {
		if !h.waitFor(ctx, 24*time.Hour, func() bool { return h.finished(p) >= e.at }) {
			return
		}
		select {
		case <-time.After(e.delay):
		case <-ctx.Done():
			return
		}
		switch e.kind {
		case "worker", "pause":
			var s *workerSlot
			var proc *process
			if e.targeted {
				s, proc = h.targetedVictim(ctx, e.passwords)
			}
			// The planned worker, or the next one running when it is
			// still restarting.
			h.waitFor(ctx, 30*time.Second, func() bool {
				if proc != nil {
					return true
				}
				for k := 0; k < len(h.slots); k++ {
					c := h.slots[(e.worker+k)%len(h.slots)]
					c.mu.Lock()
					p := c.proc
					c.mu.Unlock()
					if p != nil && !p.exited() {
						s, proc = c, p
						return true
					}
				}
				return false
			})
			if proc == nil {
				continue
			}
			e.worker = s.idx
			if e.kind == "pause" {
				h.logf("chaos: kill -STOP worker %d (pid %d) at %d finished jobs, for %s", e.worker, proc.cmd.Process.Pid, h.finished(p), e.down)
				_ = proc.cmd.Process.Signal(syscall.SIGSTOP)
				h.mu.Lock()
				h.rep.WorkerPauses++
				h.mu.Unlock()
				paused.Add(1)
				go func(e event, proc *process) {
					defer paused.Done()
					time.Sleep(e.down)
					_ = proc.cmd.Process.Signal(syscall.SIGCONT)
					h.logf("chaos: kill -CONT worker %d", e.worker)
				}(e, proc)
				continue
			}
			s.mu.Lock()
			s.delay = e.down
			s.mu.Unlock()
			h.logf("chaos: kill -9 worker %d (pid %d) at %d finished jobs; restart in %s", e.worker, proc.cmd.Process.Pid, h.finished(p), e.down)
			proc.kill9()
			h.mu.Lock()
			h.rep.WorkerKills++
			h.mu.Unlock()
		case "server":
			h.logf("chaos: kill -9 nats-server at %d finished jobs; restart in %s", h.finished(p), e.down)
			h.ns.kill9()
			h.mu.Lock()
			h.rep.ServerKills++
			h.mu.Unlock()
			time.Sleep(e.down)
			if err := h.ns.start(context.Background()); err != nil {
				h.mismatch("process", "", "", "nats-server did not come back after kill -9: %v", err)
				return
			}
			h.logf("chaos: nats-server back")
		case "throttle":
			h.logf("chaos: the tenant answers the next 8 Graph requests with 429 (Retry-After %s)", e.down)
			_ = h.sim.Mutate(h.cred.TenantID, func(a *graphsim.Admin) error { a.ThrottleNextWith(8, e.down, false); return nil })
			h.mu.Lock()
			h.rep.Throttles++
			h.mu.Unlock()
		}
	}
}

// targetedVictim arms the proxy and returns the worker whose write it
// holds, or nothing after 10 s.
func (h *harness) targetedVictim(ctx context.Context, passwords bool) (*workerSlot, *process) {
	defer h.proxy.disarm()
	reply := h.proxy.armKill(3*time.Second, passwords)
	wait := 10 * time.Second
	if passwords {
		// Password writes are rare: aim at one for a few seconds, then
		// at any write that is not idempotent by nature.
		select {
		case what := <-reply:
			return h.victimOf(what)
		case <-time.After(4 * time.Second):
			h.logf("chaos: targeted: no password write within 4 s; aiming at any write")
			reply = h.proxy.armKill(3*time.Second, false)
			wait = 6 * time.Second
		case <-ctx.Done():
			return nil, nil
		}
	}
	select {
	case what := <-reply:
		return h.victimOf(what)
	case <-time.After(wait):
		h.logf("chaos: targeted: no write to aim at within %s; one at random", wait)
	case <-ctx.Done():
	}
	return nil, nil
}

// victimOf is the worker that sent the held write what.
func (h *harness) victimOf(what string) (*workerSlot, *process) {
	var pids []int
	procs := map[int]*workerSlot{}
	pm := map[int]*process{}
	for _, s := range h.slots {
		s.mu.Lock()
		if p := s.proc; p != nil && !p.exited() {
			pids = append(pids, p.cmd.Process.Pid)
			procs[p.cmd.Process.Pid], pm[p.cmd.Process.Pid] = s, p
		}
		s.mu.Unlock()
	}
	addr := what[strings.LastIndex(what, " ")+1:]
	if pid := pidOfPeer(addr, pids); pid != 0 {
		h.logf("chaos: targeted: worker %d sent %s, applied by Graph, its answer held", procs[pid].idx, what)
		return procs[pid], pm[pid]
	}
	h.logf("chaos: targeted: no worker owns the connection of %s; one at random", what)
	return nil, nil
}

// waitDone waits until every job has its result, or none came for
// StallTimeout.
func (h *harness) waitDone(ctx context.Context, p *plan, pubDone <-chan error, stalled chan struct{}) error {
	total := len(p.jobs)
	lastLog := time.Now()
	pubFinished := false
	for {
		n := h.finished(p)
		if n == total {
			if !pubFinished {
				if err := <-pubDone; err != nil {
					return err
				}
			}
			h.logf("chaos: all %d jobs have their result", total)
			return nil
		}
		select {
		case err := <-pubDone:
			if err != nil {
				return err
			}
			pubFinished = true
			pubDone = nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		h.mu.Lock()
		idle := time.Since(h.progress)
		h.mu.Unlock()
		if time.Since(lastLog) > 15*time.Second {
			h.logf("chaos: %d of %d jobs finished", n, total)
			lastLog = time.Now()
		}
		if idle > h.cfg.StallTimeout {
			h.logf("chaos: no job finished for %s: %d of %d have their result; giving up the wait (the workers' goroutines are in their logs)", idle.Round(time.Second), n, total)
			h.dumpWorkers()
			close(stalled)
			if !pubFinished {
				<-pubDone
			}
			return nil
		}
	}
}

// dumpWorkers has every live worker write its goroutines to its log
// (SIGQUIT), so that a stalled run says where its jobs are stuck; the
// workers exit and are started again.
func (h *harness) dumpWorkers() {
	for _, s := range h.slots {
		s.mu.Lock()
		p := s.proc
		s.mu.Unlock()
		if p != nil && !p.exited() {
			p.killed.Store(true)
			_ = p.cmd.Process.Signal(syscall.SIGQUIT)
			<-p.done
		}
	}
}

func (h *harness) waitFor(ctx context.Context, d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	return true
}

// ensureUp waits until the server and every worker run.
func (h *harness) ensureUp(ctx context.Context) error {
	ok := h.waitFor(ctx, 60*time.Second, func() bool {
		if h.ns.recentlyDown(0) {
			return false
		}
		for _, s := range h.slots {
			s.mu.Lock()
			p := s.proc
			s.mu.Unlock()
			if p == nil || p.exited() {
				return false
			}
			select {
			case <-p.ready:
			default:
				return false
			}
		}
		return true
	})
	if !ok {
		return errors.New("the server and workers are not all up 60 s after the chaos ended")
	}
	return nil
}

// catchUp waits until the tails have read every stored message.
func (h *harness) catchUp(ctx context.Context) error {
	for _, t := range []*tail{h.resultsTail, h.failuresTail} {
		ok := h.waitFor(ctx, 60*time.Second, func() bool {
			n, err := storedCount(ctx, h.js, t.stream, t.filter)
			return err == nil && t.count() >= n
		})
		if !ok {
			return fmt.Errorf("reading %s did not catch up within 60 s", t.stream)
		}
	}
	return nil
}

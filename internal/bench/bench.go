// Package bench runs the product's benchmarks the way it runs in
// production: the workers are separate m365-worker processes (so their
// memory is measured alone), JetStream and the Graph simulator run in the
// driver's process. `m365-worker bench` and the go test benchmarks of this
// package call it.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// Options set up a benchmark environment.
type Options struct {
	// Binary is the m365-worker executable the workers run as.
	Binary string
	// Sim configures the Graph simulator (one tenant).
	Sim graphsim.Options
	// Log receives progress lines (nil: discarded).
	Log io.Writer
	// WorkerArgs are added to every worker's command line.
	WorkerArgs []string
	// ServerProcess runs JetStream in a process of its own (Binary's
	// `bench nats-server`) instead of this one, so that its memory can be
	// measured (Env.ServerMemory).
	ServerProcess bool
}

// Env is JetStream and the simulator in this process, workers as child
// processes.
type Env struct {
	o       Options
	dir     string
	ns      *server.Server
	server  *serverProcess
	URL     string
	NC      *nats.Conn
	JS      jetstream.JetStream
	Topo    worker.Topology
	Sim     *graphsim.Server
	Cred    graphsim.Credential
	poolKey nkeys.KeyPair
	keyFile string
	workers []*Worker
}

// Worker is one worker process.
type Worker struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Start brings up JetStream (a free loopback port, a temporary store) and
// the simulator.
func Start(o Options) (*Env, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	dir, err := os.MkdirTemp("", "m365-bench-")
	if err != nil {
		return nil, err
	}
	e := &Env{o: o, dir: dir}
	ok := false
	defer func() {
		if !ok {
			e.Close()
		}
	}()
	if o.ServerProcess {
		if e.server, e.URL, err = startServerProcess(o.Binary, filepath.Join(dir, "jetstream"), o.Log); err != nil {
			return nil, err
		}
	} else {
		e.ns, err = worker.StartEmbedded(worker.EmbeddedOptions{StoreDir: filepath.Join(dir, "jetstream"), Port: -1, ServerName: "m365-bench"})
		if err != nil {
			return nil, err
		}
		e.URL = e.ns.ClientURL()
	}
	if e.NC, err = nats.Connect(e.URL); err != nil {
		return nil, err
	}
	if e.JS, err = jetstream.New(e.NC); err != nil {
		return nil, err
	}
	if err := worker.Setup(context.Background(), e.JS, e.Topo); err != nil {
		return nil, err
	}
	t0 := time.Now()
	if e.Sim, err = graphsim.Start(o.Sim); err != nil {
		return nil, err
	}
	e.Cred = e.Sim.Credentials()[0]
	users, groups := o.Sim.Users, o.Sim.Groups
	if len(o.Sim.Sizes) > 0 {
		users, groups = 0, 0
		for _, s := range o.Sim.Sizes {
			users, groups = users+s.Users, groups+s.Groups
		}
	}
	fmt.Fprintf(o.Log, "graph simulator: %d users, %d groups seeded in %s\n", users, groups, time.Since(t0).Round(time.Millisecond))
	if e.poolKey, err = nkeys.CreateCurveKeys(); err != nil {
		return nil, err
	}
	seed, _ := e.poolKey.Seed()
	e.keyFile = filepath.Join(dir, "pool.seed")
	if err := os.WriteFile(e.keyFile, seed, 0o600); err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

// Close stops the workers, the simulator and JetStream, and removes the
// store.
func (e *Env) Close() {
	for _, w := range e.workers {
		w.Stop()
	}
	if e.Sim != nil {
		e.Sim.Close()
	}
	if e.NC != nil {
		e.NC.Close()
	}
	if e.ns != nil {
		e.ns.Shutdown()
		e.ns.WaitForShutdown()
	}
	if e.server != nil {
		e.server.stop()
	}
	_ = os.RemoveAll(e.dir)
}

// AddInstance configures the simulator's tenant as an instance (secret
// sealed to the pool key, no schedule to speak of).
func (e *Env) AddInstance(ctx context.Context, id string) error {
	return e.AddTenant(ctx, id, e.Cred, 24*time.Hour)
}

// AddTenant configures one of the simulator's tenants as an instance that
// syncs every interval.
func (e *Env) AddTenant(ctx context.Context, id string, cred graphsim.Credential, interval time.Duration) error {
	pub, _ := e.poolKey.PublicKey()
	secret, err := jobs.SealFor([]byte(cred.ClientSecret), pub, jobs.InstanceBinding(id, worker.FieldClientSecret, cred.TenantID, cred.ClientID))
	if err != nil {
		return err
	}
	store, err := worker.OpenInstances(ctx, e.JS, e.Topo)
	if err != nil {
		return err
	}
	_, err = store.Put(ctx, worker.Instance{ID: id, TenantID: cred.TenantID, ClientID: cred.ClientID, ClientSecret: secret,
		Authority: cred.Authority, GraphRoot: cred.GraphRoot, CAPEM: string(e.Sim.CAPEM()), SyncInterval: worker.Duration(interval)})
	return err
}

// StartWorkers starts n worker processes and waits until every one of them
// counts all n as live (each takes its share of the tenant's budget).
func (e *Env) StartWorkers(ctx context.Context, n, concurrency int) error {
	for i := 0; i < n; i++ {
		level := os.Getenv("M365_BENCH_LOG_LEVEL") // the workers' log level; default warn
		if level == "" {
			level = "warn"
		}
		args := []string{"worker", "--nats", e.URL, "--pool-key-file", e.keyFile, "--log-level", level, "--ack-wait", "5m", "--allow-endpoint-overrides"}
		if concurrency > 0 {
			args = append(args, "--concurrency", strconv.Itoa(concurrency))
		}
		args = append(args, e.o.WorkerArgs...)
		cmd := exec.Command(e.o.Binary, args...)
		cmd.Stdout, cmd.Stderr = e.o.Log, e.o.Log
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start worker: %w", err)
		}
		w := &Worker{cmd: cmd, done: make(chan struct{})}
		go func() { _ = cmd.Wait(); close(w.done) }()
		e.workers = append(e.workers, w)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		live, err := worker.LiveWorkers(ctx, e.JS, e.Topo, jobs.DefaultPool)
		if err == nil && live >= n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d workers live after 60 s", live, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Each worker refreshes its view of the live count every 5 s.
	select {
	case <-time.After(6 * time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// Workers are the worker processes started.
func (e *Env) Workers() []*Worker { return e.workers }

// Stop interrupts the worker (it drains) and waits for it.
func (w *Worker) Stop() { interrupt(w.cmd, w.done) }

// interrupt sends a child process SIGINT and waits until done closes (its
// Wait returned), killing it after 60 s.
func interrupt(cmd *exec.Cmd, done <-chan struct{}) {
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// PeakRSS is the process's high-water resident set so far (Linux VmHWM).
func (w *Worker) PeakRSS() (int64, error) {
	return PeakRSS(w.cmd.Process.Pid)
}

// PeakRSS is a process's high-water resident set (Linux VmHWM); pid 0 is
// this process.
func PeakRSS(pid int) (int64, error) { return procStatus(pid, "VmHWM:") }

// procStatus reads one size field (kB) of a process's /proc status, in
// bytes; pid 0 is this process.
func procStatus(pid int, field string) (int64, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field) {
			f := strings.Fields(line)
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no " + field + " in " + path)
}

// Sync requests a round of instance and waits for its report.
func (e *Env) Sync(ctx context.Context, instance string, full bool) (*jobs.SyncReport, time.Duration, error) {
	t0 := time.Now()
	id, err := worker.RequestSync(ctx, e.JS, e.Topo.Subjects, jobs.DefaultPool, instance, full)
	if err != nil {
		return nil, 0, err
	}
	res, err := worker.WaitResult(ctx, e.JS, e.Topo, instance, jobs.ActionSync, id)
	if err != nil {
		return nil, 0, err
	}
	el := time.Since(t0)
	var rep jobs.SyncReport
	if err := json.Unmarshal(res.Output, &rep); err != nil {
		return nil, 0, err
	}
	if rep.Outcome != jobs.OutcomeSucceeded {
		return &rep, el, fmt.Errorf("sync %s: %s %+v", id, rep.Outcome, rep.Error)
	}
	return &rep, el, nil
}

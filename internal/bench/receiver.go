package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/internal/pki"
)

// ReceiverOptions configure the receiver benchmark: `m365-worker notify`
// as a child process (TLS, GOMEMLIMIT as its manifest sets it) under
// hostile traffic, with valid notifications meanwhile.
type ReceiverOptions struct {
	Binary string
	// MemoryLimit is the receiver's GOMEMLIMIT, the container's memory
	// limit in deploy/k8s/notify.yaml. Default 128 MiB.
	MemoryLimit int64
	// Phase is how long each attack runs. Default 10 s.
	Phase time.Duration
	// SlowConns is the slow connections of the slow phase. Default 2,000.
	SlowConns int
	// Streams is the HTTP/2 streams with 1 MiB bodies. Default 250.
	Streams int
	Log     io.Writer
}

func (o ReceiverOptions) withDefaults() ReceiverOptions {
	if o.MemoryLimit <= 0 {
		o.MemoryLimit = 128 << 20
	}
	if o.Phase <= 0 {
		o.Phase = 10 * time.Second
	}
	if o.SlowConns <= 0 {
		o.SlowConns = 2000
	}
	if o.Streams <= 0 {
		o.Streams = 250
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return o
}

// ReceiverPhase is one attack's figures, each from a fresh receiver process.
type ReceiverPhase struct {
	Name    string `json:"name"`
	PeakRSS int64  `json:"peak_rss_bytes"`
	// CPU is the receiver's CPU time over the phase.
	CPU time.Duration `json:"receiver_cpu"`
	// Valid notifications sent meanwhile (each to an instance of its own
	// every tenth, so that triggers are stored), answered 202, answered
	// 503 (Graph would deliver them again), and their latency.
	Valid       int `json:"valid"`
	ValidOK     int `json:"valid_accepted"`
	Valid503    int `json:"valid_503"`
	ValidFailed int `json:"valid_failed"`
	// ValidErrors are the failed ones by answer ("error": no answer).
	ValidErrors map[string]int `json:"valid_errors,omitempty"`
	P50         time.Duration  `json:"valid_p50"`
	P99         time.Duration  `json:"valid_p99"`
	// Hostile requests by answer ("error" for a connection the receiver
	// closed or timed out).
	Hostile map[string]int `json:"hostile"`
	// Stored are the triggers in the jobs stream after the receiver
	// stopped, Instances the valid instances notified (each should have
	// exactly one, rolled up), HostileStored any trigger of an attacked
	// instance.
	Stored        int `json:"triggers_stored"`
	Instances     int `json:"valid_instances"`
	HostileStored int `json:"hostile_triggers_stored"`
}

// ReceiverResult is the receiver benchmark's output.
type ReceiverResult struct {
	MemoryLimit int64           `json:"memory_limit_bytes"`
	Phases      []ReceiverPhase `json:"phases"`
}

// receiverEnv is what every phase shares: JetStream, the TLS files and the
// master key.
type receiverEnv struct {
	o       ReceiverOptions
	e       *Env
	files   pki.Files
	keyFile string
	master  []byte
	tls     *tls.Config
}

// RunReceiver runs each attack against a fresh receiver process.
func RunReceiver(ctx context.Context, o ReceiverOptions) (*ReceiverResult, error) {
	o = o.withDefaults()
	e, err := Start(Options{Binary: o.Binary, Sim: graphsim.Options{Users: 1, Groups: 1, NoThrottling: true}, Log: o.Log})
	if err != nil {
		return nil, err
	}
	defer e.Close()
	re, err := newReceiverEnv(o, e)
	if err != nil {
		return nil, err
	}
	res := &ReceiverResult{MemoryLimit: o.MemoryLimit}
	for _, ph := range receiverPhases(o) {
		fmt.Fprintf(o.Log, "phase: %s\n", ph.name)
		p, err := re.run(ctx, ph)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ph.name, err)
		}
		res.Phases = append(res.Phases, *p)
	}
	return res, nil
}

func newReceiverEnv(o ReceiverOptions, e *Env) (*receiverEnv, error) {
	files, err := pki.Init(filepath.Join(e.dir, "receiver-tls"), []string{"localhost", "127.0.0.1"}, nil, time.Hour)
	if err != nil {
		return nil, err
	}
	raw := make([]byte, 48)
	_, _ = rand.Read(raw)
	master := []byte(base64.StdEncoding.EncodeToString(raw))
	keyFile := filepath.Join(e.dir, "notify.key")
	if err := os.WriteFile(keyFile, master, 0o600); err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(files.CA)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	return &receiverEnv{o: o, e: e, files: files, keyFile: keyFile, master: master, tls: &tls.Config{RootCAs: roots}}, nil
}

// receiverProc is one receiver process.
type receiverProc struct {
	cmd           *exec.Cmd
	base, metrics string
	done          chan struct{}
}

func (re *receiverEnv) start() (*receiverProc, error) {
	cmd := exec.Command(re.o.Binary, "notify", "--nats", re.e.URL, "--listen", "127.0.0.1:0", "--tls-cert-file", re.files.ServerCert,
		"--tls-key-file", re.files.ServerKey, "--master-key-file", re.keyFile, "--metrics-listen", "127.0.0.1:0", "--drain", "0s")
	cmd.Env = append(os.Environ(), fmt.Sprintf("GOMEMLIMIT=%d", re.o.MemoryLimit), "M365_LOG_LEVEL=warn")
	cmd.Stderr = io.Discard
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &receiverProc{cmd: cmd, done: make(chan struct{})}
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_ = cmd.Wait()
		close(p.done)
	}()
	timeout := time.After(60 * time.Second)
	for p.base == "" || p.metrics == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				return nil, fmt.Errorf("the receiver exited before serving")
			}
			if v, ok := strings.CutPrefix(l, "notify listening on "); ok {
				p.base = v
			}
			if v, ok := strings.CutPrefix(l, "notify metrics on "); ok {
				p.metrics = strings.TrimSuffix(v, "/metrics")
			}
		case <-timeout:
			_ = cmd.Process.Kill()
			return nil, fmt.Errorf("the receiver did not serve within 60s")
		}
	}
	go func() { // the rest of its output
		for range lines {
		}
	}()
	return p, nil
}

// stop interrupts the receiver (it publishes what is deferred) and waits.
func (p *receiverProc) stop() { interrupt(p.cmd, p.done) }

// run runs one phase against a fresh receiver.
func (re *receiverEnv) run(ctx context.Context, ph receiverPhaseSpec) (*ReceiverPhase, error) {
	stream, err := re.e.JS.Stream(ctx, re.e.Topo.JobsStream())
	if err != nil {
		return nil, err
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject("m365.jobs.*.*.notified")); err != nil {
		return nil, err
	}
	p, err := re.start()
	if err != nil {
		return nil, err
	}
	defer p.stop()
	actx, cancel := context.WithTimeout(ctx, re.o.Phase)
	defer cancel()
	hostile := newTally()
	for _, a := range ph.attacks {
		go a(actx, re, p, hostile)
	}
	res := re.valid(actx, p)
	peak, err := PeakRSS(p.cmd.Process.Pid)
	if err != nil {
		return nil, err
	}
	cpu := processCPU(p.cmd.Process.Pid)
	p.stop()
	res.Name, res.PeakRSS, res.CPU, res.Hostile = ph.name, peak, cpu, hostile.snapshot()
	if err := re.count(ctx, stream, res); err != nil {
		return nil, err
	}
	return res, nil
}

// count reads what reached the jobs stream.
func (re *receiverEnv) count(ctx context.Context, stream jetstream.Stream, res *ReceiverPhase) error {
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter("m365.jobs.*.*.notified"))
	if err != nil {
		return err
	}
	for subj, n := range info.State.Subjects {
		if strings.Contains(subj, ".hostile-") {
			res.HostileStored += int(n)
			continue
		}
		res.Stored += int(n)
	}
	return nil
}

// validBody is a notification of instance inst carrying its clientState.
func (re *receiverEnv) validBody(inst string) []byte {
	b, _ := json.Marshal(map[string]any{"value": []map[string]any{{"subscriptionId": "s-" + inst, "changeType": "updated",
		"resource": "Users/u1", "tenantId": "t1", "clientState": notify.ClientState(notify.PoolKey(re.master, "default"), inst),
		"resourceData": map[string]any{"@odata.type": "#Microsoft.Graph.User", "id": "u1"}}}})
	return b
}

// processCPU is a process's CPU time so far (Linux; 0 if unknown).
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces).
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
	if len(f) <= 12 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100 // clock ticks (USER_HZ 100)
}

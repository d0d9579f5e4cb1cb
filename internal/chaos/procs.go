package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var build struct {
	mu   sync.Mutex
	dir  string
	bins map[string]string // package → executable
}

// buildBinary builds a main package of this module's build list into a
// temporary directory, once per process.
func buildBinary(pkg, name string) (string, error) {
	build.mu.Lock()
	defer build.mu.Unlock()
	if b, ok := build.bins[pkg]; ok {
		return b, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	if build.dir == "" {
		if build.dir, err = os.MkdirTemp("", "m365-chaos-bin-"); err != nil {
			return "", err
		}
		build.bins = map[string]string{}
	}
	out := filepath.Join(build.dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	build.bins[pkg] = out
	return out, nil
}

// Binaries builds the m365-worker binary and a nats-server (the module's
// github.com/nats-io/nats-server/v2 dependency) into a temporary directory,
// once per process. It needs the Go toolchain and this module's source
// (found from the working directory).
func Binaries() (workerBin, natsBin string, err error) {
	if workerBin, err = buildBinary("github.com/tevyra/m365-worker/cmd/m365-worker", "m365-worker"); err != nil {
		return "", "", err
	}
	natsBin, err = NATSServerBinary()
	return workerBin, natsBin, err
}

// NATSServerBinary builds only the nats-server (the bench command runs the
// workers from its own executable).
func NATSServerBinary() (string, error) {
	return buildBinary("github.com/nats-io/nats-server/v2", "nats-server")
}

// RemoveBinaries deletes what Binaries built.
func RemoveBinaries() {
	build.mu.Lock()
	defer build.mu.Unlock()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
		build.dir, build.bins = "", nil
	}
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the m365-worker module: cannot build the binaries (give Config.Binary and Config.NATSServer)")
	}
	return filepath.Dir(mod), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// process is a child process whose output goes to a log file.
type process struct {
	cmd    *exec.Cmd
	done   chan struct{}
	killed atomic.Bool // by the harness
	ready  chan struct{}
}

// lineWatch copies output to a file and closes ready at the first line
// containing marker.
type lineWatch struct {
	mu     sync.Mutex
	f      *os.File
	marker string
	ready  chan struct{}
	buf    []byte
	tail   []byte
}

func (l *lineWatch) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.f.Write(b)
	l.tail = append(l.tail, b...)
	if len(l.tail) > 8192 {
		l.tail = l.tail[len(l.tail)-8192:]
	}
	if l.ready != nil {
		l.buf = append(l.buf, b...)
		if bytes.Contains(l.buf, []byte(l.marker)) {
			close(l.ready)
			l.ready, l.buf = nil, nil
		}
	}
	return len(b), nil
}

func (l *lineWatch) lastOutput() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.tail)
}

func startProcess(logPath, marker string, bin string, args ...string) (*process, *lineWatch, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(f, "=== %s start %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), filepath.Base(bin), strings.Join(args, " "))
	ready := make(chan struct{})
	lw := &lineWatch{f: f, marker: marker, ready: ready}
	if marker == "" {
		close(ready)
		lw.ready = nil
	}
	cmd := exec.Command(bin, args...)
	// The instance points at the simulator (through the proxy): workers
	// must accept its authority, graph root and CA (an environment
	// variable, so that binaries without the flag still start).
	cmd.Env = append(os.Environ(), "M365_ALLOW_ENDPOINT_OVERRIDES=true")
	cmd.Stdout, cmd.Stderr = lw, lw
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{}), ready: ready}
	go func() {
		_ = cmd.Wait()
		fmt.Fprintf(f, "=== %s exit: %v\n", time.Now().UTC().Format(time.RFC3339Nano), cmd.ProcessState)
		f.Close()
		close(p.done)
	}()
	return p, lw, nil
}

// kill9 sends SIGKILL and waits for the process to be gone.
func (p *process) kill9() {
	p.killed.Store(true)
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// natsServer is a nats-server process with JetStream on a fixed loopback
// port and store directory, so that a restart finds its data.
type natsServer struct {
	bin, conf, log string
	port           int
	url            string

	mu   sync.Mutex
	proc *process
	down time.Time // when it was last killed
	up   bool
}

func newNATSServer(bin, dir string) (*natsServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	store := filepath.Join(dir, "jetstream")
	conf := filepath.Join(dir, "nats.conf")
	cfg := fmt.Sprintf("server_name: chaos\nlisten: 127.0.0.1:%d\njetstream {\n  store_dir: %q\n}\n", port, store)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	return &natsServer{bin: bin, conf: conf, log: filepath.Join(dir, "nats-server.log"), port: port, url: "nats://127.0.0.1:" + strconv.Itoa(port)}, nil
}

// start runs the server and waits until it accepts connections.
func (n *natsServer) start(ctx context.Context) error {
	p, _, err := startProcess(n.log, "", n.bin, "-c", n.conf)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.proc = p
	n.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(n.port), time.Second)
		if err == nil {
			c.Close()
			n.mu.Lock()
			n.up = true
			n.mu.Unlock()
			return nil
		}
		if p.exited() {
			return fmt.Errorf("nats-server exited at start (see %s)", n.log)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("nats-server does not listen on %d after 60 s", n.port)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *natsServer) kill9() {
	n.mu.Lock()
	p := n.proc
	n.up = false
	n.down = time.Now()
	n.mu.Unlock()
	if p != nil {
		p.kill9()
	}
}

// recentlyDown says whether the server was down within d.
func (n *natsServer) recentlyDown(d time.Duration) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.up || time.Since(n.down) < d
}

func (n *natsServer) stop() {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.kill9()
	}
}

// runCLI runs the m365-worker binary to completion.
func runCLI(ctx context.Context, bin, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"
)

// serverProcess is JetStream in a process of its own (`m365-worker bench
// nats-server`), so that its memory is measured alone.
type serverProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startServerProcess starts the server on a free loopback port with its
// store in dir and returns its client URL.
func startServerProcess(binary, dir string, log io.Writer) (*serverProcess, string, error) {
	cmd := exec.Command(binary, "bench", "nats-server", "--store", dir)
	cmd.Stderr = log
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start the NATS server process: %w", err)
	}
	p := &serverProcess{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "nats-server listening on "); ok {
				urls <- u
			}
		}
	}()
	select {
	case u := <-urls:
		return p, u, nil
	case <-p.done:
		return nil, "", errors.New("the NATS server process exited before it listened")
	case <-time.After(60 * time.Second):
		p.stop()
		return nil, "", errors.New("the NATS server process did not listen within 60 s")
	}
}

func (p *serverProcess) stop() { interrupt(p.cmd, p.done) }

// ServerMemory is what the JetStream server process holds: its resident set
// now and at its peak, and the state bucket's size.
type ServerMemory struct {
	RSS, PeakRSS int64
	// StateKeys, StateMsgs and StateBytes: the state bucket's subjects
	// (keys), stored messages (key revisions and markers) and bytes.
	StateKeys  int
	StateMsgs  uint64
	StateBytes uint64
}

// ServerMemory measures the server process (zero RSS when it runs in this
// process) and the state bucket.
func (e *Env) ServerMemory(ctx context.Context) (ServerMemory, error) {
	var m ServerMemory
	if e.server != nil {
		pid := e.server.cmd.Process.Pid
		m.PeakRSS, _ = PeakRSS(pid)
		m.RSS, _ = procStatus(pid, "VmRSS:")
	}
	st, err := e.JS.Stream(ctx, "KV_"+e.Topo.StateBucket())
	if err != nil {
		return m, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return m, err
	}
	m.StateKeys, m.StateMsgs, m.StateBytes = int(info.State.NumSubjects), info.State.Msgs, info.State.Bytes
	return m, nil
}

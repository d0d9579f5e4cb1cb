package handlers

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lineLog records what a storeLine ran, and whether it ever ran two steps
// at once.
type lineLog struct {
	mu       sync.Mutex
	events   []string
	running  atomic.Int64
	overlaps atomic.Int64
}

func (g *lineLog) step(name string, err error, gate chan struct{}) func() error {
	return func() error {
		if g.running.Add(1) > 1 {
			g.overlaps.Add(1)
		}
		defer g.running.Add(-1)
		if gate != nil {
			<-gate
		}
		g.mu.Lock()
		g.events = append(g.events, name)
		g.mu.Unlock()
		return err
	}
}

func (g *lineLog) batch(i int, pubErr, writeErr error, gate chan struct{}) lineBatch {
	return lineBatch{publish: g.step(fmt.Sprintf("p%d", i), pubErr, gate), write: g.step(fmt.Sprintf("w%d", i), writeErr, nil)}
}

func (g *lineLog) ran() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.events)
}

// A round's batches are stored in the background while it reads on, one at
// a time and in the order they were started: each batch is published, then
// its state written, before the next is published; start returns at once
// until the line is full; the first error stops the line and comes back
// from every later start and wait; a panic is an error.
func TestStoreLineKeepsOrderAndStopsOnError(t *testing.T) {
	var g lineLog
	var l storeLine
	gate := make(chan struct{})
	// The first publication blocks: the line holds it, the next lineDepth
	// batches queue at once, and the one after that waits.
	if err := l.start(g.batch(0, nil, nil, gate)); err != nil {
		t.Fatal(err)
	}
	n := 1
	for ; n <= lineDepth; n++ {
		if err := l.start(g.batch(n, nil, nil, nil)); err != nil {
			t.Fatal(err)
		}
	}
	blocked := make(chan error, 1)
	go func() { blocked <- l.start(g.batch(n, nil, nil, nil)) }()
	select {
	case err := <-blocked:
		t.Fatalf("start returned %v while the line was full", err)
	case <-time.After(50 * time.Millisecond): // blocked, as it should be
	}
	close(gate)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	if err := l.wait(); err != nil {
		t.Fatal(err)
	}
	ev := g.ran()
	want := []string{}
	for i := 0; i <= n; i++ {
		want = append(want, fmt.Sprintf("p%d", i), fmt.Sprintf("w%d", i))
	}
	if !slices.Equal(ev, want) || g.overlaps.Load() != 0 {
		t.Fatalf("ran %v with %d overlaps, want %v one at a time", ev, g.overlaps.Load(), want)
	}

	// A failed state write stops the line: nothing queued after it runs.
	g = lineLog{}
	boom := errors.New("store sync state: boom")
	gate = make(chan struct{})
	for i := range 3 {
		wErr, iGate := error(nil), chan struct{}(nil)
		if i == 0 {
			wErr, iGate = boom, gate
		}
		if err := l.start(g.batch(i, nil, wErr, iGate)); err != nil {
			t.Fatal(err)
		}
	}
	close(gate)
	if err := l.wait(); !errors.Is(err, boom) || !errors.Is(l.start(g.batch(3, nil, nil, nil)), boom) || !errors.Is(l.wait(), boom) {
		t.Fatalf("after a failed write: wait %v", err)
	}
	if ev := g.ran(); !slices.Equal(ev, []string{"p0", "w0"}) {
		t.Fatalf("ran %v after the failed write, want p0 w0 only", ev)
	}

	// A failed publication: its state is never written.
	var l2 storeLine
	g = lineLog{}
	if err := l2.start(g.batch(0, boom, nil, nil)); err != nil {
		t.Fatal(err)
	}
	if err := l2.wait(); !errors.Is(err, boom) || slices.Contains(g.ran(), "w0") {
		t.Fatalf("wait %v after ran %v", err, g.ran())
	}

	// A store that panics is an error, not a crash.
	var l3 storeLine
	if err := l3.start(lineBatch{publish: func() error { return nil }, write: func() error { panic("bad batch") }}); err != nil {
		t.Fatal(err)
	}
	if err := l3.wait(); err == nil {
		t.Fatal("a panicking store reported no error")
	}
}

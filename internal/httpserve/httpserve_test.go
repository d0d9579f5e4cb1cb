package httpserve_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/internal/httpserve"
)

// handler answers ok, or waits for its request's body to end for /hold.
var handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/hold" {
		holding <- struct{}{}
		_, _ = io.Copy(io.Discard, r.Body)
	}
	fmt.Fprintln(w, "ok")
})

// holding receives one value per /hold request in the handler.
var holding = make(chan struct{}, 16)

func serve(t *testing.T, l httpserve.Limits, caps httpserve.Caps) (string, *httpserve.Limited) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httpserve.Server(handler, l, nil)
	limited := httpserve.LimitListener(ln, caps, srv)
	go func() { _ = srv.Serve(limited) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), limited
}

// waitClosed reads from c until the server closes it (a hang guard, not a
// timing assertion).
func waitClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("the server did not close the connection: %v", err)
	}
}

// At the cap, the connection that has waited longest without a request is
// closed to make room; when every connection has a request in progress,
// the new one is closed.
func TestConnectionsPastTheCap(t *testing.T) {
	addr, limited := serve(t, httpserve.Limits{}, httpserve.Caps{Max: 2, Grace: time.Nanosecond})
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	waitOpen := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second) // a hang guard
		for limited.Open() != n && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond) // until the server accepted them
		}
	}
	slow1 := dial()
	waitOpen(1)
	slow2 := dial()
	waitOpen(2)
	// A client that sends its request at once gets it served: the slow
	// connection that waited longest makes room.
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("a request at the cap: %v", err)
	}
	resp.Body.Close()
	waitClosed(t, slow1)
	if limited.Evicted() != 1 {
		t.Errorf("%d evicted, want 1", limited.Evicted())
	}
	_ = slow2
	// Two requests in progress: a third connection is closed at once. Each
	// is in the handler before the next connection comes, so the one that
	// makes room is always an idle one (on a loaded machine a request just
	// written may not be read yet, and its connection would count as idle).
	for range 2 {
		c := dial()
		fmt.Fprint(c, "POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
		select {
		case <-holding: // the request is in progress
		case <-time.After(60 * time.Second): // a hang guard
			t.Fatalf("the request did not reach the handler: %d open, %d evicted, %d refused", limited.Open(), limited.Evicted(), limited.Refused())
		}
	}
	extra := dial()
	waitClosed(t, extra)
	if limited.Refused()-limited.Evicted() != 1 {
		t.Errorf("%d refused, want 1", limited.Refused()-limited.Evicted())
	}
}

func TestIdleAndSlowConnectionsAreClosed(t *testing.T) {
	addr, _ := serve(t, httpserve.Limits{ReadHeader: 50 * time.Millisecond, Idle: 50 * time.Millisecond}, httpserve.Caps{Max: 10})
	// Idle after a request: closed after Idle.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	resp.Body.Close()
	waitClosed(t, c)
	// Headers that never end: closed after ReadHeader.
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprint(slow, "GET / HTTP/1.1\r\nHost: x\r\n")
	waitClosed(t, slow)
}

func TestLargeHeadersAreRefused(t *testing.T) {
	addr, _ := serve(t, httpserve.Limits{}, httpserve.Caps{Max: 10})
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("x", 16<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 16 KiB header: %d, want 431", resp.StatusCode)
	}
}

// A connection within its grace is never closed to make room, and one
// address competes only with itself.
func TestGraceAndPerAddressCap(t *testing.T) {
	addr, limited := serve(t, httpserve.Limits{}, httpserve.Caps{Max: 10, PerIP: 1, Grace: time.Hour})
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	fresh, err := net.Dial("tcp", addr) // the same address, the first within its grace
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	waitClosed(t, fresh)
	if limited.Evicted() != 0 || limited.Refused() != 1 {
		t.Errorf("%d evicted, %d refused; want the new connection refused", limited.Evicted(), limited.Refused())
	}
	// Another address is not held up by it.
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	resp, err := hc.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("a request from another address: %v", err)
	}
	resp.Body.Close()
}

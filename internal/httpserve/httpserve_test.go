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

func serve(t *testing.T, l httpserve.Limits, max int) (string, *httpserve.Limited) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	limited := httpserve.LimitListener(ln, max)
	srv := httpserve.Server(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }), l, nil)
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

func TestConnectionsPastTheCapAreClosed(t *testing.T) {
	addr, limited := serve(t, httpserve.Limits{}, 2)
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	for limited.Open() != 2 {
		time.Sleep(time.Millisecond) // until the server accepted both
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, extra)
	if limited.Refused() != 1 {
		t.Errorf("%d refused, want 1", limited.Refused())
	}
	held[0].Close()
	for limited.Open() != 1 {
		time.Sleep(time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("a connection once one closed: %v", err)
	}
	resp.Body.Close()
}

func TestIdleAndSlowConnectionsAreClosed(t *testing.T) {
	addr, _ := serve(t, httpserve.Limits{ReadHeader: 50 * time.Millisecond, Idle: 50 * time.Millisecond}, 10)
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
	addr, _ := serve(t, httpserve.Limits{}, 10)
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

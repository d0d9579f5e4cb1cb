package graphclient_test

import (
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

// forwardProxy is a real forward proxy for HTTPS on loopback, as a
// customer's egress proxy is: it answers CONNECT with a tunnel to the
// requested host, only for clients that present its credentials
// (Proxy-Authorization: Basic), and answers 407 otherwise.
type forwardProxy struct {
	addr, user, password string

	mu      sync.Mutex
	tunnels []string // the host:port of each tunnel opened
	refused int      // CONNECTs without the right credentials
}

func startForwardProxy(t *testing.T, user, password string) *forwardProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &forwardProxy{addr: l.Addr().String(), user: user, password: password}
	srv := &http.Server{Handler: http.HandlerFunc(p.serve)}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

// URL is the proxy's URL with the given credentials.
func (p *forwardProxy) URL(user, password string) string {
	return "http://" + user + ":" + password + "@" + p.addr
}

func (p *forwardProxy) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "this proxy only tunnels (CONNECT)", http.StatusMethodNotAllowed)
		return
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte(p.user+":"+p.password))
	if r.Header.Get("Proxy-Authorization") != want {
		p.mu.Lock()
		p.refused++
		p.mu.Unlock()
		w.Header().Set("Proxy-Authenticate", `Basic realm="egress"`)
		http.Error(w, "proxy authentication required", http.StatusProxyAuthRequired)
		return
	}
	up, err := net.Dial("tcp", r.Host)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	conn, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		up.Close()
		return
	}
	p.mu.Lock()
	p.tunnels = append(p.tunnels, r.Host)
	p.mu.Unlock()
	_, _ = conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
	go func() {
		_, _ = io.Copy(up, buf) // what the client sent after CONNECT, then the rest
		up.Close()
	}()
	_, _ = io.Copy(conn, up)
	conn.Close()
}

func (p *forwardProxy) stats() (tunnels []string, refused int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.tunnels...), p.refused
}

func TestEgressThroughForwardProxy(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true})
	proxy := startForwardProxy(t, "egress", "pr0xy-Secret")
	cfg := simConfig(sim, 0)
	cfg.HTTPProxy = proxy.URL("egress", "pr0xy-Secret")
	pool := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true})
	c := newClient(t, pool, cfg)
	if _, err := c.Graph.SubscribedSkus().Get(context.Background(), nil); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	// The token request and the Graph request both tunnel through it (one
	// tunnel may carry both: the simulator is the authority too).
	host := strings.TrimPrefix(sim.URL(), "https://")
	tunnels, refused := proxy.stats()
	if len(tunnels) == 0 || refused != 0 {
		t.Fatalf("tunnels %v, refused %d", tunnels, refused)
	}
	for _, tn := range tunnels {
		if tn != host {
			t.Errorf("a tunnel to %s, want only %s", tn, host)
		}
	}

	// Wrong proxy credentials: refused by the proxy, and the client does not
	// go around it.
	cfg2 := simConfig(sim, 0)
	cfg2.Instance = "wrong-proxy-password"
	cfg2.HTTPProxy = proxy.URL("egress", "not-it")
	c2 := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, MaxAttempts: 1}), cfg2)
	if _, err := c2.Graph.SubscribedSkus().Get(context.Background(), nil); err == nil {
		t.Fatal("reached the simulator with the proxy's credentials refused")
	} else if strings.Contains(err.Error(), "not-it") {
		t.Errorf("the error shows the proxy's password: %v", err)
	}
	if _, refused := proxy.stats(); refused == 0 {
		t.Error("the proxy refused nothing")
	}

	// A dead proxy means no way out either.
	cfg3 := simConfig(sim, 0)
	cfg3.Instance = "via-dead-proxy"
	cfg3.HTTPProxy = "http://127.0.0.1:1"
	c3 := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, MaxAttempts: 1}), cfg3)
	if _, err := c3.Graph.SubscribedSkus().Get(context.Background(), nil); err == nil {
		t.Fatal("reached the simulator without the proxy")
	}
}

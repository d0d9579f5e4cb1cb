package graphclient_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

// startTinyproxy runs a real forward proxy (Debian's tinyproxy, installed by
// .ci/run) on a free loopback port and returns its URL and log path.
func startTinyproxy(t *testing.T) (string, string) {
	t.Helper()
	bin, err := exec.LookPath("tinyproxy")
	if err != nil {
		// A fresh Debian machine: install it the way .ci/run does.
		out, ierr := exec.Command("sh", "-c", "apt-get update -qq && apt-get install -y -qq tinyproxy").CombinedOutput()
		if bin, err = exec.LookPath("tinyproxy"); err != nil {
			t.Fatalf("tinyproxy is needed and could not be installed (apt-get install -y tinyproxy): %v\n%s", ierr, out)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "tinyproxy.log")
	conf := filepath.Join(dir, "tinyproxy.conf")
	if err := os.WriteFile(conf, []byte("Port "+itoa(port)+"\nListen 127.0.0.1\nTimeout 60\nLogLevel Info\nLogFile \""+logPath+"\"\nMaxClients 50\nAllow 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-d", "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+itoa(port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tinyproxy did not listen: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "http://127.0.0.1:" + itoa(port), logPath
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestEgressThroughForwardProxy(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true})
	proxyURL, logPath := startTinyproxy(t)
	cfg := simConfig(sim, 0)
	cfg.HTTPProxy = proxyURL
	pool := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true})
	c := newClient(t, pool, cfg)
	if _, err := c.Graph.SubscribedSkus().Get(context.Background(), nil); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	host := strings.TrimPrefix(sim.URL(), "https://")
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		// The token request and the Graph request both tunnel through it.
		if strings.Count(string(b), "CONNECT "+host) >= 1 && strings.Contains(string(b), "Established connection") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CONNECT %s in the proxy's log:\n%s", host, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A dead proxy means no way out: the client does not go around it.
	cfg2 := simConfig(sim, 0)
	cfg2.Instance = "via-dead-proxy"
	cfg2.HTTPProxy = "http://127.0.0.1:1"
	c2 := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, MaxAttempts: 1}), cfg2)
	if _, err := c2.Graph.SubscribedSkus().Get(context.Background(), nil); err == nil {
		t.Fatal("reached the simulator without the proxy")
	}
}

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The credential commands as an operator runs them: an instance with a
// federated credential (no secret) added, tested and synced by a worker
// given the pool's token; a client secret with the expiry the portal
// showed; status showing each credential's kind and expiry.
func TestCredentialCommands(t *testing.T) {
	dir := t.TempDir()
	ca, creds, token := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "tenants.json"), filepath.Join(dir, "federated-token")
	const subject = "system:serviceaccount:m365:m365-worker"
	sim := start(t, "graphsim", "--listen", "127.0.0.1:0", "--tenants", "2", "--users", "20", "--groups", "2", "--ca-out", ca, "--credentials-out", creds,
		"--federated-subject", subject, "--federated-token-out", token)
	simURL := strings.Fields(strings.TrimPrefix(sim.waitLine(t, "graphsim listening on"), "graphsim listening on "))[0]
	var tenants []map[string]string
	b, _ := os.ReadFile(creds)
	_ = json.Unmarshal(b, &tenants)
	keyFile := filepath.Join(dir, "pool.seed")
	if out, code := cli(t, "", "pool", "keygen", "--out", keyFile); code != 0 {
		t.Fatalf("pool keygen: %s", out)
	}
	addr := freePort(t)
	natsURL := "nats://" + addr
	w := start(t, "run", "--data-dir", filepath.Join(dir, "data"), "--nats-listen", addr, "--demo=false", "--pool-key-file", keyFile,
		"--allow-endpoint-overrides", "--federated-token-file", token)
	w.waitLine(t, "Workers serving")
	endpoints := []string{"--authority", simURL, "--graph-root", simURL, "--ca-file", ca, "--nats", natsURL, "--sync-interval", "1h"}

	// Federated: tenant and client ids, no secret.
	out, code := cli(t, "", append([]string{"instance", "add", "fed", "--tenant-id", tenants[0]["tenant_id"], "--client-id", tenants[0]["client_id"], "--federated-credential"}, endpoints...)...)
	if code != 0 {
		t.Fatalf("instance add --federated-credential: %s", out)
	}
	if out, _ := cli(t, "", "instance", "show", "fed", "--nats", natsURL); !strings.Contains(out, "federated (no secret") {
		t.Errorf("instance show fed: %s", out)
	}
	out, code = cli(t, "", "instance", "test", "fed", "--nats", natsURL, "--pool-key-file", keyFile, "--allow-endpoint-overrides", "--federated-token-file", token)
	if code != 0 || !strings.Contains(out, "✓ token for app") || !strings.Contains(out, "credential: federated") {
		t.Fatalf("instance test fed: %d %s", code, out)
	}
	// Without the pool's token, the test says what the app must trust.
	out, code = cli(t, "", "instance", "test", "fed", "--nats", natsURL, "--pool-key-file", keyFile, "--allow-endpoint-overrides", "--federated-token-file", filepath.Join(dir, "absent"))
	if code == 0 || !strings.Contains(out, "✗ token") || !strings.Contains(out, "--federated-token-file") {
		t.Fatalf("instance test fed without a token: %d %s", code, out)
	}
	if out, code := cli(t, "", "job", "submit", "--instance", "fed", "--action", "sync", "--wait", "--nats", natsURL); code != 0 || !strings.Contains(out, `"kind":"federated"`) {
		t.Fatalf("a federated sync: %d %s", code, out)
	}

	// A client secret with the expiry the portal showed; the seeded app
	// may read its registration, so the end Graph reports wins.
	out, code = cli(t, tenants[1]["client_secret"], append([]string{"instance", "add", "sec", "--tenant-id", tenants[1]["tenant_id"], "--client-id", tenants[1]["client_id"],
		"--secret-file", "-", "--secret-expires", "2027-06-30", "--pool-key-file", keyFile}, endpoints...)...)
	if code != 0 {
		t.Fatalf("instance add --secret-expires: %s", out)
	}
	if out, _ := cli(t, "", "instance", "show", "sec", "--nats", natsURL); !strings.Contains(out, "expires 2027-06-30") {
		t.Errorf("instance show sec: %s", out)
	}
	if out, code := cli(t, "", "job", "submit", "--instance", "sec", "--action", "sync", "--wait", "--nats", natsURL); code != 0 {
		t.Fatalf("sync sec: %d %s", code, out)
	}
	graphEnds := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(2, 0, 0).Format("2006-01-02") // the seeded secrets' end
	out, _ = cli(t, "", "status", "--nats", natsURL)
	if !strings.Contains(out, "federated (no secret to expire)") || !strings.Contains(out, "client secret, expires "+graphEnds) || !strings.Contains(out, "from the app registration") {
		t.Fatalf("status: %s", out)
	}
}

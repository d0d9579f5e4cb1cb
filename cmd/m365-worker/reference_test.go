package main

import (
	"flag"
	"os"
	"os/exec"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/cli.md from the binary's --help")

// reference lists every command with an example, in the order docs/cli.md
// shows them. The flags come from the binary's own --help, so the page
// cannot drift from the code.
var reference = []struct {
	args    []string // the command, with placeholder positional arguments for --help
	example string
}{
	{[]string{"run"}, "m365-worker run                                  # the demo: embedded JetStream, Graph simulator, instance demo\nm365-worker run --demo=false --data-dir /var/lib/m365 --nats-listen 0.0.0.0:4222 --http-listen 127.0.0.1:9465"},
	{[]string{"worker"}, "M365_POOL_KEY=$(cat pool.seed) m365-worker worker --nats nats://nats-1:4222,nats://nats-2:4222 \\\n  --creds worker.creds --tls-ca ca.pem --pool default --http-listen :9465 --log-format json\n# a customer site's worker, on the site's leaf node (deploy/nats/leaf.conf)\nm365-worker worker --nats nats://worker:$PW@127.0.0.1:4222 --pool site-a --own-jobs-stream \\\n  --js-api-prefix JSHUB.API --inbox-prefix _INBOX_site-a --pool-key-file site-a.seed"},
	{[]string{"setup"}, "m365-worker setup --nats tls://operator:$PW@nats-1:4222 --tls-ca ca.pem --tls-cert operator.pem --tls-key operator-key.pem \\\n  --inbox-prefix _INBOX_operator --replicas 3 --pools default --site-pools site-a,site-b"},
	{[]string{"graphsim"}, "m365-worker graphsim --listen 127.0.0.1:8443 --users 100000 --groups 10000 --latency realistic \\\n  --ca-out ca.pem --credentials-out creds.json"},
	{[]string{"pool", "notify-key"}, "m365-worker pool notify-key --pool default --master-key-file notify-master.key --out default.notify-key"},
	{[]string{"notify"}, "m365-worker notify --listen :8443 --tls-cert-file hooks.pem --tls-key-file hooks-key.pem --master-key-file notify-master.key \\\n  --nats tls://notify:$PW@nats:4222 --inbox-prefix _INBOX_notify --tls-ca ca.pem --tls-cert notify.pem --tls-key notify-key.pem\n# during a master-key rotation (docs/security.md)\nm365-worker notify … --master-key-file new-master.key --previous-master-key-file notify-master.key"},
	{[]string{"console"}, "m365-worker console --nats tls://console:$PW@nats:4222 --inbox-prefix _INBOX_console --tls-ca ca.pem --tls-cert console.pem --tls-key console-key.pem \\\n  --listen :9470 --url https://console.example.com --tls-cert-file https.pem --tls-key-file https-key.pem \\\n  --oidc-tenant contoso.onmicrosoft.com --oidc-client-id 5d1c… --oidc-client-secret-file console-secret.txt"},
	{[]string{"tls", "init"}, "m365-worker tls init --dir tls --hosts nats,localhost,127.0.0.1   # for docker-compose.yml"},
	{[]string{"pool", "keygen"}, "m365-worker pool keygen --out pool.seed          # prints the public key (X…)"},
	{[]string{"instance", "add", "ID"}, "m365-worker instance add acme --config tevyra.json --pool-key-file pool.seed\nm365-worker instance add acme --tenant-id 6e7b… --client-id 1c4a… --secret-file - --sync-interval 15m < secret.txt"},
	{[]string{"instance", "update", "ID"}, "m365-worker instance update acme --sync-interval 1h\nm365-worker instance update acme --secret-file - --pool-key-file pool.seed < new-secret.txt"},
	{[]string{"instance", "remove", "ID"}, "m365-worker instance remove acme"},
	{[]string{"instance", "list"}, "m365-worker instance list -o json"},
	{[]string{"instance", "show", "ID"}, "m365-worker instance show acme"},
	{[]string{"instance", "test", "ID"}, "m365-worker instance test acme --pool-key-file pool.seed   # exit status 1 when sync cannot work"},
	{[]string{"job", "submit"}, "m365-worker job submit --instance acme --action disable_user --params '{\"user\":\"adele@contoso.com\"}' --wait\nm365-worker job submit --instance acme --action sync --params '{\"full\":true}' --wait --timeout 10m"},
	{[]string{"failed", "list"}, "m365-worker failed list --instance acme --code no_free_seat --since 24h"},
	{[]string{"failed", "show", "JOB_ID"}, "m365-worker failed show job-x7…"},
	{[]string{"failed", "replay"}, "m365-worker failed replay job-x7…\nm365-worker failed replay --all --code no_free_seat --dry-run"},
	{[]string{"status"}, "m365-worker status\nm365-worker status -o json"},
	{[]string{"bench", "sync"}, "m365-worker bench sync                           # 100,000 users / 10,000 groups, realistic latency\nm365-worker bench sync --users 20000 --skip-baseline -o json"},
	{[]string{"bench", "actions"}, "m365-worker bench actions --workers 3"},
	{[]string{"bench", "tenants"}, "m365-worker bench tenants --instances 2000 --workers 1 --interval 1m --duration 3m"},
	{[]string{"bench", "overhead"}, "m365-worker bench overhead --jobs 500"},
	{[]string{"bench", "freshness"}, "m365-worker bench freshness --instances 20 --notify-latency 5s   # notifications vs polling: latency and Graph requests"},
	{[]string{"bench", "receiver"}, "m365-worker bench receiver   # the receiver under hostile bodies, slow connections and HTTP/2 streams: peak RSS, valid p50/p99"},
	{[]string{"bench", "console"}, "m365-worker bench console   # 2,000 instances, 100,000 failure records: each page's p50/p95 against the 200 ms budget"},
	{[]string{"bench", "chaos"}, "m365-worker bench chaos --jobs 5000 --kills 10   # real nats-server and workers, kill -9, Graph faults; exit 1 on a mismatch"},
}

func helpOf(t *testing.T, args []string) string {
	t.Helper()
	cmd := exec.Command(binary, append(append([]string{}, args...), "--help")...)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "M365_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	out, _ := cmd.CombinedOutput()
	if !strings.HasPrefix(string(out), "Usage: m365-worker "+args[0]) {
		t.Fatalf("%v --help: %s", args, out)
	}
	return string(out)
}

func TestCLIReferenceUpToDate(t *testing.T) {
	var b strings.Builder
	b.WriteString("# m365-worker command reference\n\n")
	b.WriteString("Generated from the binary's `--help` by `go test ./cmd/m365-worker -run TestCLIReferenceUpToDate -update`;\n")
	b.WriteString("the test fails when this page and the code disagree. Every flag can also be set through the\n")
	b.WriteString("environment variable in brackets; a flag given on the command line wins.\n\n")
	for _, r := range reference {
		name := strings.Join(r.args, " ")
		for _, p := range []string{" ID", " JOB_ID"} {
			name = strings.TrimSuffix(name, p)
		}
		b.WriteString("## `m365-worker " + name + "`\n\n```sh\n" + r.example + "\n```\n\n```text\n" + strings.TrimRight(helpOf(t, r.args), "\n") + "\n```\n\n")
	}
	want := b.String()
	const path = "../../docs/cli.md"
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != want {
		t.Errorf("docs/cli.md is out of date with the binary's --help: run go test ./cmd/m365-worker -run TestCLIReferenceUpToDate -update (%v)", err)
	}
}

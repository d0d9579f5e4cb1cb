package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// rolePasswords sets the passwords the shipped NATS configs read from the
// environment: "<role>-pw".
func rolePasswords(t *testing.T) {
	for _, v := range []string{"OPERATOR", "TEVYRA", "WORKER_DEFAULT", "MONITOR", "NOTIFY", "CONSOLE", "LEAF_SITE_A", "LEAF_SITE_B", "SITE_WORKER"} {
		t.Setenv("M365_"+v+"_PASSWORD", strings.ToLower(strings.ReplaceAll(v, "_", "-"))+"-pw")
	}
}

// hubConfigWithSite copies deploy/nats into a temporary directory and adds a
// site the way an operator onboards one: the site-a blocks of accounts.inc
// copied (the console's two included), with the site's pool, account and
// instance replacing site-a's.
func hubConfigWithSite(t *testing.T, site, account, instance string) string {
	t.Helper()
	dir := t.TempDir()
	files, _ := filepath.Glob("../../deploy/nats/*")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "accounts.inc" {
			b = []byte(addSite(t, string(b), site, account, instance))
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func addSite(t *testing.T, conf, site, account, instance string) string {
	t.Helper()
	rename := strings.NewReplacer("site-a", site, "SITE_A", account, "acme", instance)
	for _, block := range []string{"site-a exports", "SITE_A", "site-a console reads", "site-a console denies"} {
		re := regexp.MustCompile(`(?s)\n[^\n]*# --- begin ` + block + `.*?# --- end ` + block + ` ---`)
		m := re.FindString(conf)
		if m == "" {
			t.Fatalf("accounts.inc has no %q block to copy", block)
		}
		conf = strings.Replace(conf, m, m+rename.Replace(m), 1)
	}
	return conf
}

// TestCustomerSitesFromConfig: the hub (single.conf with accounts.inc, TLS on
// client and leaf connections) and two customer sites, each a leaf node
// from leaf.conf in an account of its own, with the m365-worker binary as
// each site's workers. Each site syncs its tenant and runs Tevyra's jobs;
// site A cannot read or touch anything of site B's, and a forged ack sent
// by a rogue leaf with site A's credentials does not reach site B's pool.
func TestCustomerSitesFromConfig(t *testing.T) {
	dir := t.TempDir()
	pki := newTestPKI(t, t.TempDir())
	rolePasswords(t)
	conf := hubConfigWithSite(t, "site-b", "SITE_B", "globex")
	hubOpts := loadConfFrom(t, conf, "single.conf", nil)
	leafAddr := freePort(t)
	_, lp, _ := net.SplitHostPort(leafAddr)
	hubOpts.LeafNode.Host, hubOpts.LeafNode.Port = "127.0.0.1", atoi(t, lp)
	hub := startServer(t, hubOpts)
	hubAddr := hub.Addr().String()
	as := func(user string) string { return "tls://" + user + ":" + user + "-pw@" + hubAddr }
	tlsOpts := []nats.Option{nats.RootCAs(pki.ca), nats.ClientCert(pki.clientCert, pki.clientKey)}

	if out, code := cli(t, "", append([]string{"setup", "--nats", as("operator"), "--site-pools", "site-a,site-b"}, pki.tlsArgs()...)...); code != 0 ||
		!strings.Contains(out, "site pool site-a: its jobs are in M365_JOBS_site-a") {
		t.Fatalf("setup as the operator: %d %s", code, out)
	}
	leaves := map[string]string{}
	for _, site := range []string{"site-a", "site-b"} {
		lo := loadConfFrom(t, conf, "leaf.conf", map[string]string{"NATS_SERVER_NAME": site,
			"M365_HUB_LEAF_URL": "tls://leaf-" + site + ":leaf-" + site + "-pw@" + leafAddr})
		leaves[site] = startServer(t, lo).Addr().String()
	}
	for deadline := time.Now().Add(30 * time.Second); hub.NumLeafNodes() < 2; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 leaves connected to the hub", hub.NumLeafNodes())
		}
	}

	ca, creds := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "tenants.json")
	sim := start(t, "graphsim", "--listen", "127.0.0.1:0", "--tenants", "2", "--users", "20", "--groups", "3", "--ca-out", ca, "--credentials-out", creds)
	simURL := strings.Fields(strings.TrimPrefix(sim.waitLine(t, "graphsim listening on"), "graphsim listening on "))[0]
	var tenants []map[string]string
	b, _ := os.ReadFile(creds)
	_ = json.Unmarshal(b, &tenants)
	sites := []struct{ pool, instance string }{{"site-a", "acme"}, {"site-b", "globex"}}
	firstSync := map[string]string{}
	seeds := map[string]string{}
	for i, s := range sites {
		// The site's key pair is made on the site; only the public key leaves.
		seeds[s.pool] = filepath.Join(dir, s.pool+".seed")
		out, code := cli(t, "", "pool", "keygen", "--out", seeds[s.pool])
		if code != 0 {
			t.Fatalf("keygen: %s", out)
		}
		pub := regexp.MustCompile(`public key: (\S+)`).FindStringSubmatch(out)[1]
		out, code = cli(t, tenants[i]["client_secret"], append([]string{"instance", "add", s.instance, "--pool", s.pool, "--pool-public-key", pub,
			"--tenant-id", tenants[i]["tenant_id"], "--client-id", tenants[i]["client_id"], "--secret-file", "-", "--authority", simURL,
			"--graph-root", simURL, "--ca-file", ca, "--nats", as("operator"), "--sync-interval", "1h"}, pki.tlsArgs()...)...)
		if code != 0 || !strings.Contains(out, "syncing now (job ") {
			t.Fatalf("instance add %s: %s", s.instance, out)
		}
		firstSync[s.instance] = strings.TrimSuffix(strings.TrimSpace(out[strings.Index(out, "(job ")+5:]), ")")
	}
	siteWorker := func(pool string) *started {
		w := start(t, "worker", "--nats", "nats://worker:site-worker-pw@"+leaves[pool], "--pool", pool, "--own-jobs-stream",
			"--js-api-prefix", "JSHUB.API", "--inbox-prefix", "_INBOX_"+pool, "--pool-key-file", seeds[pool], "--allow-endpoint-overrides")
		w.waitLine(t, "serving pool")
		return w
	}
	wa := siteWorker("site-a")

	// Tevyra, at the hub with its own inbox.
	tnc, err := nats.Connect(as("tevyra"), append(tlsOpts, nats.CustomInboxPrefix("_INBOX_tevyra"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer tnc.Close()
	tjs, _ := jetstream.New(tnc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if rep, err := worker.WaitResult(ctx, tjs, worker.Topology{}, "acme", jobs.ActionSync, firstSync["acme"]); err != nil || rep.Status != jobs.StatusSucceeded {
		t.Fatalf("acme's first sync on site A: %+v %v\nworker:\n%s", rep, err, wa.stderr)
	}

	// A job of site B in flight, held by a site B client (site B's worker
	// is not started yet), and a rogue leaf with site A's credentials that
	// forges its termination.
	bnc, err := nats.Connect("nats://worker:site-worker-pw@"+leaves["site-b"], nats.CustomInboxPrefix("_INBOX_site-b"))
	if err != nil {
		t.Fatal(err)
	}
	defer bnc.Close()
	bjs, _ := jetstream.NewWithAPIPrefix(bnc, "JSHUB.API")
	held := &jobs.Job{ID: "held-1", Instance: "globex", Action: jobs.ActionDisableUser, Params: json.RawMessage(`{"user":"nobody@globex.example"}`)}
	if _, err := worker.Submit(ctx, tjs, jobs.Subjects{}, "site-b", held); err != nil {
		t.Fatal(err)
	}
	// Site B's jobs so far: globex's first sync and this one, both held.
	var heldMsg jetstream.Msg
	var holding []jetstream.Msg
	cons, err := bjs.Consumer(ctx, "M365_JOBS_site-b", "m365_pool_site-b")
	if err != nil {
		t.Fatalf("site B's own consumer: %v", err)
	}
	for heldMsg == nil {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			holding = append(holding, m)
			if !strings.HasSuffix(m.Subject(), ".sync") {
				heldMsg = m
			}
		}
		if ctx.Err() != nil {
			t.Fatal("site B's job never arrived")
		}
	}
	oc0, _ := bjs.Consumer(ctx, "M365_JOBS_site-b", "m365_pool_site-b")
	before, err := oc0.Info(ctx)
	if err != nil || before.NumAckPending != len(holding) {
		t.Fatalf("site B's consumer before the forgery: %+v %v (holding %d)", before, err, len(holding))
	}
	rogue := rogueLeaf(t, leafAddr, "leaf-site-a", "leaf-site-a-pw", pki)
	rogue.send(t, heldMsg.Reply(), "+TERM")
	// Sent after the forgery on the same connection: once it is stored, the
	// hub has handled the forged ack too.
	rogue.send(t, "m365.results.acme.rogue-check", "{}")
	onc, err := nats.Connect(as("operator"), tlsOpts...)
	if err != nil {
		t.Fatal(err)
	}
	defer onc.Close()
	ojs, _ := jetstream.New(onc)
	results, _ := ojs.Stream(ctx, "M365_RESULTS")
	for {
		if _, err := results.GetLastMsgForSubject(ctx, "m365.results.acme.rogue-check"); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the rogue leaf's message on site A's own subject was never stored: the test's raw leaf does not work")
		}
		time.Sleep(50 * time.Millisecond)
	}
	oc, _ := ojs.Consumer(ctx, "M365_JOBS_site-b", "m365_pool_site-b")
	if info, err := oc.Info(ctx); err != nil || info.NumAckPending != before.NumAckPending || info.AckFloor != before.AckFloor {
		t.Fatalf("site B's consumer after site A's forged +TERM: %+v %v (before: %+v)", info, err, before)
	}
	for _, m := range holding {
		_ = m.Nak()
	}
	bnc.Close()

	wb := siteWorker("site-b")
	if rep, err := worker.WaitResult(ctx, tjs, worker.Topology{}, "globex", jobs.ActionSync, firstSync["globex"]); err != nil || rep.Status != jobs.StatusSucceeded {
		t.Fatalf("globex's first sync on site B: %+v %v\nworker:\n%s", rep, err, wb.stderr)
	}
	if res, err := worker.WaitResult(ctx, tjs, worker.Topology{}, "globex", jobs.ActionDisableUser, "held-1"); err != nil || res.Error == nil || res.Error.Code != "user_not_found" {
		t.Fatalf("the held job's result: %+v %v\nworker:\n%s", res, err, wb.stderr)
	}
	// Tevyra's action on site A.
	if _, err := worker.Submit(ctx, tjs, jobs.Subjects{}, "site-a", &jobs.Job{ID: "a-1", Instance: "acme", Action: jobs.ActionDisableUser, Params: json.RawMessage(`{"user":"nobody@acme.example"}`)}); err != nil {
		t.Fatal(err)
	}
	if res, err := worker.WaitResult(ctx, tjs, worker.Topology{}, "acme", jobs.ActionDisableUser, "a-1"); err != nil || res.Error == nil || res.Error.Code != "user_not_found" {
		t.Fatalf("site A's action result: %+v %v\nworker:\n%s", res, err, wa.stderr)
	}

	// What site A may not do, tried from a client of site A's leaf.
	anc, err := nats.Connect("nats://worker:site-worker-pw@"+leaves["site-a"], nats.CustomInboxPrefix("_INBOX_site-a"))
	if err != nil {
		t.Fatal(err)
	}
	defer anc.Close()
	ajs, _ := jetstream.NewWithAPIPrefix(anc, "JSHUB.API")
	refused := func(what string, f func(ctx context.Context) error) {
		t.Helper()
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := f(c); err == nil {
			t.Errorf("site A could %s", what)
		}
	}
	refused("bind site B's consumer", func(c context.Context) error {
		_, err := ajs.Consumer(c, "M365_JOBS_site-b", "m365_pool_site-b")
		return err
	})
	refused("read site B's jobs", func(c context.Context) error {
		_, err := ajs.Stream(c, "M365_JOBS_site-b")
		return err
	})
	refused("read the jobs stream of every pool", func(c context.Context) error {
		_, err := ajs.Stream(c, "M365_JOBS")
		return err
	})
	refused("delete a stream", func(c context.Context) error { return ajs.DeleteStream(c, "M365_JOBS_site-a") })
	kvs := map[string]string{"m365_instances": "site-b.globex", "m365_state": "sync.site-b.globex"}
	for bucket, key := range kvs {
		refused("read "+bucket+" key "+key, func(c context.Context) error {
			kv, err := ajs.KeyValue(c, bucket)
			if err != nil {
				return fmt.Errorf("open: %w", err)
			}
			e, err := kv.Get(c, key)
			if err == nil && e == nil {
				return fmt.Errorf("no entry")
			}
			return err
		})
	}
	refused("write site B's state", func(c context.Context) error {
		kv, err := ajs.KeyValue(c, "m365_state")
		if err != nil {
			return err
		}
		_, err = kv.Put(c, "sync.site-b.globex", []byte("{}"))
		return err
	})
	refused("scan site B's state", func(c context.Context) error {
		_, err := ajs.CreateConsumer(c, "KV_m365_state", jetstream.ConsumerConfig{Name: "scan_rogue", FilterSubject: "$KV.m365_state.a.site-b.globex.u.*",
			DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy, AckPolicy: jetstream.AckNonePolicy})
		return err
	})
	refused("publish site B's results", func(c context.Context) error {
		_, err := ajs.Publish(c, "m365.results.globex.actions", []byte("{}"))
		return err
	})
	refused("publish a job", func(c context.Context) error {
		_, err := ajs.Publish(c, "m365.jobs.site-b.globex.sync", []byte("{}"))
		return err
	})
	// And what it may: its own instance record.
	kv, err := ajs.KeyValue(ctx, "m365_instances")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "site-a.acme"); err != nil {
		t.Errorf("site A reads its own instance record: %v", err)
	}
}

// rawLeaf speaks the leaf-node protocol itself, as a compromised site could.
type rawLeaf struct {
	conn net.Conn
	r    *bufio.Reader
}

func rogueLeaf(t *testing.T, addr, user, pass string, pki testPKI) *rawLeaf {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "INFO ") {
		t.Fatalf("the hub's leaf port: %q %v", line, err)
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(pki.ca)
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(pki.clientCert, pki.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	l := &rawLeaf{conn: tc, r: bufio.NewReader(tc)}
	connect, _ := json.Marshal(map[string]any{"user": user, "pass": pass, "tls_required": true, "name": "rogue", "headers": true, "verbose": false, "pedantic": false})
	fmt.Fprintf(tc, "CONNECT %s\r\nPING\r\n", connect)
	for {
		_ = tc.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := l.r.ReadString('\n')
		if err != nil {
			t.Fatalf("rogue leaf: %v", err)
		}
		if strings.HasPrefix(line, "-ERR") {
			t.Fatalf("rogue leaf refused: %s", line)
		}
		if strings.HasPrefix(line, "PONG") {
			break
		}
	}
	_ = tc.SetReadDeadline(time.Time{})
	// Answer the hub's pings from now on.
	go func() {
		for {
			line, err := l.r.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(line, "PING") {
				fmt.Fprint(tc, "PONG\r\n")
			}
		}
	}()
	return l
}

func (l *rawLeaf) send(t *testing.T, subject, payload string) {
	t.Helper()
	if _, err := fmt.Fprintf(l.conn, "LMSG %s %d\r\n%s\r\n", subject, len(payload), payload); err != nil {
		t.Fatal(err)
	}
}

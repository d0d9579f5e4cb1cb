package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// The compose file and the NATS configs cannot run here (no Docker engine),
// so they are parsed and checked.

func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
			Build       struct {
				Context    string `yaml:"context"`
				Dockerfile string `yaml:"dockerfile"`
			} `yaml:"build"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	w, ok := c.Services["worker"]
	if !ok {
		t.Fatal("no worker service")
	}
	if w.Command[0] != "worker" || w.Environment["M365_NATS"] != "nats://nats:4222" {
		t.Errorf("worker service: %+v", w)
	}
	if _, err := os.Stat(filepath.Join("../..", w.Build.Context, w.Build.Dockerfile)); err != nil {
		t.Errorf("worker build: %v", err)
	}
	su, ok := c.Services["setup"]
	if !ok || len(su.Command) == 0 || su.Command[0] != "setup" || su.Environment["M365_NATS"] != "nats://nats:4222" {
		t.Errorf("setup service: %+v", su)
	}
	if !strings.Contains(string(b), "condition: service_completed_successfully") {
		t.Error("the workers do not wait for setup to complete")
	}
	// Every M365_* variable the compose file sets is one the CLI reads.
	help := cliSources(t)
	for _, svc := range []string{"worker", "setup"} {
		for k := range c.Services[svc].Environment {
			flagName := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k, "M365_")), "_", "-")
			if !strings.Contains(help, `"`+flagName+`"`) {
				t.Errorf("compose's %s sets %s but there is no --%s flag", svc, k, flagName)
			}
		}
	}
	n := c.Services["nats"]
	if !strings.HasPrefix(n.Image, "nats:2.1") {
		t.Errorf("nats image %q", n.Image)
	}
	for _, v := range n.Volumes {
		host, _, _ := strings.Cut(v, ":")
		if strings.HasPrefix(host, "./") {
			if _, err := os.Stat(filepath.Join("../..", host)); err != nil {
				t.Errorf("nats volume %s: %v", v, err)
			}
		}
	}
}

func TestNATSConfigs(t *testing.T) {
	t.Setenv("NATS_SERVER_NAME", "nats-0")
	t.Setenv("M365_HUB_LEAF_URL", "nats-leaf://hub.example:7422")
	for _, v := range []string{"M365_OPERATOR_PASSWORD", "M365_TEVYRA_PASSWORD", "M365_WORKER_DEFAULT_PASSWORD"} {
		t.Setenv(v, "pw")
	}
	newTestPKI(t, t.TempDir())
	files, _ := filepath.Glob("../../deploy/nats/*.conf")
	if len(files) < 3 {
		t.Fatalf("NATS configs under deploy/nats: %v (want single, cluster and leaf)", files)
	}
	for _, f := range files {
		opts, err := server.ProcessConfigFile(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if opts.MaxPayload != 1<<20 {
			t.Errorf("%s: max_payload %d, want 1 MiB set explicitly", f, opts.MaxPayload)
		}
		switch filepath.Base(f) {
		case "leaf.conf":
			// The site's leaf runs no JetStream and only dials out.
			if opts.JetStream || len(opts.LeafNode.Remotes) != 1 || opts.LeafNode.Port != 0 || opts.Host != "127.0.0.1" {
				t.Errorf("%s: JetStream %v, remotes %d, leaf listen port %d, host %s", f, opts.JetStream, len(opts.LeafNode.Remotes), opts.LeafNode.Port, opts.Host)
			} else if u := opts.LeafNode.Remotes[0].URLs; len(u) != 1 || u[0].Host != "hub.example:7422" {
				t.Errorf("%s: remote %v", f, u)
			}
		default:
			if !opts.JetStream || !opts.SyncAlways {
				t.Errorf("%s: JetStream %v, sync_interval always %v: jobs and state need both", f, opts.JetStream, opts.SyncAlways)
			}
			if opts.ServerName == "" {
				t.Errorf("%s: no server name", f)
			}
		}
		if filepath.Base(f) == "cluster.conf" && (opts.Cluster.Name != "m365" || len(opts.Routes) != 3 || opts.LeafNode.Port != 7422 || opts.HTTPPort != 8222) {
			t.Errorf("%s: cluster %q, %d routes, leaf port %d, monitoring %d", f, opts.Cluster.Name, len(opts.Routes), opts.LeafNode.Port, opts.HTTPPort)
		}
	}
}

// loadConf reads a deploy config with env set, moved to loopback ports and a
// temporary store so that several servers run on this machine.
func loadConf(t *testing.T, file string, env map[string]string) *server.Options {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile(filepath.Join("../../deploy/nats", file))
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.HTTPPort, opts.NoSigs = "127.0.0.1", -1, 0, true
	if opts.JetStream {
		opts.StoreDir = t.TempDir()
		opts.SyncAlways = false // the machine's disk is not what is tested here
	}
	return opts
}

func startServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		t.Fatalf("%s did not start", opts.ServerName)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// countingWorker runs a worker of pool on url whose disable_user handler
// counts the jobs it handled.
func countingWorker(t *testing.T, url, domain, pool string, replicas int, handled *atomic.Int64) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := newJetStream(nc, domain)
	reg := worker.Registry{}
	worker.Register(reg, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		handled.Add(1)
		return map[string]string{"user_id": p.User}, nil
	})
	w, err := worker.New(context.Background(), js, worker.Topology{Replicas: replicas}, worker.Config{Pool: pool, PollWait: 200 * time.Millisecond, ManageConsumer: true}, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func submitAndWait(t *testing.T, js jetstream.JetStream, pool, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	j := &jobs.Job{ID: id, Instance: "acme", Action: jobs.ActionDisableUser, Params: json.RawMessage(`{"user":"adele@contoso.com"}`)}
	for {
		_, err := worker.Submit(ctx, js, jobs.Subjects{}, pool, j)
		if err == nil {
			break
		}
		t.Logf("submit %s: %v", id, err)
		if ctx.Err() != nil {
			t.Fatalf("submit %s: %v", id, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	res, err := worker.WaitResult(ctx, js, worker.Topology{}, "acme", jobs.ActionDisableUser, id)
	if err != nil || res.Status != jobs.StatusSucceeded {
		t.Fatalf("result of %s: %+v %v", id, res, err)
	}
}

// The cluster config, as three real servers on loopback: the streams are
// created R3 and jobs still run after a node goes down.
func TestNATSClusterFromConfig(t *testing.T) {
	ports := []string{freePort(t), freePort(t), freePort(t)}
	var servers []*server.Server
	for i := range ports {
		opts := loadConf(t, "cluster.conf", map[string]string{"NATS_SERVER_NAME": fmt.Sprintf("nats-%d", i)})
		opts.LeafNode.Port = 0
		host, port, _ := net.SplitHostPort(ports[i])
		opts.Cluster.Host, opts.Cluster.Port = host, atoi(t, port)
		opts.Routes = server.RoutesFromStr("nats://" + strings.Join(ports, ",nats://"))
		servers = append(servers, startServer(t, opts))
	}
	urls := []string{}
	for _, s := range servers {
		urls = append(urls, s.ClientURL())
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	topo := worker.Topology{Replicas: 3}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := worker.Setup(ctx, js, topo)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("setup on the cluster: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// A later setup with the default replica count (a customer site's, say)
	// keeps the cluster's R3.
	if err := worker.SetupWith(context.Background(), js, worker.Topology{Replicas: 1}, worker.SetupOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{topo.JobsStream(), topo.ResultsStream(), topo.FailuresStream(), "KV_" + topo.StateBucket(), "KV_" + topo.InstancesBucket()} {
		st, err := js.Stream(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		if info := st.CachedInfo(); info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Errorf("%s: replicas %d, cluster %+v", name, info.Config.Replicas, info.Cluster)
		}
	}
	var handled atomic.Int64
	countingWorker(t, strings.Join(urls, ","), "", "default", 3, &handled)
	submitAndWait(t, js, "default", "cluster-1")
	// One node down: the other two keep a quorum.
	servers[2].Shutdown()
	servers[2].WaitForShutdown()
	// Wait until the jobs stream and the state bucket have a leader among
	// the two left (an election takes a few seconds).
	deadline = time.Now().Add(90 * time.Second)
	for _, name := range []string{topo.JobsStream(), topo.ResultsStream(), "KV_" + topo.StateBucket()} {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, err := js.Stream(ctx, name)
			var info *jetstream.StreamInfo
			if err == nil {
				info, err = st.Info(ctx)
			}
			cancel()
			if err == nil && info.Cluster != nil && info.Cluster.Leader != "" && info.Cluster.Leader != "nats-2" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s has no leader after a node went down: %v", name, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	submitAndWait(t, js, "default", "cluster-2")
	if handled.Load() != 2 {
		t.Errorf("handled %d jobs, want 2", handled.Load())
	}
}

// A customer site: a leaf node from leaf.conf dials out to the hub, and a
// worker of the site's pool, connected only to the leaf, runs the jobs
// Tevyra publishes at the hub; results land in the hub's streams.
func TestLeafSiteWorkerFromConfig(t *testing.T) {
	hubOpts := loadConf(t, "single.conf", nil)
	leafAddr := freePort(t)
	_, lp, _ := net.SplitHostPort(leafAddr)
	hubOpts.LeafNode.Host, hubOpts.LeafNode.Port = "127.0.0.1", atoi(t, lp)
	hub := startServer(t, hubOpts)
	leafURL := "nats-leaf://" + leafAddr
	leafOpts := loadConf(t, "leaf.conf", map[string]string{"NATS_SERVER_NAME": "site-a", "M365_HUB_LEAF_URL": leafURL})
	leaf := startServer(t, leafOpts)
	deadline := time.Now().Add(30 * time.Second)
	for hub.NumLeafNodes() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the leaf did not connect to the hub")
		}
		time.Sleep(50 * time.Millisecond)
	}
	hnc, err := nats.Connect(hub.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer hnc.Close()
	hjs, _ := jetstream.New(hnc)
	if err := worker.Setup(context.Background(), hjs, worker.Topology{}); err != nil {
		t.Fatal(err)
	}
	// The hub's JetStream answers through the leaf connection once the
	// interest has propagated.
	lnc, err := nats.Connect(leaf.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer lnc.Close()
	ljs, _ := jetstream.NewWithDomain(lnc, "hub")
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := ljs.AccountInfo(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream through the leaf: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var handled atomic.Int64
	countingWorker(t, leaf.ClientURL(), "hub", "site-a", 1, &handled)
	submitAndWait(t, hjs, "site-a", "site-1")
	if handled.Load() != 1 {
		t.Errorf("the site's worker handled %d jobs, want 1", handled.Load())
	}
}

func atoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// k8sDoc is the part of a Kubernetes object the manifest checks read.
type k8sDoc struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Replicas       int `yaml:"replicas"`
		MinReplicas    int `yaml:"minReplicaCount"`
		ScaleTargetRef struct {
			Name string `yaml:"name"`
		} `yaml:"scaleTargetRef"`
		Triggers []struct {
			Type     string            `yaml:"type"`
			Metadata map[string]string `yaml:"metadata"`
		} `yaml:"triggers"`
		Template struct {
			Spec struct {
				TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
				Containers                    []struct {
					Image string   `yaml:"image"`
					Args  []string `yaml:"args"`
					Env   []struct {
						Name      string `yaml:"name"`
						Value     string `yaml:"value"`
						ValueFrom any    `yaml:"valueFrom"`
					} `yaml:"env"`
					ReadinessProbe struct {
						HTTPGet struct {
							Path string `yaml:"path"`
						} `yaml:"httpGet"`
					} `yaml:"readinessProbe"`
					LivenessProbe struct {
						HTTPGet struct {
							Path string `yaml:"path"`
						} `yaml:"httpGet"`
					} `yaml:"livenessProbe"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func readK8s(t *testing.T, file string) []k8sDoc {
	t.Helper()
	f, err := os.Open(filepath.Join("../../deploy/k8s", file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var docs []k8sDoc
	dec := yaml.NewDecoder(f)
	for {
		var d k8sDoc
		if err := dec.Decode(&d); err != nil {
			if err.Error() == "EOF" {
				break
			}
			t.Fatalf("%s: %v", file, err)
		}
		docs = append(docs, d)
	}
	return docs
}

// The Kubernetes manifests cannot be applied here; they are parsed and held
// to what the code does: the env names are flags, the probes are served,
// the grace period covers the drain, KEDA watches the consumer the workers
// share, and the NATS ConfigMap is deploy/nats/cluster.conf.
func TestKubernetesManifests(t *testing.T) {
	topo := worker.Topology{}
	var deploy, scaled, cm *k8sDoc
	var setup *k8sDoc
	for _, file := range []string{"nats.yaml", "worker.yaml", "keda.yaml", "setup.yaml"} {
		for _, d := range readK8s(t, file) {
			d := d
			switch {
			case d.Kind == "Job" && d.Metadata.Name == "m365-worker-setup":
				setup = &d
			case d.Kind == "Deployment" && d.Metadata.Name == "m365-worker":
				deploy = &d
			case d.Kind == "ScaledObject":
				scaled = &d
			case d.Kind == "ConfigMap" && d.Metadata.Name == "nats-config":
				cm = &d
			}
		}
	}
	if deploy == nil || scaled == nil || cm == nil {
		t.Fatalf("manifests: deployment %v, scaled object %v, nats config map %v", deploy != nil, scaled != nil, cm != nil)
	}
	conf, _ := os.ReadFile("../../deploy/nats/cluster.conf")
	if cm.Data["nats.conf"] != string(conf) {
		t.Error("deploy/k8s/nats.yaml's ConfigMap differs from deploy/nats/cluster.conf")
	}
	c := deploy.Spec.Template.Spec.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "worker" {
		t.Errorf("worker args %v", c.Args)
	}
	src := cliSources(t)
	// The operator's step, as a Job: setup with the cluster's three replicas.
	if setup == nil {
		t.Fatal("no setup Job in deploy/k8s/setup.yaml")
	}
	sc := setup.Spec.Template.Spec.Containers[0]
	replicas := ""
	for _, e := range sc.Env {
		flagName := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(e.Name, "M365_")), "_", "-")
		if !strings.Contains(src, `"`+flagName+`"`) {
			t.Errorf("setup.yaml sets %s but there is no --%s flag", e.Name, flagName)
		}
		if e.Name == "M365_REPLICAS" {
			replicas = e.Value
		}
	}
	if len(sc.Args) == 0 || sc.Args[0] != "setup" || replicas != "3" {
		t.Errorf("setup job: args %v, replicas %q", sc.Args, replicas)
	}
	var shutdown time.Duration
	for _, e := range c.Env {
		if e.Name == "M365_POOL_KEY" {
			if e.ValueFrom == nil {
				t.Error("M365_POOL_KEY must come from a Secret, not a plain value")
			}
			continue
		}
		flagName := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(e.Name, "M365_")), "_", "-")
		if !strings.Contains(src, `"`+flagName+`"`) {
			t.Errorf("worker.yaml sets %s but there is no --%s flag", e.Name, flagName)
		}
		if e.Name == "M365_SHUTDOWN_TIMEOUT" {
			shutdown, _ = time.ParseDuration(e.Value)
		}
	}
	if shutdown == 0 || time.Duration(deploy.Spec.Template.Spec.TerminationGracePeriodSeconds)*time.Second <= shutdown {
		t.Errorf("terminationGracePeriodSeconds %d must exceed the shutdown timeout %s", deploy.Spec.Template.Spec.TerminationGracePeriodSeconds, shutdown)
	}
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("probes %q %q", c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path)
	}
	if scaled.Spec.ScaleTargetRef.Name != deploy.Metadata.Name || scaled.Spec.MinReplicas < 1 || len(scaled.Spec.Triggers) != 1 {
		t.Fatalf("scaled object %+v", scaled.Spec)
	}
	tr := scaled.Spec.Triggers[0]
	if tr.Type != "nats-jetstream" || tr.Metadata["stream"] != topo.JobsStream() || tr.Metadata["consumer"] != topo.ConsumerName(jobs.DefaultPool) ||
		!strings.HasSuffix(tr.Metadata["natsServerMonitoringEndpoint"], ":8222") {
		t.Errorf("KEDA trigger %+v (want stream %s, consumer %s)", tr, topo.JobsStream(), topo.ConsumerName(jobs.DefaultPool))
	}
}

// The customer-site shape end to end with the binary: a hub and a site leaf
// from the deploy configs; the site's key made on the site; Tevyra (at the
// hub) adds the instance sealed to the site's public key and submits a sync;
// the site's worker, connected only to its leaf, reads the tenant and the
// report lands at the hub.
func TestCustomerSiteEndToEnd(t *testing.T) {
	dir := t.TempDir()
	hubOpts := loadConf(t, "single.conf", nil)
	leafAddr := freePort(t)
	_, lp, _ := net.SplitHostPort(leafAddr)
	hubOpts.LeafNode.Host, hubOpts.LeafNode.Port = "127.0.0.1", atoi(t, lp)
	hub := startServer(t, hubOpts)
	leaf := startServer(t, loadConf(t, "leaf.conf", map[string]string{"NATS_SERVER_NAME": "site-acme", "M365_HUB_LEAF_URL": "nats-leaf://" + leafAddr}))
	for deadline := time.Now().Add(30 * time.Second); hub.NumLeafNodes() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the leaf did not connect to the hub")
		}
	}
	ca, creds := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "tenants.json")
	sim := start(t, "graphsim", "--listen", "127.0.0.1:0", "--users", "40", "--groups", "4", "--ca-out", ca, "--credentials-out", creds)
	simURL := strings.Fields(strings.TrimPrefix(sim.waitLine(t, "graphsim listening on"), "graphsim listening on "))[0]

	// On the site: the pool's key pair; only the public key leaves.
	seed := filepath.Join(dir, "site.seed")
	out, code := cli(t, "", "pool", "keygen", "--out", seed)
	if code != 0 {
		t.Fatalf("pool keygen: %s", out)
	}
	var pub string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "public key: ") {
			pub = strings.TrimPrefix(l, "public key: ")
		}
	}
	site := start(t, "worker", "--nats", leaf.ClientURL(), "--js-domain", "hub", "--pool", "site-acme", "--pool-key-file", seed, "--allow-endpoint-overrides")
	site.waitLine(t, "serving pool")

	// At Tevyra (the hub): the instance, sealed to the site's public key.
	var tenants []map[string]string
	b, _ := os.ReadFile(creds)
	_ = json.Unmarshal(b, &tenants)
	hubURL := hub.ClientURL()
	// The operator's step at the hub (the site's worker waits for it).
	if out, code = cli(t, "", "setup", "--nats", hubURL, "--pools", "site-acme"); code != 0 || !strings.Contains(out, "site-acme") {
		t.Fatalf("setup: %s", out)
	}
	out, code = cli(t, tenants[0]["client_secret"], "instance", "add", "acme", "--pool", "site-acme", "--pool-public-key", pub, "--tenant-id", tenants[0]["tenant_id"],
		"--client-id", tenants[0]["client_id"], "--secret-file", "-", "--authority", simURL, "--graph-root", simURL, "--ca-file", ca, "--nats", hubURL, "--sync-interval", "1h")
	if code != 0 || !strings.Contains(out, "syncing now (job ") {
		t.Fatalf("instance add: %s", out)
	}
	// The first sync, asked for by instance add, runs on the site.
	firstSync := strings.TrimSuffix(strings.TrimSpace(out[strings.Index(out, "(job ")+5:]), ")")
	hnc0, _ := nats.Connect(hubURL)
	defer hnc0.Close()
	hjs0, _ := jetstream.New(hnc0)
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	res, err := worker.WaitResult(wctx, hjs0, worker.Topology{}, "acme", jobs.ActionSync, firstSync)
	var rep jobs.SyncReport
	if err == nil {
		_ = json.Unmarshal(res.Output, &rep)
	}
	if err == nil && rep.Counts[jobs.AssetUser].Upserts == 40 {
		// And one asked for at the hub with job submit.
		out, code = cli(t, "", "job", "submit", "--instance", "acme", "--action", "sync", "--wait", "--timeout", "30s", "--nats", hubURL, "-o", "json")
		_ = json.Unmarshal([]byte(out), &res)
	}
	if err != nil || code != 0 || res.Status != jobs.StatusSucceeded || rep.Counts[jobs.AssetUser].Upserts != 40 {
		hnc, _ := nats.Connect(hubURL)
		hjs, _ := jetstream.New(hnc)
		var dbg []string
		if c, err := hjs.Consumer(context.Background(), "M365_JOBS", "m365_pool_site-acme"); err == nil {
			info, _ := c.Info(context.Background())
			dbg = append(dbg, fmt.Sprintf("consumer: pending %d ack-pending %d delivered %+v filter %v", info.NumPending, info.NumAckPending, info.Delivered, info.Config.FilterSubjects))
		} else {
			dbg = append(dbg, "consumer: "+err.Error())
		}
		if st, err := hjs.Stream(context.Background(), "M365_JOBS"); err == nil {
			info, _ := st.Info(context.Background(), jetstream.WithSubjectFilter(">"))
			dbg = append(dbg, fmt.Sprintf("stream subjects: %v", info.State.Subjects))
		}
		t.Fatalf("sync through the site: %d %s\nsite worker:\n%s\n%v", code, out, site.stderr, dbg)
	}
	out, _ = cli(t, "", "status", "--nats", hubURL)
	if !strings.Contains(out, "instance acme (pool site-acme)") || !strings.Contains(out, "pool site-acme: 1 live workers") {
		t.Errorf("status at the hub: %s", out)
	}
}

// cliSources is the CLI's Go source, where every flag is named.
func cliSources(t *testing.T) string {
	t.Helper()
	files, _ := filepath.Glob("*.go")
	var b strings.Builder
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") {
			src, _ := os.ReadFile(f)
			b.Write(src)
		}
	}
	return b.String()
}

// The roles of deploy/nats/roles.conf on a real server: the operator sets up
// and adds an instance; the pool's worker, with only its permissions and its
// own inbox, syncs the tenant and runs an action; Tevyra publishes the job
// and reads the results. What a role must not do is refused.
func TestRolesFromConfig(t *testing.T) {
	dir := t.TempDir()
	pki := newTestPKI(t, t.TempDir())
	opts := loadConf(t, "roles.conf", map[string]string{"M365_OPERATOR_PASSWORD": "op-pw", "M365_TEVYRA_PASSWORD": "tv-pw", "M365_WORKER_DEFAULT_PASSWORD": "wd-pw"})
	srv := startServer(t, opts)
	addr := srv.Addr().String()
	url := func(user, pw string) string { return "tls://" + user + ":" + pw + "@" + addr }
	tlsOpts := []nats.Option{nats.RootCAs(pki.ca), nats.ClientCert(pki.clientCert, pki.clientKey)}
	if out, code := cli(t, "", append([]string{"setup", "--nats", url("operator", "op-pw")}, pki.tlsArgs()...)...); code != 0 {
		t.Fatalf("setup as the operator: %s", out)
	}
	// TLS with a client certificate is required: a client without one is
	// refused at the handshake.
	if nc, err := nats.Connect(url("operator", "op-pw"), nats.RootCAs(pki.ca), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Error("a client without a certificate connected")
	}
	ca, creds := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "tenants.json")
	sim := start(t, "graphsim", "--listen", "127.0.0.1:0", "--users", "20", "--groups", "3", "--ca-out", ca, "--credentials-out", creds)
	simURL := strings.Fields(strings.TrimPrefix(sim.waitLine(t, "graphsim listening on"), "graphsim listening on "))[0]
	seed := filepath.Join(dir, "pool.seed")
	if out, code := cli(t, "", "pool", "keygen", "--out", seed); code != 0 {
		t.Fatalf("keygen: %s", out)
	}
	w := start(t, append([]string{"worker", "--nats", url("worker-default", "wd-pw"), "--inbox-prefix", "_INBOX_wdefault", "--pool-key-file", seed, "--allow-endpoint-overrides"}, pki.tlsArgs()...)...)
	w.waitLine(t, "serving pool")
	var tenants []map[string]string
	b, _ := os.ReadFile(creds)
	_ = json.Unmarshal(b, &tenants)
	out, code := cli(t, tenants[0]["client_secret"], append([]string{"instance", "add", "acme", "--tenant-id", tenants[0]["tenant_id"], "--client-id", tenants[0]["client_id"],
		"--secret-file", "-", "--authority", simURL, "--graph-root", simURL, "--ca-file", ca, "--pool-key-file", seed, "--nats", url("operator", "op-pw"), "--sync-interval", "1h"}, pki.tlsArgs()...)...)
	if code != 0 || !strings.Contains(out, "syncing now (job ") {
		t.Fatalf("instance add as the operator: %s", out)
	}
	firstSync := strings.TrimSuffix(strings.TrimSpace(out[strings.Index(out, "(job ")+5:]), ")")

	// Tevyra, with its own inbox: reads the first sync's report, publishes an
	// action and reads its result.
	tnc, err := nats.Connect(url("tevyra", "tv-pw"), append(tlsOpts, nats.CustomInboxPrefix("_INBOX_tevyra"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer tnc.Close()
	tjs, _ := jetstream.New(tnc)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rep, err := worker.WaitResult(ctx, tjs, worker.Topology{}, "acme", jobs.ActionSync, firstSync)
	if err != nil || rep.Status != jobs.StatusSucceeded {
		t.Fatalf("the first sync, read by Tevyra: %+v %v\nworker:\n%s", rep, err, w.stderr)
	}
	job := `{"schema_version":1,"id":"roles-1","instance":"acme","action":"microsoft-365.disable_user","params":{"user":"nobody@contoso.com"}}`
	if _, err := tjs.Publish(ctx, "m365.jobs.default.acme.action.disable_user", []byte(job), jetstream.WithMsgID("roles-1")); err != nil {
		t.Fatalf("Tevyra publishes a job: %v", err)
	}
	res, err := worker.WaitResult(ctx, tjs, worker.Topology{}, "acme", jobs.ActionDisableUser, "roles-1")
	if err != nil || res.Error == nil || res.Error.Code != "user_not_found" {
		t.Fatalf("the action's result, read by Tevyra: %+v %v\nworker:\n%s", res, err, w.stderr)
	}

	// Refused: Tevyra reading buckets or deleting streams; the worker
	// deleting streams, publishing jobs or reading another pool's records.
	short := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 2*time.Second)
	}
	c1, f1 := short()
	defer f1()
	if kv, err := tjs.KeyValue(c1, "m365_instances"); err == nil {
		if _, err := kv.Get(c1, "default.acme"); err == nil {
			t.Error("Tevyra read an instance record")
		}
	}
	c2, f2 := short()
	defer f2()
	if err := tjs.DeleteStream(c2, "M365_FAILURES"); err == nil {
		t.Error("Tevyra deleted a stream")
	}
	wnc, err := nats.Connect(url("worker-default", "wd-pw"), append(tlsOpts, nats.CustomInboxPrefix("_INBOX_wdefault"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer wnc.Close()
	wjs, _ := jetstream.New(wnc)
	c3, f3 := short()
	defer f3()
	if err := wjs.DeleteStream(c3, "M365_JOBS"); err == nil {
		t.Error("the pool's worker deleted a stream")
	}
	c4, f4 := short()
	defer f4()
	if _, err := wjs.Publish(c4, "m365.jobs.default.acme.sync", []byte("{}"), jetstream.WithMsgID("forged")); err == nil {
		t.Error("the pool's worker published a job")
	}
	c5, f5 := short()
	defer f5()
	if kv, err := wjs.KeyValue(c5, "m365_instances"); err != nil {
		t.Errorf("the worker's own bucket: %v", err)
	} else if _, err := kv.Get(c5, "site-a.other"); err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("the pool's worker may read another pool's keys (%v)", err)
	}
}

// testPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate (ECDSA, valid for an hour) into dir, and points the
// M365_TLS_* variables roles.conf reads at them.
type testPKI struct{ ca, cert, key, clientCert, clientKey string }

func newTestPKI(t *testing.T, dir string) testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "m365 test CA"}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	issue := func(name string, serial int64, usage []x509.ExtKeyUsage) (string, string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Minute),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: usage, KeyUsage: x509.KeyUsageDigitalSignature,
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(k)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kb)
	}
	p := testPKI{ca: write("ca.pem", "CERTIFICATE", caDER)}
	p.cert, p.key = issue("server", 2, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})
	p.clientCert, p.clientKey = issue("client", 3, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	t.Setenv("M365_TLS_CERT", p.cert)
	t.Setenv("M365_TLS_KEY", p.key)
	t.Setenv("M365_TLS_CA", p.ca)
	return p
}

// tlsArgs are the CLI flags of a client with the test PKI's certificate.
func (p testPKI) tlsArgs() []string {
	return []string{"--tls-ca", p.ca, "--tls-cert", p.clientCert, "--tls-key", p.clientKey}
}

package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/tevyra/m365-worker/internal/pki"
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
	// Each service is its role, over TLS with a client certificate.
	if w.Command[0] != "worker" || w.Environment["M365_NATS"] != "tls://worker-default:${M365_WORKER_DEFAULT_PASSWORD}@nats:4222" ||
		w.Environment["M365_INBOX_PREFIX"] != "_INBOX_wdefault" || w.Environment["M365_TLS_CERT"] == "" {
		t.Errorf("worker service: %+v", w)
	}
	if _, err := os.Stat(filepath.Join("../..", w.Build.Context, w.Build.Dockerfile)); err != nil {
		t.Errorf("worker build: %v", err)
	}
	su, ok := c.Services["setup"]
	if !ok || len(su.Command) == 0 || su.Command[0] != "setup" || su.Environment["M365_NATS"] != "tls://operator:${M365_OPERATOR_PASSWORD}@nats:4222" {
		t.Errorf("setup service: %+v", su)
	}
	if !strings.Contains(string(b), "condition: service_completed_successfully") {
		t.Error("the workers do not wait for setup to complete")
	}
	// Every M365_* variable the compose file sets is one the CLI reads.
	help := cliSources(t)
	if nt, ok := c.Services["notify"]; !ok || len(nt.Command) == 0 || nt.Command[0] != "notify" || !strings.HasPrefix(nt.Environment["M365_NATS"], "tls://notify:") {
		t.Errorf("notify service: %+v", nt)
	}
	for _, svc := range []string{"worker", "setup", "notify"} {
		for k := range c.Services[svc].Environment {
			if k == "M365_POOL_KEY" {
				continue // read from the environment only, never a flag
			}
			flagName := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k, "M365_")), "_", "-")
			if !strings.Contains(help, `"`+flagName+`"`) {
				t.Errorf("compose's %s sets %s but there is no --%s flag", svc, k, flagName)
			}
		}
	}
	n := c.Services["nats"]
	if n.Environment["NATS_TLS_CA"] == "" || !strings.HasPrefix(n.Environment["M365_OPERATOR_PASSWORD"], "${M365_OPERATOR_PASSWORD:?") {
		t.Errorf("nats service: TLS files and the role passwords come from the environment: %+v", n.Environment)
	}
	if !strings.HasPrefix(n.Image, "nats:2.1") {
		t.Errorf("nats image %q", n.Image)
	}
	for _, v := range n.Volumes {
		host, _, _ := strings.Cut(v, ":")
		if strings.HasPrefix(host, "./") && host != "./tls" { // ./tls is made by m365-worker tls init
			if _, err := os.Stat(filepath.Join("../..", host)); err != nil {
				t.Errorf("nats volume %s: %v", v, err)
			}
		}
	}
}

func TestNATSConfigs(t *testing.T) {
	t.Setenv("NATS_SERVER_NAME", "nats-0")
	t.Setenv("M365_HUB_LEAF_URL", "tls://leaf-site-a:pw@hub.example:7422")
	rolePasswords(t)
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
		// TLS everywhere: clients (with certificates), routes and leaf
		// connections, both ends.
		switch filepath.Base(f) {
		case "leaf.conf":
			if r := opts.LeafNode.Remotes; len(r) == 1 && (r[0].TLSConfig == nil || len(r[0].TLSConfig.Certificates) != 1 || r[0].LocalAccount != "SITE") {
				t.Errorf("%s: the remote needs TLS with a client certificate and the SITE account", f)
			}
		default:
			if opts.TLSConfig == nil || opts.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert || opts.LeafNode.TLSConfig == nil || opts.LeafNode.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
				t.Errorf("%s: client and leaf connections need TLS with verified client certificates", f)
			}
			if len(opts.Accounts) < 2 || len(opts.Users) < 5 {
				t.Errorf("%s: %d accounts, %d users: the roles of accounts.inc are missing", f, len(opts.Accounts), len(opts.Users))
			}
			if filepath.Base(f) == "cluster.conf" && opts.Cluster.TLSConfig == nil {
				t.Errorf("%s: routes need TLS", f)
			}
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
	return loadConfFrom(t, "../../deploy/nats", file, env)
}

// loadConfFrom is loadConf for a copy of the configs in dir.
func loadConfFrom(t *testing.T, dir, file string, env map[string]string) *server.Options {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile(filepath.Join(dir, file))
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
func countingWorker(t *testing.T, url, pool string, replicas int, handled *atomic.Int64, opts ...nats.Option) {
	t.Helper()
	nc, err := nats.Connect(url, append(opts, nats.MaxReconnects(-1))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
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
	for err != nil && strings.Contains(err.Error(), "no responders") && ctx.Err() == nil {
		// Right after a node went down the JetStream meta leader may still
		// be elected (the stream leaders the caller waited for are not
		// enough to create a consumer): ask again, as a client would.
		t.Logf("wait for %s: %v", id, err)
		time.Sleep(200 * time.Millisecond)
		res, err = worker.WaitResult(ctx, js, worker.Topology{}, "acme", jobs.ActionDisableUser, id)
	}
	if err != nil || res.Status != jobs.StatusSucceeded {
		t.Fatalf("result of %s: %+v %v", id, res, err)
	}
}

// The cluster config, as three real servers on loopback: the streams are
// created R3 and jobs still run after a node goes down.
func TestNATSClusterFromConfig(t *testing.T) {
	pki := newTestPKI(t, t.TempDir())
	rolePasswords(t)
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
	// Every connection is TLS with a client certificate, routes included.
	tlsOpts := []nats.Option{nats.RootCAs(pki.ca), nats.ClientCert(pki.clientCert, pki.clientKey)}
	nc, err := nats.Connect(strings.Join(urls, ","), append(tlsOpts, nats.MaxReconnects(-1), nats.UserInfo("operator", "operator-pw"))...)
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
	countingWorker(t, strings.Join(urls, ","), "default", 3, &handled, append(tlsOpts, nats.UserInfo("operator", "operator-pw"))...)
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

// readK8s renders the kustomize base in-process with the kustomize API (what
// kubectl kustomize runs), so the test needs no kubectl.
func readK8s(t *testing.T) []k8sDoc {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), "../../deploy/k8s")
	if err != nil {
		t.Fatalf("kustomize deploy/k8s: %v", err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatalf("kustomize deploy/k8s: %v", err)
	}
	var docs []k8sDoc
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var d k8sDoc
		if err := dec.Decode(&d); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("rendered deploy/k8s: %v", err)
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
	var policies []string
	var notifyDeploy *k8sDoc
	ingress := false
	{
		for _, d := range readK8s(t) {
			d := d
			switch {
			case d.Kind == "NetworkPolicy":
				policies = append(policies, d.Metadata.Name)
			case d.Kind == "Deployment" && d.Metadata.Name == "m365-notify":
				notifyDeploy = &d
			case d.Kind == "Ingress" && d.Metadata.Name == "m365-notify":
				ingress = true
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
	for key, file := range map[string]string{"nats.conf": "cluster.conf", "accounts.inc": "accounts.inc"} {
		conf, _ := os.ReadFile("../../deploy/nats/" + file)
		if cm.Data[key] != string(conf) {
			t.Errorf("deploy/k8s/nats.yaml's ConfigMap key %s differs from deploy/nats/%s", key, file)
		}
	}
	// The receiver: its own role, an ingress, flags that exist.
	if notifyDeploy == nil || !ingress {
		t.Fatalf("the notification receiver: deployment %v, ingress %v", notifyDeploy != nil, ingress)
	}
	nc := notifyDeploy.Spec.Template.Spec.Containers[0]
	if len(nc.Args) == 0 || nc.Args[0] != "notify" {
		t.Errorf("receiver args %v", nc.Args)
	}
	for _, e := range nc.Env {
		flagName := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(e.Name, "M365_")), "_", "-")
		if strings.HasPrefix(e.Name, "M365_") && !strings.Contains(cliSources(t), `"`+flagName+`"`) {
			t.Errorf("notify.yaml sets %s but there is no --%s flag", e.Name, flagName)
		}
		if e.Name == "M365_NATS" && !strings.HasPrefix(e.Value, "tls://notify:$(NATS_PASSWORD)@") {
			t.Errorf("the receiver connects as %q", e.Value)
		}
	}
	if !slices.Contains(policies, "nats") || !slices.Contains(policies, "m365-worker") || !slices.Contains(policies, "m365-notify") {
		t.Errorf("network policies %v: the monitoring port must be reachable by the monitoring role only", policies)
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
		if !strings.HasPrefix(e.Name, "M365_") {
			continue
		}
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
		if e.Name == "M365_POOL_KEY" || e.Name == "NATS_PASSWORD" {
			if e.ValueFrom == nil {
				t.Errorf("%s must come from a Secret, not a plain value", e.Name)
			}
			continue
		}
		if e.Name == "M365_NATS" && (!strings.HasPrefix(e.Value, "tls://worker-default:$(NATS_PASSWORD)@") || strings.Contains(e.Value, "nats://")) {
			t.Errorf("the workers connect as %q: want TLS as worker-default with the password from its Secret", e.Value)
		}
		if e.Name == "GOMEMLIMIT" { // the Go runtime's, from the container's memory limit
			if v, _ := e.ValueFrom.(map[string]any); fmt.Sprint(v["resourceFieldRef"]) != "map[resource:limits.memory]" {
				t.Errorf("GOMEMLIMIT must come from the container's memory limit: %+v", e.ValueFrom)
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

// The roles of deploy/nats/single.conf (accounts.inc) on a real server: the operator sets up
// and adds an instance; the pool's worker, with only its permissions and its
// own inbox, syncs the tenant and runs an action; Tevyra publishes the job
// and reads the results. What a role must not do is refused.
func TestRolesFromConfig(t *testing.T) {
	dir := t.TempDir()
	pki := newTestPKI(t, t.TempDir())
	rolePasswords(t)
	opts := loadConf(t, "single.conf", nil)
	srv := startServer(t, opts)
	addr := srv.Addr().String()
	url := func(user, pw string) string { return "tls://" + user + ":" + pw + "@" + addr }
	tlsOpts := []nats.Option{nats.RootCAs(pki.ca), nats.ClientCert(pki.clientCert, pki.clientKey)}
	if out, code := cli(t, "", append([]string{"setup", "--nats", url("operator", "operator-pw")}, pki.tlsArgs()...)...); code != 0 {
		t.Fatalf("setup as the operator: %s", out)
	}
	// TLS with a client certificate is required: a client without one is
	// refused at the handshake.
	if nc, err := nats.Connect(url("operator", "operator-pw"), nats.RootCAs(pki.ca), nats.MaxReconnects(0)); err == nil {
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
	w := start(t, append([]string{"worker", "--nats", url("worker-default", "worker-default-pw"), "--inbox-prefix", "_INBOX_wdefault", "--pool-key-file", seed, "--allow-endpoint-overrides"}, pki.tlsArgs()...)...)
	w.waitLine(t, "serving pool")
	var tenants []map[string]string
	b, _ := os.ReadFile(creds)
	_ = json.Unmarshal(b, &tenants)
	out, code := cli(t, tenants[0]["client_secret"], append([]string{"instance", "add", "acme", "--tenant-id", tenants[0]["tenant_id"], "--client-id", tenants[0]["client_id"],
		"--secret-file", "-", "--authority", simURL, "--graph-root", simURL, "--ca-file", ca, "--pool-key-file", seed, "--nats", url("operator", "operator-pw"), "--sync-interval", "1h"}, pki.tlsArgs()...)...)
	if code != 0 || !strings.Contains(out, "syncing now (job ") {
		t.Fatalf("instance add as the operator: %s", out)
	}
	firstSync := strings.TrimSuffix(strings.TrimSpace(out[strings.Index(out, "(job ")+5:]), ")")

	// Tevyra, with its own inbox: reads the first sync's report, publishes an
	// action and reads its result.
	tnc, err := nats.Connect(url("tevyra", "tevyra-pw"), append(tlsOpts, nats.CustomInboxPrefix("_INBOX_tevyra"))...)
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
	c2b, f2b := short()
	defer f2b()
	if _, err := tjs.Consumer(c2b, "M365_JOBS", "m365_pool_default"); err == nil {
		t.Error("Tevyra bound a pool's consumer")
	}
	wnc, err := nats.Connect(url("worker-default", "worker-default-pw"), append(tlsOpts, nats.CustomInboxPrefix("_INBOX_wdefault"))...)
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
	scanStateAsOthers(t, wjs, map[string]*nats.Conn{"Tevyra": tnc})

	// The notification receiver: triggers only.
	nnc, err := nats.Connect(url("notify", "notify-pw"), append(tlsOpts, nats.CustomInboxPrefix("_INBOX_notify"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nnc.Close()
	njs, _ := jetstream.New(nnc)
	if _, err := njs.Publish(ctx, "m365.jobs.default.acme.notified", []byte(`{"schema_version":1,"id":"notified-acme","instance":"acme","action":"sync","requested_by":"graph-notification"}`)); err != nil {
		t.Errorf("the receiver publishes a trigger: %v", err)
	}
	for _, subj := range []string{"m365.jobs.default.acme.sync", "m365.jobs.default.acme.action.reset_password", "m365.results.acme.actions"} {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if _, err := njs.Publish(c, subj, []byte("{}")); err == nil {
			t.Errorf("the receiver published on %s", subj)
		}
		cancel()
	}

	// Monitoring: the pool's backlog, never a job or a record.
	violations := make(chan string, 16)
	mnc, err := nats.Connect(url("monitor", "monitor-pw"), append(tlsOpts, nats.CustomInboxPrefix("_INBOX_monitor"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				violations <- err.Error()
			}
		}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer mnc.Close()
	mjs, _ := jetstream.New(mnc)
	mc, err := mjs.Consumer(ctx, "M365_JOBS", "m365_pool_default")
	if err != nil {
		t.Fatalf("monitoring reads the pool consumer: %v", err)
	}
	if info, err := mc.Info(ctx); err != nil || info.Delivered.Stream == 0 {
		t.Errorf("monitoring sees the pool's progress: %+v %v", info, err)
	}
	if b, err := mc.Fetch(1, jetstream.FetchMaxWait(time.Second)); err == nil {
		for range b.Messages() {
			t.Error("monitoring fetched a job")
		}
	}
	select {
	case v := <-violations:
		if !strings.Contains(v, "CONSUMER.MSG.NEXT") {
			t.Errorf("monitoring's pull refused with %q", v)
		}
	case <-ctx.Done():
		t.Error("monitoring may pull from a pool consumer: no permission violation")
	}
	scanStateAsOthers(t, wjs, map[string]*nats.Conn{"monitoring": mnc})
	c6, f6 := short()
	defer f6()
	if st, err := mjs.Stream(c6, "M365_JOBS"); err != nil {
		t.Errorf("monitoring reads stream information: %v", err)
	} else if _, err := st.GetMsg(c6, 1); err == nil {
		t.Error("monitoring read a job")
	}
	c7, f7 := short()
	defer f7()
	if kv, err := mjs.KeyValue(c7, "m365_instances"); err == nil {
		if _, err := kv.Get(c7, "default.acme"); err == nil {
			t.Error("monitoring read an instance record")
		}
	}
}

// testPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate (as m365-worker tls init does) into dir, and points the
// NATS_TLS_* variables the NATS configs read at them.
type testPKI struct{ ca, cert, key, clientCert, clientKey string }

func newTestPKI(t *testing.T, dir string) testPKI {
	t.Helper()
	f, err := pki.Init(dir, []string{"localhost", "127.0.0.1"}, []string{"client"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := testPKI{ca: f.CA, cert: f.ServerCert, key: f.ServerKey, clientCert: f.Clients["client"][0], clientKey: f.Clients["client"][1]}
	t.Setenv("NATS_TLS_CERT", p.cert)
	t.Setenv("NATS_TLS_KEY", p.key)
	t.Setenv("NATS_TLS_CA", p.ca)
	return p
}

// tlsArgs are the CLI flags of a client with the test PKI's certificate.
func (p testPKI) tlsArgs() []string {
	return []string{"--tls-ca", p.ca, "--tls-cert", p.clientCert, "--tls-key", p.clientKey}
}

// scanStateAsOthers checks the state scans' permissions (internal/state
// scan.go): the pool's worker pulls its own instance's states from an
// ordered consumer, may not create one over another pool's keys, and no one
// in others may pull from the worker's consumer.
func scanStateAsOthers(t *testing.T, wjs jetstream.JetStream, others map[string]*nats.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := 0
	scan := func(filter string) (jetstream.Consumer, error) { // as internal/state's scan does
		n++
		return wjs.CreateConsumer(ctx, "KV_m365_state", jetstream.ConsumerConfig{Name: fmt.Sprintf("scan_test%d", n), FilterSubject: filter,
			DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy, AckPolicy: jetstream.AckNonePolicy, HeadersOnly: true, InactiveThreshold: time.Minute})
	}
	cons, err := scan("$KV.m365_state.a.default.acme.u.*")
	if err != nil {
		t.Fatalf("the pool's worker scans its instance's states: %v", err)
	}
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for range b.Messages() {
		got++
	}
	if got != 1 {
		t.Fatalf("the pool's worker pulls its instance's states: %d messages (%v)", got, b.Error())
	}
	if _, err := scan("$KV.m365_state.a.site-a.acme.u.*"); err == nil {
		t.Error("the pool's worker scans another pool's states")
	}
	next := "$JS.API.CONSUMER.MSG.NEXT.KV_m365_state." + cons.CachedInfo().Name
	for who, nc := range others {
		if m, err := nc.Request(next, []byte(`{"batch":1,"no_wait":true}`), time.Second); err == nil {
			t.Errorf("%s pulled from the worker's state scan: %q %q", who, m.Subject, m.Data)
		}
	}
}

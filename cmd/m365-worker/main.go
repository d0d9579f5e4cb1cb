// Command m365-worker runs the Microsoft 365 worker pool of Tevyra.
//
//	m365-worker run      all-in-one: embedded JetStream + workers (the default demo)
//	m365-worker worker   a worker that joins an existing NATS system
//
// Every flag has an M365_* environment variable equivalent (--data-dir is
// M365_DATA_DIR); a flag given on the command line wins.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/internal/console"
	"github.com/tevyra/m365-worker/internal/heapfloor"
	"github.com/tevyra/m365-worker/internal/httpserve"
	"github.com/tevyra/m365-worker/internal/tracing"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

const usage = `m365-worker: the Microsoft 365 worker pool of Tevyra

Usage:
  m365-worker <command> [flags]

Commands:
  run       start an embedded JetStream server and the workers (no configuration needed)
  worker    run workers against an existing NATS system (--nats), set up by 'setup'
  setup     create or update the streams, buckets and pool consumers (the operator's step)
  graphsim  serve the Microsoft Graph simulator (HTTPS, seeded tenants) for tests and demos
  pool      keygen: a curve key pair for sealing a pool's secrets
  tls       init: a development CA and certificates for the NATS configs of deploy/nats
  instance  add | update | remove | list | show | test: the tenants the pool serves
  job       submit: publish a job, optionally wait for its result
  failed    list | show | replay: jobs that failed for good
  status    instances (last sync, indicators, credentials, next tick) and pools (workers, backlog)
  notify    the HTTPS receiver of Graph change notifications (triggers incremental syncs)
  console   the operator console in a browser (OpenID Connect sign-in; run serves it on loopback too)
  bench     sync | actions | chaos: the benchmarks, against the built-in simulator
  version   print the version

Run 'm365-worker <command> --help' for the flags of a command.
Every flag can also be set through its M365_* environment variable, e.g. --data-dir as M365_DATA_DIR.
`

var version = "0.1.0-dev"

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer startProfile(args[0], stderr)()
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(ctx, args[1:], stdout, stderr)
	case "worker":
		err = cmdWorker(ctx, args[1:], stdout, stderr)
	case "setup":
		err = cmdSetup(ctx, args[1:], stdout, stderr)
	case "graphsim":
		err = cmdGraphsim(ctx, args[1:], stdout, stderr)
	case "pool":
		err = cmdPool(args[1:], stdout, stderr)
	case "tls":
		err = cmdTLS(args[1:], stdout, stderr)
	case "instance":
		err = cmdInstance(ctx, args[1:], stdout, stderr)
	case "job":
		err = cmdJob(ctx, args[1:], stdout, stderr)
	case "failed":
		err = cmdFailed(ctx, args[1:], stdout, stderr)
	case "status":
		err = cmdStatus(ctx, args[1:], stdout, stderr)
	case "notify":
		err = cmdNotify(ctx, args[1:], stdout, stderr)
	case "console":
		err = cmdConsole(ctx, args[1:], stdout, stderr)
	case "bench":
		err = cmdBench(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "m365-worker", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "m365-worker: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if errors.Is(err, errSilent) {
		return 1
	}
	if err != nil {
		var ue usageError
		fmt.Fprintln(stderr, "m365-worker:", err)
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

type usageError struct{ error }

// flagSet is a flag.FlagSet whose flags default to their M365_* variables.
type flagSet struct {
	*flag.FlagSet
	envErr []error
}

// positional names the arguments a command takes besides its flags.
var positional = map[string]string{
	"instance add": " ID", "instance update": " ID", "instance remove": " ID", "instance show": " ID", "instance test": " ID",
	"failed show": " JOB_ID", "failed replay": " [JOB_ID]",
}

func newFlagSet(name, summary string, stderr io.Writer) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: m365-worker %s [flags]\n\n%s\n\nFlags (environment variable in brackets):\n", name+positional[name], summary)
		fs.PrintDefaults()
	}
	return &flagSet{FlagSet: fs}
}

func envName(flagName string) string {
	return "M365_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (f *flagSet) String(name, def, help string) *string {
	if v, ok := os.LookupEnv(envName(name)); ok {
		def = v
	}
	return f.FlagSet.String(name, def, help+" ["+envName(name)+"]")
}

func (f *flagSet) Int(name string, def int, help string) *int {
	if v, ok := os.LookupEnv(envName(name)); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			f.envErr = append(f.envErr, fmt.Errorf("%s=%q is not a number", envName(name), v))
		}
		def = n
	}
	return f.FlagSet.Int(name, def, help+" ["+envName(name)+"]")
}

func (f *flagSet) Bool(name string, def bool, help string) *bool {
	if v, ok := os.LookupEnv(envName(name)); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			f.envErr = append(f.envErr, fmt.Errorf("%s=%q: use true or false", envName(name), v))
		}
		def = b
	}
	return f.FlagSet.Bool(name, def, help+" ["+envName(name)+"]")
}

func (f *flagSet) Float64(name string, def float64, help string) *float64 {
	if v, ok := os.LookupEnv(envName(name)); ok {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil {
			f.envErr = append(f.envErr, fmt.Errorf("%s=%q is not a number", envName(name), v))
		}
		def = x
	}
	return f.FlagSet.Float64(name, def, help+" ["+envName(name)+"]")
}

func (f *flagSet) Duration(name string, def time.Duration, help string) *time.Duration {
	if v, ok := os.LookupEnv(envName(name)); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			f.envErr = append(f.envErr, fmt.Errorf("%s=%q is not a duration such as 30s", envName(name), v))
		}
		def = d
	}
	return f.FlagSet.Duration(name, def, help+" ["+envName(name)+"]")
}

func (f *flagSet) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if f.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", f.Arg(0))}
	}
	if len(f.envErr) > 0 {
		return usageError{errors.Join(f.envErr...)}
	}
	return nil
}

// poolFlags are the flags every worker-running command shares.
type poolFlags struct {
	pool, logLevel, logFormat, prefix, poolKeyFile, httpListen *string
	jsDomain, jsAPIPrefix                                      *string
	notifyURL, notifyKeyFile, federatedTokenFile, federatedMI  *string
	notifyBackstop, notifySpacing                              *time.Duration
	allowOverrides                                             *bool
	concurrency, replicas, share, syncReads, gcHeadroom        *int
	ackWait, shutdown                                          *time.Duration
}

func addPoolFlags(fs *flagSet) *poolFlags {
	return &poolFlags{
		pool:               fs.String("pool", jobs.DefaultPool, "worker pool to serve"),
		concurrency:        fs.Int("concurrency", worker.DefaultConcurrency, "jobs handled at once by this worker (they mostly wait on Graph: the bound is for memory, not the CPU)"),
		share:              fs.Int("instance-share", 0, "slots each instance is sure of: past it an instance borrows free ones while this many stay free, so one tenant's burst leaves slots for the others (default: 32, at most a quarter of the concurrency)"),
		syncReads:          fs.Int("sync-reads", handlers.DefaultParallelReads, "parallel Graph reads (user segments, group chunks) shared by every full round this worker runs at once, each holding a page or two in memory: more start several large tenants' first rounds sooner, at the price of memory (one large tenant's round uses 20)"),
		gcHeadroom:         fs.Int("gc-headroom-mib", 64, "let the heap grow by at least this many MiB between garbage collections (GOGC % of the live heap when that is more; 0: GOGC alone): a worker running actions keeps little live and would otherwise spend an eighth of its CPU collecting"),
		ackWait:            fs.Duration("ack-wait", 60*time.Second, "redeliver a job not heartbeated for this long"),
		shutdown:           fs.Duration("shutdown-timeout", 30*time.Second, "on SIGTERM, let running jobs finish for this long"),
		logLevel:           fs.String("log-level", "info", "debug, info, warn or error"),
		logFormat:          fs.String("log-format", "text", "text or json"),
		prefix:             fs.String("prefix", jobs.DefaultPrefix, "subject prefix of the deployment"),
		replicas:           fs.Int("replicas", 1, "stream and bucket replicas (3 in a cluster)"),
		poolKeyFile:        fs.String("pool-key-file", "", "file with the pool's curve seed (SX...), which opens sealed secrets; or set M365_POOL_KEY"),
		httpListen:         fs.String("http-listen", "", "serve /metrics (Prometheus), /healthz and /readyz here, e.g. 127.0.0.1:9465 (off when empty)"),
		jsDomain:           fs.String("js-domain", "", "JetStream domain of the hub, for workers on a leaf node in the hub's account"),
		jsAPIPrefix:        fs.String("js-api-prefix", "", "JetStream API prefix the site's account imports the hub's services under (JSHUB.API for deploy/nats/leaf.conf)"),
		notifyURL:          fs.String("notify-url", "", "where Graph reaches the notification receiver (m365-worker notify), e.g. https://hooks.example.com/graph: the pool's instances then get change-notification subscriptions (docs/notify.md)"),
		notifyKeyFile:      fs.String("notify-key-file", "", "the pool's notification key (m365-worker pool notify-key), which derives each instance's clientState"),
		notifyBackstop:     fs.Duration("notify-backstop", 30*time.Minute, "while an instance's subscriptions are healthy, its scheduled ticks run a round only this often"),
		notifySpacing:      fs.Duration("notify-spacing", 30*time.Second, "the least time between two rounds of an instance that notification triggers start; a trigger within it waits for its end"),
		federatedTokenFile: fs.String("federated-token-file", os.Getenv("AZURE_FEDERATED_TOKEN_FILE"), "the pool's federated token (a projected service-account token, audience api://AzureADTokenExchange), the client assertion of instances with a federated credential; default: AZURE_FEDERATED_TOKEN_FILE as the workload identity webhook sets it"),
		federatedMI:        fs.String("federated-managed-identity", "", "take the pool's federated token from the managed identity of the machine it runs on (App Service, Azure Arc, a VM): system, or a user-assigned identity's client id; instead of --federated-token-file"),
		allowOverrides: fs.Bool("allow-endpoint-overrides", false, "use the authority, graph_root and ca_pem of instance records (a Graph simulator or test tenant); "+
			"without it such an instance's jobs fail with endpoint_override_refused (national clouds need only cloud; the demo of run turns it on)"),
	}
}

// openNote says where an open embedded server can be reached from.
func openNote(host string) string {
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return ", reachable from this machine only"
	}
	return ", and reachable from the network on " + host
}

// newJetStream opens JetStream on nc, in domain or under apiPrefix when one
// is given: a worker on a leaf node reaches the hub's streams that way (a
// site's own account imports them under an API prefix, deploy/nats).
func newJetStream(nc *nats.Conn, domain, apiPrefix string) (jetstream.JetStream, error) {
	switch {
	case domain != "" && apiPrefix != "":
		return nil, usageError{errors.New("--js-domain and --js-api-prefix exclude each other")}
	case domain != "":
		return jetstream.NewWithDomain(nc, domain)
	case apiPrefix != "":
		return jetstream.NewWithAPIPrefix(nc, apiPrefix)
	}
	return jetstream.New(nc)
}

func (p *poolFlags) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*p.logLevel)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level %q: use debug, info, warn or error", *p.logLevel)}
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch *p.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usageError{fmt.Errorf("--log-format %q: use text or json", *p.logFormat)}
}

// poolKey reads the pool's curve key from M365_POOL_KEY or --pool-key-file:
// the first of poolKeys.
func (p *poolFlags) poolKey() (nkeys.KeyPair, error) {
	keys, err := p.poolKeys()
	if err != nil || len(keys) == 0 {
		return nil, err
	}
	return keys[0], nil
}

// poolKeys reads the pool's curve keys from M365_POOL_KEY or
// --pool-key-file: seeds separated by commas or white space, the current
// key first, then keys being rotated out (they still open what was sealed
// to them).
func (p *poolFlags) poolKeys() ([]nkeys.KeyPair, error) {
	seeds := os.Getenv("M365_POOL_KEY")
	// Read once, then gone from the environment: child processes (a proxy,
	// a shell a handler might run) do not inherit the pool's private key.
	_ = os.Unsetenv("M365_POOL_KEY")
	if *p.poolKeyFile != "" {
		b, err := os.ReadFile(*p.poolKeyFile)
		if err != nil {
			return nil, fmt.Errorf("read pool key: %w", err)
		}
		seeds = string(b)
	}
	var keys []nkeys.KeyPair
	for i, seed := range strings.FieldsFunc(seeds, func(r rune) bool { return r == ',' || unicode.IsSpace(r) }) {
		kp, err := nkeys.FromCurveSeed([]byte(seed))
		if err != nil {
			return nil, fmt.Errorf("pool key %d is not a curve seed (SX...): %w", i+1, err)
		}
		keys = append(keys, kp)
	}
	return keys, nil
}

// notifyConfig is the change-notification configuration of the flags.
func (p *poolFlags) notifyConfig() (handlers.NotifyConfig, error) {
	if *p.notifyURL == "" {
		return handlers.NotifyConfig{}, nil
	}
	u, err := url.Parse(*p.notifyURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return handlers.NotifyConfig{}, usageError{fmt.Errorf("--notify-url %q: Graph only notifies https URLs", *p.notifyURL)}
	}
	if *p.notifyKeyFile == "" {
		return handlers.NotifyConfig{}, usageError{errors.New("--notify-url needs --notify-key-file (m365-worker pool notify-key)")}
	}
	b, err := os.ReadFile(*p.notifyKeyFile)
	if err != nil {
		return handlers.NotifyConfig{}, err
	}
	key, err := base64.RawURLEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != 32 {
		return handlers.NotifyConfig{}, fmt.Errorf("%s is not a pool notification key (m365-worker pool notify-key writes one)", *p.notifyKeyFile)
	}
	return handlers.NotifyConfig{BaseURL: *p.notifyURL, PoolKey: key, Backstop: *p.notifyBackstop}, nil
}

// setupTopology creates or updates the streams, buckets and the pool's
// consumer: run is operator and worker in one process.
func setupTopology(ctx context.Context, js jetstream.JetStream, p *poolFlags) (worker.Topology, error) {
	topo := worker.Topology{Subjects: jobs.Subjects{Prefix: *p.prefix}, Replicas: *p.replicas}
	setupCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := worker.SetupWith(setupCtx, js, topo, worker.SetupOptions{Pools: []string{*p.pool}, AckWait: *p.ackWait}); err != nil {
		return topo, fmt.Errorf("set up streams and buckets: %w", err)
	}
	if err := console.EnsureAuditStream(setupCtx, js, topo, *p.replicas); err != nil {
		return topo, fmt.Errorf("set up the console's audit stream: %w", err)
	}
	return topo, nil
}

// runPool runs one worker with every handler until ctx ends; with statusOut
// it prints a status line whenever the counts change.
// keys are the pool's keys, the current one first (poolKeys).
func runPool(ctx context.Context, js jetstream.JetStream, topo worker.Topology, p *poolFlags, keys []nkeys.KeyPair, log *slog.Logger, statusOut io.Writer, manage bool) error {
	var key nkeys.KeyPair
	if len(keys) > 0 {
		key = keys[0]
	}
	// Traces from the OTEL_* environment (docs/operations.md): nothing is
	// exported unless configured; spans not yet sent are flushed on exit.
	traces, err := tracing.Setup(ctx, "m365-worker", version, log)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = traces.Shutdown(sctx)
	}()
	if *p.gcHeadroom > 0 {
		defer heapfloor.Start(uint64(*p.gcHeadroom) << 20).Stop()
	}
	live := worker.WatchLiveWorkers(ctx, js, topo, *p.pool)
	graph := graphclient.NewPool(graphclient.PoolConfig{Workers: live, Logger: log, AllowEndpointOverrides: *p.allowOverrides, FederatedTokenFile: *p.federatedTokenFile, FederatedManagedIdentity: *p.federatedMI})
	reg := worker.Registry{}
	notifyCfg, err := p.notifyConfig()
	if err != nil {
		return err
	}
	syncer, err := handlers.NewSyncer(ctx, js, handlers.SyncConfig{Topology: topo, Graph: graph, Notify: notifyCfg, ParallelReads: *p.syncReads, Logger: log})
	if err != nil {
		return err
	}
	syncer.Register(reg)
	actions, err := handlers.NewActions(ctx, js, handlers.ActionsConfig{Topology: topo, Graph: graph, Logger: log})
	if err != nil {
		return err
	}
	actions.Register(reg)
	w, err := worker.New(ctx, js, topo, worker.Config{
		Subjects: topo.Subjects, Pool: *p.pool, Concurrency: *p.concurrency, InstanceShare: *p.share, AckWait: *p.ackWait,
		ShutdownTimeout: *p.shutdown, NotifySpacing: *p.notifySpacing, PoolKey: key, PreviousPoolKeys: keys[min(1, len(keys)):], Logger: log, ManageConsumer: manage,
		OnInstanceChange: func(id string, in *worker.Instance) {
			if in == nil {
				graph.Forget(id) // its client and opened secret
			}
		},
		OnInstanceRemoved: func(prev *worker.Instance) {
			go func() { // its change-notification subscriptions go with it
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
				defer cancel()
				if err := syncer.InstanceRemoved(rctx, *p.pool, prev, worker.OpenWith(keys)); err != nil {
					log.Warn("notify: could not delete a removed instance's subscriptions (they expire within 29 days)", "instance", prev.ID, "error", err)
				}
				graph.Forget(prev.ID)
			}()
		},
	}, reg)
	if err != nil {
		return err
	}
	obs := worker.NewObserver(w, js.Conn(), graphMetrics(graph), subscriptionMetrics(syncer.SubscriptionStats()), syncer.CredentialMetrics, syncer.ReadSlotMetrics, gcMetrics)
	svc, err := obs.Micro(version)
	if err != nil {
		return fmt.Errorf("register the NATS micro service: %w", err)
	}
	defer func() { _ = svc.Stop() }()
	if *p.httpListen != "" {
		l, err := net.Listen("tcp", *p.httpListen)
		if err != nil {
			return fmt.Errorf("--http-listen %s: %w", *p.httpListen, err)
		}
		srv := httpserve.Server(obs.Handler(), httpserve.Limits{}, log)
		go func() { _ = srv.Serve(httpserve.LimitListener(l, httpserve.Caps{Max: 32}, srv)) }()
		defer srv.Close()
		log.Info("metrics and health on http://" + l.Addr().String() + " (/metrics, /healthz, /readyz)")
	}
	if statusOut != nil {
		go statusLine(ctx, js, topo, w, graph, statusOut)
	}
	return w.Run(ctx)
}

// statusLine prints the worker's counts every 5 seconds when they changed.
func statusLine(ctx context.Context, js jetstream.JetStream, topo worker.Topology, w *worker.Worker, graph *graphclient.Pool, out io.Writer) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := w.Stats()
		var throttled, requests int64
		for _, g := range graph.Stats() {
			throttled += g.Throttled
			requests += g.Requests
		}
		line := fmt.Sprintf("status: %d jobs handled (%d succeeded, %d failed), %d in flight, %d Graph requests, %d throttled",
			s.Handled.Load(), s.Succeeded.Load(), s.Failed.Load(), w.InFlight(), requests, throttled)
		if running, err := readProgress(ctx, js, topo); err == nil {
			ids := make([]string, 0, len(running))
			for id := range running {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			for _, id := range ids {
				if p := running[id]; !p.Stale(time.Now()) {
					line += fmt.Sprintf("; syncing %s: %d users, %d groups read, %d/s", id, p.Users.Objects, p.Groups.Objects, p.PerSecond)
				}
			}
		}
		if line != last {
			fmt.Fprintln(out, line)
			last = line
		}
	}
}

// gcMetrics is the collector's GOGC now (raised while the live heap is
// below --gc-headroom-mib).
func gcMetrics() []worker.Metric {
	return []worker.Metric{{Name: "m365_gc_percent", Help: "GOGC now: the heap grows by this share of its live size before the next collection (raised while the live heap is small, --gc-headroom-mib).",
		Type: "gauge", Value: float64(heapfloor.Percent())}}
}

// graphMetrics exposes the Graph clients' counters by instance.
func graphMetrics(p *graphclient.Pool) worker.MetricsSource {
	return func() []worker.Metric {
		var ms []worker.Metric
		for inst, s := range p.Stats() {
			l := map[string]string{"instance": inst}
			ms = append(ms,
				worker.Metric{Name: "m365_graph_requests_total", Help: "Graph requests sent.", Type: "counter", Labels: l, Value: float64(s.Requests)},
				worker.Metric{Name: "m365_graph_resource_units_total", Help: "Resource units Graph charged.", Type: "counter", Labels: l, Value: float64(s.ResourceUnits)},
				worker.Metric{Name: "m365_graph_throttled_total", Help: "Throttled (429) responses.", Type: "counter", Labels: l, Value: float64(s.Throttled)},
				worker.Metric{Name: "m365_graph_retries_total", Help: "Requests retried.", Type: "counter", Labels: l, Value: float64(s.Retries)},
				worker.Metric{Name: "m365_graph_latency_seconds_total", Help: "Time spent in Graph requests.", Type: "counter", Labels: l, Value: s.Latency.Seconds()})
		}
		return ms
	}
}

// subscriptionMetrics are the change-notification subscriptions' counters.
func subscriptionMetrics(s *handlers.SubscriptionStats) worker.MetricsSource {
	return func() []worker.Metric {
		return []worker.Metric{
			{Name: "m365_subscriptions_created_total", Help: "Change-notification subscriptions created.", Type: "counter", Value: float64(s.Created.Load())},
			{Name: "m365_subscriptions_renewed_total", Help: "Change-notification subscriptions renewed (or reauthorized).", Type: "counter", Value: float64(s.Renewed.Load())},
			{Name: "m365_subscriptions_moved_total", Help: "Change-notification subscriptions made again under a new notification key (a master-key rotation).", Type: "counter", Value: float64(s.Moved.Load())},
			{Name: "m365_subscriptions_failures_total", Help: "Subscription creations or renewals that failed (the instance is polled meanwhile).", Type: "counter", Value: float64(s.Failed.Load())},
			{Name: "m365_backstop_skips_total", Help: "Scheduled ticks closed because notifications keep the instance fresh.", Type: "counter", Value: float64(s.BackstopSkips.Load())},
		}
	}
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("run", "Start an embedded NATS server with JetStream (file store under --data-dir,\nlistening on --nats-listen) and the worker pool. With --nats, join that NATS instead.", stderr)
	dataDir := fs.String("data-dir", "./data", "directory for JetStream's files")
	listen := fs.String("nats-listen", "127.0.0.1:4222", "host:port the embedded NATS listens on")
	natsURL := fs.String("nats", "", "join this NATS system instead of starting one")
	demo := fs.Bool("demo", true, "with the embedded NATS: start the Graph simulator with a demo tenant and an instance \"demo\" syncing it")
	graphsimListen := fs.String("graphsim-listen", "127.0.0.1:8443", "where the demo's Graph simulator listens")
	demoUsers := fs.Int("demo-users", 250, "users in the demo tenant")
	p := addPoolFlags(fs)
	cons := addRunConsoleFlags(fs)
	if err := fs.parse(args); err != nil {
		return err
	}
	log, err := p.logger(stderr)
	if err != nil {
		return err
	}
	url := *natsURL
	if url == "" {
		host, portStr, err := net.SplitHostPort(*listen)
		if err != nil {
			return usageError{fmt.Errorf("--nats-listen %q: want host:port", *listen)}
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return usageError{fmt.Errorf("--nats-listen %q: the port is not a number", *listen)}
		}
		storeDir := filepath.Join(*dataDir, "jetstream")
		if err := os.MkdirAll(storeDir, 0o700); err != nil {
			return fmt.Errorf("create data directory: %w", err)
		}
		srv, err := worker.StartEmbedded(worker.EmbeddedOptions{StoreDir: storeDir, Host: host, Port: port})
		if err != nil {
			return err
		}
		defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
		url = srv.ClientURL()
		abs, _ := filepath.Abs(storeDir)
		fmt.Fprintf(stdout, "NATS with JetStream listening on %s (data in %s)\n", url, abs)
		fmt.Fprintf(stdout, "It runs open: no users, no TLS%s. For production use deploy/nats (roles and TLS, docs/security.md).\n", openNote(host))
		fmt.Fprintf(stdout, "Look at it with the nats CLI:\n  nats --server %s stream ls\n  nats --server %s sub 'm365.results.>'\n", url, url)
	}
	nc, err := nats.Connect(url, nats.Name("m365-worker run"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	defer nc.Close()
	js, err := newJetStream(nc, *p.jsDomain, *p.jsAPIPrefix)
	if err != nil {
		return err
	}
	topo, err := setupTopology(ctx, js, p)
	if err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while starting: nothing to drain
		}
		return err
	}
	keys, err := p.poolKeys()
	if err != nil {
		return err
	}
	var demoSim *graphsim.Server
	if *natsURL == "" && *demo {
		if len(keys) == 0 {
			key, err := loadOrCreatePoolKey(filepath.Join(*dataDir, "pool.seed"))
			if err != nil {
				return err
			}
			keys = []nkeys.KeyPair{key}
		}
		*p.allowOverrides = true // the demo instance points at the simulator
		sim, stopDemo, err := startDemo(ctx, nc, js, topo, keys[0], *p.pool, *graphsimListen, *demoUsers, stdout)
		if err != nil {
			return err
		}
		defer stopDemo()
		demoSim = sim
	}
	if err := startRunConsole(ctx, js, topo, cons, demoSim, log, stdout); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Workers serving pool %q; Ctrl-C drains and exits.\n", *p.pool)
	return runPool(ctx, js, topo, p, keys, log, stdout, true)
}

func cmdWorker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("worker", "Run a worker of one pool against an existing NATS system.", stderr)
	natsURL := fs.String("nats", "", "NATS server URL(s), comma-separated (required)")
	creds := fs.String("creds", "", "NATS credentials file")
	tlsCA := fs.String("tls-ca", "", "CA file to verify the NATS servers")
	tlsCert := fs.String("tls-cert", "", "client certificate file for NATS")
	tlsKey := fs.String("tls-key", "", "client key file for NATS")
	inbox := fs.String("inbox-prefix", "", "the pool's own reply-subject prefix (e.g. _INBOX_wdefault), when NATS permissions give each role its own")
	ownStream := fs.Bool("own-jobs-stream", false, "the pool is a site pool with its own jobs stream (M365_JOBS_<pool>, made by setup --site-pools)")
	p := addPoolFlags(fs)
	if err := fs.parse(args); err != nil {
		return err
	}
	if *natsURL == "" {
		return usageError{errors.New("--nats (or M365_NATS) is required: the URL of the NATS system to join")}
	}
	log, err := p.logger(stderr)
	if err != nil {
		return err
	}
	// A worker started while NATS is down waits for it.
	opts := []nats.Option{nats.Name("m365-worker"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true)}
	if *creds != "" {
		opts = append(opts, nats.UserCredentials(*creds))
	}
	if *tlsCA != "" {
		opts = append(opts, nats.RootCAs(*tlsCA))
	}
	if *tlsCert != "" || *tlsKey != "" {
		opts = append(opts, nats.ClientCert(*tlsCert, *tlsKey))
	}
	if *inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(*inbox))
	}
	nc, err := nats.Connect(*natsURL, opts...)
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", *natsURL, err)
	}
	defer nc.Close()
	js, err := newJetStream(nc, *p.jsDomain, *p.jsAPIPrefix)
	if err != nil {
		return err
	}
	// A pool worker sets nothing up: it checks that the operator's setup
	// made what it needs, and says what is missing.
	topo := worker.Topology{Subjects: jobs.Subjects{Prefix: *p.prefix}, Replicas: *p.replicas}
	if *ownStream {
		topo.SitePools = []string{*p.pool}
	}
	keys, err := p.poolKeys()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Worker connected to %s, serving pool %q\n", nc.ConnectedUrlRedacted(), *p.pool)
	if err := worker.WaitSetUp(ctx, js, topo, *p.pool, log); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	return runPool(ctx, js, topo, p, keys, log, nil, false)
}

func readProgress(ctx context.Context, js jetstream.JetStream, topo worker.Topology) (map[string]handlers.SyncProgress, error) {
	store, err := worker.OpenState(ctx, js, topo)
	if err != nil {
		return nil, err
	}
	return handlers.ReadSyncProgress(ctx, store)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/tevyra/m365-worker/internal/bench"
	"github.com/tevyra/m365-worker/worker"
)

// cmdBench runs the benchmarks against the built-in simulator: JetStream and
// the simulator in this process, the workers as child processes of this
// binary.
func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub, rest, err := subcommand(args, "usage: m365-worker bench sync|actions|chaos|freshness|tenants|overhead|receiver|console [flags]\n", stderr)
	if err != nil {
		return err
	}
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	switch sub {
	case "chaos":
		return cmdBenchChaos(ctx, rest, stdout, stderr)
	case "freshness":
		return cmdBenchFreshness(ctx, bin, rest, stdout, stderr)
	case "tenants":
		return cmdBenchTenants(ctx, bin, rest, stdout, stderr)
	case "overhead":
		return cmdBenchOverhead(ctx, bin, rest, stdout, stderr)
	case "receiver":
		return cmdBenchReceiver(ctx, bin, rest, stdout, stderr)
	case "console":
		return cmdBenchConsole(ctx, rest, stdout, stderr)
	case "nats-server":
		return cmdBenchServer(ctx, rest, stdout, stderr)
	case "sync":
		fs := newFlagSet("bench sync", "Measure, in one run against the built-in Graph simulator (realistic latency, GRAPH.md §12;\nthrottling on): a full first round of a tenant, a plain sequential delta walk through\nthe SDK's page iterator, an incremental round after some objects changed, and the\nworker process's peak RSS (JetStream and the simulator run in this process).", stderr)
		users := fs.Int("users", 100000, "users in the tenant")
		groups := fs.Int("groups", 0, "groups in the tenant (default: users / 10)")
		noLatency := fs.Bool("no-latency", false, "turn the simulator's realistic latency off")
		skip := fs.Bool("skip-baseline", false, "skip the SDK page-iterator walk")
		changed := fs.Float64("changed-percent", 0.5, "share of the objects changed before the incremental round")
		output := fs.String("o", "text", "output: text or json")
		if err := fs.parse(rest); err != nil {
			return err
		}
		if *groups == 0 {
			*groups = *users / 10
		}
		r, err := bench.RunSync(ctx, bench.SyncOptions{Binary: bin, Users: *users, Groups: *groups, NoLatency: *noLatency, SkipBaseline: *skip,
			ChangedPercent: *changed, Log: stderr})
		if err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(stdout, r)
		}
		fmt.Fprintf(stdout, "tenant: %d users, %d groups; latency: %s\n", r.Users, r.Groups, r.Latency)
		fmt.Fprintf(stdout, "full first round:      %s (%d Graph requests, %d throttled)\n", r.Full.Round(time.Millisecond), r.FullRequests, r.FullThrottled)
		if r.SDKWalk > 0 {
			fmt.Fprintf(stdout, "SDK page-iterator walk: %s (reading only)\n", r.SDKWalk.Round(time.Millisecond))
			fmt.Fprintf(stdout, "speedup:               %.2f×\n", r.Speedup)
		}
		fmt.Fprintf(stdout, "incremental round:     %s after %d changes = %.1f %% of the full round\n", r.Incremental.Round(time.Millisecond), r.Changes, r.IncrementalPct)
		fmt.Fprintf(stdout, "worker peak RSS:       %.0f MB\n", float64(r.WorkerPeakRSS)/(1<<20))
		return nil
	case "actions":
		fs := newFlagSet("bench actions", "Drive mixed actions at a 1,000-user simulated tenant (realistic latency, throttling on)\nthrough worker processes sharing its budget; once the warm-up has drained the write bucket,\nthe measured actions show the write rate sustained against the budget (3,000 writes / 150 s).", stderr)
		workers := fs.Int("workers", 1, "worker processes")
		warmup := fs.Int("max-warmup", 20000, "at most this many actions before the window (it starts once the write bucket, drawn down, rises again)")
		actions := fs.Int("actions", 2000, "measured actions")
		output := fs.String("o", "text", "output: text or json")
		if err := fs.parse(rest); err != nil {
			return err
		}
		r, err := bench.RunActions(ctx, bench.ActionsOptions{Binary: bin, Workers: *workers, MaxWarmup: *warmup, Actions: *actions, Log: stderr})
		if err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(stdout, r)
		}
		fmt.Fprintf(stdout, "%d workers, %d jobs (%d failed); latency: %s\n", r.Workers, r.Jobs, r.Failed, r.Latency)
		fmt.Fprintf(stdout, "warm-up:          %d actions\n", r.Warmup)
		fmt.Fprintf(stdout, "measured window:  %d actions in %s, %d writes = %.1f writes/s = %.1f %% of the write budget\n", r.Actions, r.Window.Round(time.Millisecond), r.Writes, r.WritesPerSec, r.BudgetPercent)
		fmt.Fprintf(stdout, "write bucket:     %.0f at the window's start, %.0f at its end (of 3000)\n", r.BucketStart, r.BucketEnd)
		fmt.Fprintf(stdout, "throttled:        %d of %d Graph requests (%.2f %%)\n", r.Throttled, r.Requests, r.ThrottledPercent)
		return nil
	}
	return usageError{fmt.Errorf("unknown bench command %q (want sync, actions, chaos, freshness, tenants, overhead or receiver)", sub)}
}

func cmdBenchFreshness(ctx context.Context, bin string, rest []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench freshness", "Random admin changes across many simulated tenants: how soon each reaches the consumer's view\n"+
		"(change to asset delta) with Graph change notifications (simulator latency 0, and --notify-latency)\n"+
		"and with polling, and the Graph requests per instance and hour of tenants that do not change.\n"+
		"Polling runs at --poll-interval and the backstop at six times it (the defaults' 5 min : 30 min);\n"+
		"the per-hour figures are scaled to the defaults.", stderr)
	instances := fs.Int("instances", 20, "simulated tenants")
	users := fs.Int("users", 50, "users per tenant")
	changes := fs.Int("changes", 60, "changes, spread over twice the poll interval")
	latency := fs.Duration("notify-latency", 5*time.Second, "the simulator's notification latency in the realistic run (Graph's is undocumented; minutes are reported)")
	poll := fs.Duration("poll-interval", 10*time.Second, "the polling run's interval (5m is the default in production)")
	quiet := fs.Duration("quiet", 2*time.Minute, "how long request rates are measured with no change (at least two backstop intervals with notifications)")
	output := fs.String("o", "text", "output: text or json")
	if err := fs.parse(rest); err != nil {
		return err
	}
	r, err := bench.RunFreshness(ctx, bench.FreshnessOptions{Binary: bin, Instances: *instances, Users: *users, Changes: *changes,
		NotifyLatency: *latency, PollInterval: *poll, Quiet: *quiet, Log: stderr})
	if err != nil {
		return err
	}
	if *output == "json" {
		return printJSON(stdout, r)
	}
	fmt.Fprintf(stdout, "%d tenants of %d users\n", r.Instances, r.Users)
	for _, run := range r.Runs {
		fmt.Fprintf(stdout, "%-32s change to asset delta p50 %s, p99 %s, max %s (%d of %d changes seen)\n", run.Name+":",
			run.P50.Round(time.Millisecond), run.P99.Round(time.Millisecond), run.Max.Round(time.Millisecond), run.Seen, run.Changes)
	}
	for _, run := range r.Runs {
		if run.QuietRounds+run.QuietSkips > 0 {
			fmt.Fprintf(stdout, "quiet tenants, %s: %d Graph requests in %d scheduled rounds (%.1f a round), %d ticks closed as not due\n",
				run.Name, run.QuietRequests, run.QuietRounds, run.RequestsPerRound, run.QuietSkips)
		}
	}
	fmt.Fprintf(stdout, "Graph requests per instance and hour, tenants that do not change, at the defaults:\n")
	fmt.Fprintf(stdout, "  polling every 5 min (12 rounds):                  %.1f\n", r.PollPerHourAtDefault)
	fmt.Fprintf(stdout, "  notifications, backstop every 30 min (2 rounds):  %.1f (%.1f× fewer)\n", r.NotifyPerHourAtDefault, r.RequestRatio)
	return nil
}

func cmdBenchTenants(ctx context.Context, bin string, rest []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench tenants", "Many simulated tenants of mixed sizes, every instance on its schedule (realistic Graph latency): each\n"+
		"tick followed from the jobs stream to its sync report (the indicators are published just before it).\n"+
		"Prints tick-to-report latency, ticks reported and lost, the consumer's backlog over the run, syncs per\n"+
		"second, Graph requests, worker CPU and peak RSS; with --noisy, other tenants' action latency with and\n"+
		"without the noise.", stderr)
	instances := fs.Int("instances", 2000, "instances (one simulated tenant each)")
	users := fs.Int("users", 0, "users per tenant (default: mixed sizes, most of 20-500 users, one in 400 of 5,000-50,000, one of 100,000 with a group of 100,000 members)")
	workers := fs.Int("workers", 1, "worker processes")
	noisy := fs.Bool("noisy", false, "in the window's second half, one tenant publishes 1,000 actions at once and another's Graph throttles every request; probe actions to other tenants are timed in both halves")
	interval := fs.Duration("interval", time.Minute, "every instance's sync interval")
	duration := fs.Duration("duration", 3*time.Minute, "the measured window, after a warm-up: one interval, or until every instance's first round is done and its backlog worked off (at most six)")
	noLatency := fs.Bool("no-latency", false, "turn the simulator's realistic latency off")
	aligned := fs.Bool("aligned", false, "add every instance at once, so that all of them tick in the same second (default: added over one interval)")
	output := fs.String("o", "text", "output: text or json")
	if err := fs.parse(rest); err != nil {
		return err
	}
	r, err := bench.RunTenants(ctx, bench.TenantsOptions{Binary: bin, Instances: *instances, Users: *users, Workers: *workers,
		Interval: *interval, Duration: *duration, NoLatency: *noLatency, Aligned: *aligned, Noisy: *noisy, Log: stderr})
	if err != nil {
		return err
	}
	if *output == "json" {
		return printJSON(stdout, r)
	}
	fmt.Fprintf(stdout, "%d instances (%s), every %s, %d workers, latency %s, window %s\n", r.Instances, r.Sizes, r.Interval, r.Workers, r.Latency, r.Duration)
	fmt.Fprintf(stdout, "warm-up:            %s; every instance's first round reported after %s\n", r.WarmUp.Round(time.Second), firstRounds(r.FirstRounds))
	fmt.Fprintf(stdout, "ticks:              %d in the window, %d reported (%d of them skipped), %d never reported (%d of those counted in ticks_missed reports)\n", r.Ticks, r.Reported, r.Skipped, r.Lost, r.CountedMissed)
	fmt.Fprintf(stdout, "tick to report:     p50 %s, p99 %s, max %s\n", r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond))
	fmt.Fprintf(stdout, "backlog (every 5s): %v\n", r.Backlog)
	fmt.Fprintf(stdout, "syncs per second:   %.1f\n", r.SyncsPerSecond)
	fmt.Fprintf(stdout, "Graph requests:     %d (%d throttled)\n", r.Requests, r.Throttled)
	fmt.Fprintf(stdout, "worker CPU:         %s in %s (%.0f %% of one core); peak RSS %.0f MB\n", r.WorkerCPU.Round(time.Millisecond), r.Duration,
		100*r.WorkerCPU.Seconds()/r.Duration.Seconds(), float64(r.WorkerPeakRSS)/(1<<20))
	fmt.Fprintf(stdout, "NATS server:        RSS %.0f MB (peak %.0f MB); state bucket %d keys, %d messages, %.0f MB\n", float64(r.Server.RSS)/(1<<20), float64(r.Server.PeakRSS)/(1<<20),
		r.Server.StateKeys, r.Server.StateMsgs, float64(r.Server.StateBytes)/(1<<20))
	if r.Quiet != nil && r.Noisy != nil {
		fmt.Fprintf(stdout, "probe actions:      quiet half p50 %s, p99 %s (%d of %d done); noisy half p50 %s, p99 %s (%d of %d done); p99 ratio %.2f\n",
			r.Quiet.P50.Round(time.Millisecond), r.Quiet.P99.Round(time.Millisecond), r.Quiet.Done, r.Quiet.Sent,
			r.Noisy.P50.Round(time.Millisecond), r.Noisy.P99.Round(time.Millisecond), r.Noisy.Done, r.Noisy.Sent, r.Noisy.P99.Seconds()/max(r.Quiet.P99.Seconds(), 1e-9))
		fmt.Fprintf(stdout, "the noise:          %d of %d burst actions done, %d of %d actions of the throttled tenant done\n", r.BurstDone, bench.NoiseBurst, r.ThrottledDone, bench.NoiseThrottled)
	}
	return nil
}

// cmdBenchServer is the JetStream server of a benchmark that measures the
// server's memory apart (bench tenants): it prints its URL and runs until
// interrupted. Not listed: the benchmarks start it.
func cmdBenchServer(ctx context.Context, rest []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench nats-server", "A benchmark's JetStream server on a free loopback port (the benchmarks start it).", stderr)
	store := fs.String("store", "", "the store directory")
	if err := fs.parse(rest); err != nil {
		return err
	}
	if *store == "" {
		return usageError{errors.New("bench nats-server: --store is required")}
	}
	ns, err := worker.StartEmbedded(worker.EmbeddedOptions{StoreDir: *store, Port: -1, ServerName: "m365-bench"})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "nats-server listening on", ns.ClientURL())
	<-ctx.Done()
	ns.Shutdown()
	ns.WaitForShutdown()
	return nil
}

func cmdBenchOverhead(ctx context.Context, bin string, rest []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench overhead", "What the pool costs on top of the Graph calls: update_user jobs through one worker process against\n"+
		"the same Graph calls made directly with graphclient, round by round on fresh tenants (the median\n"+
		"ratio and its spread), the JetStream round trips a job makes by stage, and JetStream alone (publish,\n"+
		"consume, ack) on the same server. The simulator runs with no throttling, and with no latency unless\n"+
		"--latency realistic gives it Graph's (GRAPH.md §12).", stderr)
	n := fs.Int("jobs", 500, "jobs (and direct call sets) per round, each round on fresh tenants; past about a thousand the client-side pacing of a tenant's budget bounds both ways")
	rounds := fs.Int("rounds", 7, "rounds measured, after one not counted; the median ratio and its spread are reported")
	users := fs.Int("users", 1000, "users in each tenant")
	conc := fs.Int("concurrency", 64, "goroutines making the direct calls")
	latency := fs.String("latency", "none", "the simulator's latency: none (the pool's own cost) or realistic (GRAPH.md §12)")
	output := fs.String("o", "text", "output: text or json")
	if err := fs.parse(rest); err != nil {
		return err
	}
	if *rounds < 1 {
		return usageError{errors.New("bench overhead: --rounds must be at least 1")}
	}
	if *latency != "none" && *latency != "realistic" {
		return usageError{fmt.Errorf("bench overhead: --latency %q: want none or realistic", *latency)}
	}
	r, err := bench.RunOverhead(ctx, bench.OverheadOptions{Binary: bin, Jobs: *n, Users: *users, Rounds: *rounds, Concurrency: *conc, Realistic: *latency == "realistic", Log: stderr})
	if err != nil {
		return err
	}
	if *output == "json" {
		return printJSON(stdout, r)
	}
	fmt.Fprintf(stdout, "%d rounds of %d update_user jobs, %.1f Graph requests each; simulator latency %s, no throttling\n", len(r.Rounds), r.Jobs, r.RequestsPerJob, r.Latency)
	fmt.Fprintln(stdout, "round  direct jobs/s  pool (1 worker) jobs/s  pool/direct")
	for i, rd := range r.Rounds {
		fmt.Fprintf(stdout, "%5d  %13.0f  %22.0f  %11.2f\n", i+1, rd.DirectPerSec, rd.PoolPerSec, rd.PoolOfDirect)
	}
	fmt.Fprintf(stdout, "pool = %.2f of direct (median; spread %.2f to %.2f)\n", r.PoolOfDirect, r.PoolOfDirectMin, r.PoolOfDirectMax)
	stages := make([]string, 0, len(r.RoundTripsStages))
	for s := range r.RoundTripsStages {
		stages = append(stages, s)
	}
	sort.Slice(stages, func(i, j int) bool { return r.RoundTripsStages[stages[i]] > r.RoundTripsStages[stages[j]] })
	var parts []string
	for _, s := range stages {
		parts = append(parts, fmt.Sprintf("%s %.2f", s, r.RoundTripsStages[s]))
	}
	fmt.Fprintf(stdout, "JetStream round trips per job: %.2f (%s)\n", r.RoundTripsPerJob, strings.Join(parts, ", "))
	fmt.Fprintf(stdout, "JetStream alone: %.0f msgs/s\n", r.JetStreamPerSec)
	return nil
}

// firstRounds says when every instance's first round was reported.
func firstRounds(d time.Duration) string {
	if d == 0 {
		return "– (not all within the warm-up)"
	}
	return d.Round(time.Second).String()
}

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/tevyra/m365-worker/internal/chaos"
)

// cmdBenchChaos runs the chaos harness of internal/chaos (the one TestChaos
// runs) longer: worker processes of this binary and a nats-server process,
// killed -9 at random moments while mixed jobs run, then the checks against
// the contract and the simulator's ground truth. Exit status 1 when it
// found mismatches.
func cmdBenchChaos(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench chaos", "Run mixed jobs of every action through worker processes and a nats-server process while\nworkers and the server are killed -9 at random moments (the Graph simulator behind a proxy\ninjecting 5xx, 429 with Retry-After and dropped connections), then check exactly one result\nper job, one effect per job, no failure caused by faults, and the asset view against the\nsimulator's ground truth. Needs a nats-server binary (--nats-server), or the Go toolchain\nand this module's source to build one.", stderr)
	jobsN := fs.Int("jobs", 5000, "action jobs")
	kills := fs.Int("kills", 10, "worker kill -9s")
	serverKills := fs.Int("server-kills", 2, "nats-server kill -9s")
	pauses := fs.Int("pauses", 2, "worker SIGSTOPs longer than the ack wait and the target-lock TTL")
	workers := fs.Int("workers", 3, "worker processes")
	seed := fs.Int("seed", 0, "seed of the plan, the kill schedule and the faults (0: from the clock)")
	users := fs.Int("users", 0, "users in the tenant (default 300, or jobs/10 when more)")
	natsServer := fs.String("nats-server", "", "nats-server executable (default: built from the module)")
	dir := fs.String("dir", "", "directory for the store, logs and keys (default: a temporary one, kept when mismatches are found)")
	noFaults := fs.Bool("no-faults", false, "inject no Graph faults (kills only)")
	timeout := fs.Duration("timeout", time.Hour, "give up after this long")
	output := fs.String("o", "text", "output: text or json")
	if err := fs.parse(args); err != nil {
		return err
	}
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	u := *users
	if u == 0 {
		u = max(300, *jobsN/10)
	}
	cfg := chaos.Config{Jobs: *jobsN, Kills: *kills, ServerKills: *serverKills, Workers: *workers, Seed: int64(*seed), Users: u, Groups: max(30, u/10),
		Binary: bin, NATSServer: *natsServer, Dir: *dir, NoFaults: *noFaults, StallTimeout: 3 * time.Minute}
	if *kills == 0 {
		cfg.Kills = -1
	}
	if *serverKills == 0 {
		cfg.ServerKills = -1
	}
	cfg.Pauses = *pauses
	if *pauses == 0 {
		cfg.Pauses = -1
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	r, err := chaos.Run(ctx, cfg, func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) })
	defer chaos.RemoveBinaries()
	if *output == "json" {
		if perr := printJSON(stdout, r); perr != nil {
			return perr
		}
	} else {
		fmt.Fprintf(stdout, "seed:                  %d\n", r.Seed)
		fmt.Fprintf(stdout, "jobs published:        %d actions (%d meant to fail), %d syncs; %d publications, %d of them second copies of a job\n",
			r.ActionJobs, r.ExpectedFailures, r.SyncJobs, r.Published, r.Republished)
		fmt.Fprintf(stdout, "results:               %d action results, %d sync reports (%d rounds succeeded)\n", r.Results, r.SyncReports, r.SyncRounds)
		fmt.Fprintf(stdout, "failures by code:      %s\n", chaosCounts(r.FailuresByCode))
		fmt.Fprintf(stdout, "kills:                 %d workers, %d nats-server; %d worker pauses; %d worker exits besides; %d 429 storms\n", r.WorkerKills, r.ServerKills, r.WorkerPauses, r.WorkerExits, r.Throttles)
		fmt.Fprintf(stdout, "faults injected:       %s\n", chaosCounts(r.FaultsInjected))
		fmt.Fprintf(stdout, "passwords checked:     %d\n", r.PasswordsChecked)
		fmt.Fprintf(stdout, "took:                  %s\n", r.Duration.Round(time.Millisecond))
		fmt.Fprintf(stdout, "mismatches:            %d\n", len(r.Mismatches))
		for _, m := range r.Mismatches {
			fmt.Fprintf(stdout, "  - %s\n", m)
		}
		for _, n := range r.Notes {
			fmt.Fprintf(stdout, "note: %s\n", n)
		}
		if r.Dir != "" {
			fmt.Fprintf(stdout, "logs:                  %s\n", r.Dir)
		}
	}
	if err != nil {
		return err
	}
	if len(r.Mismatches) > 0 {
		return errSilent
	}
	return nil
}

func chaosCounts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var s []string
	for _, k := range keys {
		s = append(s, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(s, ", ")
}

package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/tevyra/m365-worker/internal/bench"
)

// cmdBenchConsole is `bench console`: the console's pages timed with
// thousands of instances and a hundred thousand failure records.
func cmdBenchConsole(ctx context.Context, rest []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench console", "Fill an embedded JetStream with instance records, failure records with their jobs, and\n"+
		"results; start the operator console on it and time each page end to end over HTTPS on\n"+
		"loopback (the budget: 200 ms), the watcher's load and memory, and the NATS messages the\n"+
		"console sends while it serves the page views.", stderr)
	instances := fs.Int("instances", 2000, "instance records")
	failures := fs.Int("failures", 100000, "failure records")
	results := fs.Int("results", 20000, "action results")
	requests := fs.Int("requests", 20, "requests per page")
	output := fs.String("o", "text", "output: text or json")
	if err := fs.parse(rest); err != nil {
		return err
	}
	r, err := bench.RunConsole(ctx, bench.ConsoleOptions{Instances: *instances, Failures: *failures, Results: *results, Requests: *requests, Log: stderr})
	if err != nil {
		return err
	}
	if *output == "json" {
		return printJSON(stdout, r)
	}
	fmt.Fprintf(stdout, "%d instances, %d failure records, %d results; the watcher read them in %s, Go heap %.0f MB\n",
		r.Instances, r.Failures, r.Results, r.Load.Round(1e6), r.HeapMB)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "page\tp50 ms\tp95 ms\tmax ms\tof 200 ms (p95)\tKiB\t")
	worst := 0.0
	for _, p := range r.Pages {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.0f %%\t%d\t\n", p.Page, p.P50MS, p.P95MS, p.MaxMS, p.P95MS/2, p.Bytes>>10)
		worst = max(worst, p.P95MS)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "slowest page p95: %.1f ms = %.2f of the 200 ms budget\n", worst, worst/200)
	fmt.Fprintf(stdout, "NATS messages the console sent while serving %d page views: %d\n", r.PageViews, r.NATSMsgs)
	fmt.Fprintf(stdout, "one refresh round of every instance's sync state and the pools (every 5 s, whatever the viewers): %s\n", r.RefreshRound.Round(1e6))
	return nil
}

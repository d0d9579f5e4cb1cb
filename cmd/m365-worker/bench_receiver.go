package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tevyra/m365-worker/internal/bench"
)

func cmdBenchReceiver(ctx context.Context, bin string, rest []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench receiver", "The notification receiver (m365-worker notify over TLS, GOMEMLIMIT as deploy/k8s/notify.yaml sets it)\n"+
		"under hostile traffic, a fresh process for each attack: 1 MiB bodies of {} notifications (one and eight at a\n"+
		"time), slow connections, HTTP/2 streams trickling 1 MiB bodies, and all at once; meanwhile a valid notification\n"+
		"every 20 ms. Prints the receiver's peak RSS, the valid notifications' answers and latency, and what reached\n"+
		"JetStream.", stderr)
	limit := fs.Int("memory-limit-mib", 128, "the receiver's GOMEMLIMIT in MiB (the container's limit)")
	phase := fs.Duration("phase", 10*time.Second, "how long each attack runs")
	slow := fs.Int("slow-connections", 2000, "slow connections")
	streams := fs.Int("streams", 250, "HTTP/2 streams with 1 MiB bodies")
	output := fs.String("o", "text", "output: text or json")
	if err := fs.parse(rest); err != nil {
		return err
	}
	r, err := bench.RunReceiver(ctx, bench.ReceiverOptions{Binary: bin, MemoryLimit: int64(*limit) << 20, Phase: *phase, SlowConns: *slow,
		Streams: *streams, Log: stderr})
	if err != nil {
		return err
	}
	if *output == "json" {
		return printJSON(stdout, r)
	}
	fmt.Fprintf(stdout, "receiver with GOMEMLIMIT %d MiB, %s an attack, a valid notification every 20 ms meanwhile\n", r.MemoryLimit>>20, *phase)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ATTACK\tPEAK RSS\tCPU\tVALID 202 / 503 / failed\tP50\tP99\tTRIGGERS STORED\tHOSTILE STORED\tHOSTILE ANSWERS")
	for _, p := range r.Phases {
		fmt.Fprintf(tw, "%s\t%.0f MiB\t%s\t%d / %d / %d%s\t%s\t%s\t%d of %d instances\t%d\t%s\n", p.Name, float64(p.PeakRSS)/(1<<20), p.CPU, p.ValidOK, p.Valid503, p.ValidFailed, failedAs(p.ValidErrors),
			p.P50.Round(100*time.Microsecond), p.P99.Round(100*time.Microsecond), p.Stored, p.Instances, p.HostileStored, answers(p.Hostile))
	}
	return tw.Flush()
}

// answers prints a tally of answers, largest first.
func answers(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func failedAs(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	return " (" + answers(m) + ")"
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/console"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// cmdSetup is the operator's step: create or update the streams, the
// buckets and the pool consumers. Pool workers only check that these exist.
func cmdSetup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("setup", "Create or update the streams, buckets and pool consumers (the operator's step; workers only check them).\nReplicas are never lowered without --lower-replicas.", stderr)
	cf := addConnFlags(fs)
	replicas := fs.Int("replicas", 1, "stream and bucket replicas (3 in a cluster)")
	lower := fs.Bool("lower-replicas", false, "allow fewer replicas than an existing stream or bucket has")
	pools := fs.String("pools", jobs.DefaultPool, "pools whose consumers to create or update, comma-separated (the pools of configured instances are added)")
	sitePools := fs.String("site-pools", "", "customer sites' pools, comma-separated: each gets a jobs stream of its own (M365_JOBS_<pool>), so its account can be given only its jobs (docs/security.md)")
	ackWait := fs.Duration("ack-wait", 60*time.Second, "the pool consumers' ack wait: a job not heartbeated for this long is redelivered")
	maxDeliver := fs.Int("max-deliver", 1000, "the pool consumers' delivery cap (a job nearing it fails with attempts_exhausted)")
	if err := fs.parse(args); err != nil {
		return err
	}
	nc, js, topo, err := cf.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	topo.Replicas = *replicas
	sites := splitList(*sitePools)
	ps := setupPools(ctx, js, topo, *pools)
	// A site pool already set up keeps its own stream on later runs.
	topo = worker.WithSitePools(ctx, js, topo, ps...)
	sites = append(sites, topo.SitePools...)
	slices.Sort(sites)
	sites = slices.Compact(sites)
	ps = slices.DeleteFunc(ps, func(p string) bool { return slices.Contains(sites, p) })
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := worker.SetupWith(sctx, js, topo, worker.SetupOptions{Pools: ps, SitePools: sites, AckWait: *ackWait, MaxDeliver: *maxDeliver, LowerReplicas: *lower}); err != nil {
		return fmt.Errorf("set up streams and buckets: %w", err)
	}
	if err := console.EnsureAuditStream(sctx, js, topo, *replicas); err != nil {
		return fmt.Errorf("set up the console's audit stream: %w", err)
	}
	fmt.Fprintf(stdout, "streams, buckets and the consumers of pools %s are set up\n", strings.Join(append(ps, sites...), ", "))
	for _, p := range sites {
		fmt.Fprintf(stdout, "site pool %s: its jobs are in %s\n", p, topo.SiteJobsStream(p))
	}
	return nil
}

// setupPools is the pools named, plus those of the configured instances.
func setupPools(ctx context.Context, js jetstream.JetStream, topo worker.Topology, named string) []string {
	set := map[string]bool{}
	for _, p := range splitList(named) {
		set[p] = true
	}
	if store, err := worker.OpenInstances(ctx, js, topo); err == nil {
		if list, err := store.List(ctx); err == nil {
			for _, in := range list {
				set[in.Pool] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// ensurePoolConsumer creates a pool's consumer when an instance is put in a
// pool that has none yet (instance add is the operator's step too); an
// existing consumer is left as setup made it.
func ensurePoolConsumer(ctx context.Context, js jetstream.JetStream, topo worker.Topology, pool string) error {
	topo = worker.WithSitePools(ctx, js, topo, pool)
	_, err := js.Consumer(ctx, topo.PoolJobsStream(pool), topo.ConsumerName(pool))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		_, err = worker.PoolConsumer(ctx, js, topo, pool, 0, 0)
	}
	return err
}

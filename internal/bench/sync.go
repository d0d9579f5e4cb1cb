package bench

import (
	"context"
	"fmt"
	"io"
	"time"

	msgraphcore "github.com/microsoftgraph/msgraph-sdk-go-core"
	"github.com/microsoftgraph/msgraph-sdk-go/groups"
	"github.com/microsoftgraph/msgraph-sdk-go/models"
	"github.com/microsoftgraph/msgraph-sdk-go/users"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
)

// SyncOptions configure the sync benchmark.
type SyncOptions struct {
	Binary        string
	Users, Groups int
	// NoLatency turns the simulator's realistic latency (GRAPH.md §12) off.
	NoLatency bool
	// SkipBaseline skips the SDK page-iterator walk.
	SkipBaseline bool
	// ChangedPercent of the objects change before the incremental round.
	// Default 0.5.
	ChangedPercent float64
	Log            io.Writer
}

// SyncResult is what the sync benchmark measured, in one run.
type SyncResult struct {
	Users          int           `json:"users"`
	Groups         int           `json:"groups"`
	Latency        string        `json:"latency_profile"`
	Full           time.Duration `json:"full_round"`
	FullRequests   int64         `json:"full_round_graph_requests"`
	FullThrottled  int64         `json:"full_round_throttled"`
	SDKWalk        time.Duration `json:"sdk_page_iterator_walk,omitempty"`
	Speedup        float64       `json:"speedup,omitempty"`
	Changes        int           `json:"admin_changes"`
	Incremental    time.Duration `json:"incremental_round"`
	IncrementalPct float64       `json:"incremental_percent_of_full"`
	// WorkerPeakRSS is the worker process's peak resident set through both
	// rounds (JetStream and the simulator run in another process).
	WorkerPeakRSS int64 `json:"worker_peak_rss_bytes"`
}

// RunSync measures, against one simulated tenant: our full first round, a
// plain sequential delta walk through the SDK's page iterator (the way most
// integrations read a tenant), an incremental round after a share of the
// objects changed, and the worker process's peak RSS.
func RunSync(ctx context.Context, o SyncOptions) (*SyncResult, error) {
	if o.ChangedPercent <= 0 {
		o.ChangedPercent = 0.5
	}
	so := graphsim.Options{Users: o.Users, Groups: o.Groups, Latency: graphsim.RealisticLatency}
	r := &SyncResult{Users: o.Users, Groups: o.Groups, Latency: "GRAPH.md §12 (realistic)"}
	if o.NoLatency {
		so.Latency, r.Latency = graphsim.Latency{}, "none"
	}
	e, err := Start(Options{Binary: o.Binary, Sim: so, Log: o.Log})
	if err != nil {
		return nil, err
	}
	defer e.Close()
	log := e.o.Log
	if err := e.AddInstance(ctx, "bench"); err != nil {
		return nil, err
	}
	if err := e.StartWorkers(ctx, 1, 0); err != nil {
		return nil, err
	}
	fmt.Fprintln(log, "full round…")
	rep, full, err := e.Sync(ctx, "bench", false)
	if err != nil {
		return nil, err
	}
	if rep.Mode != jobs.ModeFull || rep.Counts[jobs.AssetUser].Upserts < o.Users {
		return nil, fmt.Errorf("the first round was not a full one of %d users: %+v", o.Users, rep)
	}
	r.Full, r.FullRequests, r.FullThrottled = full, rep.GraphRequests, rep.Throttled
	fmt.Fprintf(log, "full round: %s, %d Graph requests, %d throttled\n", full.Round(time.Millisecond), rep.GraphRequests, rep.Throttled)

	if !o.SkipBaseline {
		fmt.Fprintln(log, "SDK page-iterator walk…")
		if r.SDKWalk, err = SDKWalk(ctx, e.Cred, e.Sim.CAPEM(), o.Users, o.Groups); err != nil {
			return nil, err
		}
		r.Speedup = r.SDKWalk.Seconds() / full.Seconds()
		fmt.Fprintf(log, "SDK walk: %s\n", r.SDKWalk.Round(time.Millisecond))
	}

	r.Changes = int(float64(o.Users+o.Groups) * o.ChangedPercent / 100)
	if err := e.Sim.Mutate(e.Cred.TenantID, func(a *graphsim.Admin) error { a.RandomChanges(r.Changes, 99); return nil }); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "incremental round after %d changes…\n", r.Changes)
	inc, incr, err := e.Sync(ctx, "bench", false)
	if err != nil {
		return nil, err
	}
	if inc.Mode != jobs.ModeIncremental {
		return nil, fmt.Errorf("the second round was not incremental: %+v", inc)
	}
	r.Incremental, r.IncrementalPct = incr, 100*incr.Seconds()/full.Seconds()
	if r.WorkerPeakRSS, err = e.Workers()[0].PeakRSS(); err != nil {
		return nil, err
	}
	return r, nil
}

// SDKWalk reads the tenant as most integrations do: the users delta chain,
// then the groups delta chain with members, each through the SDK's page
// iterator, one page after the other. It reads only (no publishing).
func SDKWalk(ctx context.Context, cred graphsim.Credential, caPEM []byte, nUsers, nGroups int) (time.Duration, error) {
	c, err := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}).Client(graphclient.Config{Instance: "walk", TenantID: cred.TenantID, ClientID: cred.ClientID,
		ClientSecret: cred.ClientSecret, Authority: cred.Authority, GraphRoot: cred.GraphRoot, CAPEM: caPEM, Users: nUsers})
	if err != nil {
		return 0, err
	}
	if _, err := c.SubscribedSKUs(ctx); err != nil { // the token, outside the timing
		return 0, err
	}
	t0 := time.Now()
	ur, err := c.Graph.Users().Delta().GetAsDeltaGetResponse(ctx, &users.DeltaRequestBuilderGetRequestConfiguration{QueryParameters: &users.DeltaRequestBuilderGetQueryParameters{Select: graphclient.UserSelect}})
	if err != nil {
		return 0, err
	}
	it, err := msgraphcore.NewPageIterator[models.Userable](ur, c.Graph.GetAdapter(), users.CreateDeltaGetResponseFromDiscriminatorValue)
	if err != nil {
		return 0, err
	}
	n := 0
	if err := it.Iterate(ctx, func(models.Userable) bool { n++; return true }); err != nil {
		return 0, err
	}
	gr, err := c.Graph.Groups().Delta().GetAsDeltaGetResponse(ctx, &groups.DeltaRequestBuilderGetRequestConfiguration{QueryParameters: &groups.DeltaRequestBuilderGetQueryParameters{Select: append(graphclient.GroupSelect, "members")}})
	if err != nil {
		return 0, err
	}
	git, err := msgraphcore.NewPageIterator[models.Groupable](gr, c.Graph.GetAdapter(), groups.CreateDeltaGetResponseFromDiscriminatorValue)
	if err != nil {
		return 0, err
	}
	if err := git.Iterate(ctx, func(models.Groupable) bool { n++; return true }); err != nil {
		return 0, err
	}
	if n < nUsers+nGroups {
		return 0, fmt.Errorf("the SDK walk saw %d objects of %d", n, nUsers+nGroups)
	}
	return time.Since(t0), nil
}

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
)

// ActionsOptions configure the actions benchmark.
type ActionsOptions struct {
	Binary  string
	Workers int
	// Actions measured once the tenant's write bucket is drained. Default
	// 2,000.
	Actions int
	// MaxWarmup bounds the warm-up: the measured window starts once the
	// write bucket has been drawn down and rises again (the pacers hold the
	// rate), or after this many actions, whichever comes first. Default
	// 20,000.
	MaxWarmup int
	Log       io.Writer
}

// ActionsResult is what the actions benchmark measured, in one run.
type ActionsResult struct {
	Workers int    `json:"workers"`
	Latency string `json:"latency_profile"`
	// Warmup is the number of actions run before the window, Jobs the
	// number published in all.
	Warmup int `json:"warmup_actions"`
	Jobs   int `json:"jobs"`
	Failed int `json:"failed_jobs"`
	// Window is the time the measured actions took; Writes the writes the
	// simulator admitted in it.
	Window        time.Duration `json:"window"`
	Actions       int           `json:"actions"`
	Writes        int64         `json:"writes"`
	WritesPerSec  float64       `json:"writes_per_second"`
	BudgetPercent float64       `json:"percent_of_write_budget"`
	// BucketStart and BucketEnd are the simulator's write bucket (of 3,000)
	// when the window starts and ends: a window that starts drained was fed
	// by the budget's refill, not by a stored burst.
	BucketStart      float64 `json:"write_bucket_at_start"`
	BucketEnd        float64 `json:"write_bucket_at_end"`
	Requests         int64   `json:"graph_requests"`
	Throttled        int64   `json:"throttled"`
	ThrottledPercent float64 `json:"percent_throttled"`
}

// writeRate is the (app, tenant) write budget: 3,000 writes / 150 s.
const writeRate = 3000.0 / 150

// RunActions drives mixed actions (update, disable, enable, assign and
// remove a licence, add and remove a group member) at one 1,000-user tenant
// with realistic latency and throttling, through Workers worker processes,
// keeping a backlog of jobs in the stream.
//
// The write bucket (3,000 writes / 150 s) starts full and refills while it
// drains, so "sustained" is measured only in the steady state: our pacers
// burst to 90 % of the bucket, then pace at 95 % of its rate, so the
// simulator's bucket falls to a floor and then rises slowly. The window
// starts once it has risen 20 writes above its lowest point and covers the
// next Actions actions, where the budget's rate (20 writes/s) binds: the
// writes in the window divided by rate × window is the share of the budget
// sustained, and the bucket rising from the window's start to its end shows
// that no stored burst fed it.
func RunActions(ctx context.Context, o ActionsOptions) (*ActionsResult, error) {
	if o.Workers <= 0 {
		o.Workers = 1
	}
	if o.Actions <= 0 {
		o.Actions = 2000
	}
	if o.MaxWarmup <= 0 {
		o.MaxWarmup = 20000
	}
	e, err := Start(Options{Binary: o.Binary, Sim: graphsim.Options{Users: 1000, Groups: 60, Latency: graphsim.RealisticLatency, Seed: 7}, Log: o.Log})
	if err != nil {
		return nil, err
	}
	defer e.Close()
	log := e.o.Log
	if err := e.StartWorkers(ctx, o.Workers, 0); err != nil {
		return nil, err
	}
	if err := e.AddInstance(ctx, "acme"); err != nil {
		return nil, err
	}
	snap, err := e.Sim.Export(e.Cred.TenantID)
	if err != nil {
		return nil, err
	}
	var targets, groupIDs []string
	for _, u := range snap.Users {
		if u.UsageLocation != nil && u.UserType == "Member" {
			targets = append(targets, u.ID)
		}
	}
	for _, g := range snap.Groups {
		if len(g.GroupTypes) == 0 || (len(g.GroupTypes) == 1 && g.GroupTypes[0] == "Unified") {
			groupIDs = append(groupIDs, g.ID)
		}
	}

	r := &ActionsResult{Workers: o.Workers, Latency: "GRAPH.md §12 (realistic)", Actions: o.Actions}
	bucket := func() float64 { return e.Sim.WriteBudgetLeft(e.Cred.ClientID, e.Cred.TenantID) }
	// paced reports the steady state: the bucket, drawn down by our burst,
	// has stopped falling and rises again (the pacers hold the rate just
	// under the refill). Called with mu held.
	lowest := 3000.0
	paced := func() bool {
		l := bucket()
		lowest = min(lowest, l)
		return lowest < 0.5*3000 && l > lowest+20
	}
	var mu sync.Mutex
	got, startAt := 0, -1
	var tStart time.Time
	var wStart int64
	finished := make(chan struct{})
	sub, err := e.NC.Subscribe(e.Topo.Subjects.Results("acme", jobs.ResultActions), func(m *nats.Msg) {
		var res jobs.ActionResult
		_ = json.Unmarshal(m.Data, &res)
		mu.Lock()
		defer mu.Unlock()
		got++
		if res.Status != jobs.StatusSucceeded {
			r.Failed++
		}
		switch {
		case startAt < 0 && (paced() || got >= o.MaxWarmup):
			startAt, r.Warmup = got, got
			tStart, wStart, r.BucketStart = time.Now(), e.Sim.Writes.Load(), bucket()
			fmt.Fprintf(log, "write bucket at %.0f of 3000 after %d actions (lowest %.0f); measuring %d actions…\n", r.BucketStart, got, lowest, o.Actions)
		case startAt >= 0 && got == startAt+o.Actions:
			r.Window, r.Writes, r.BucketEnd = time.Since(tStart), e.Sim.Writes.Load()-wStart, bucket()
			close(finished)
		case got%500 == 0:
			fmt.Fprintf(log, "%d actions done, write bucket at %.0f of 3000\n", got, bucket())
		}
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()

	// Keep up to backlog jobs waiting in the stream until the window ends.
	const backlog = 400
	req0, thr0 := e.Sim.Requests.Load(), e.Sim.Throttled.Load()
	for i := 0; ; i++ {
		for {
			mu.Lock()
			done, waiting := got, i-got
			mu.Unlock()
			select {
			case <-finished:
				r.Jobs = i
				goto measured
			case <-ctx.Done():
				return nil, fmt.Errorf("%d of %d results: %w", done, i, ctx.Err())
			default:
			}
			if waiting < backlog {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		j := mixedAction(i, targets[i%len(targets)], groupIDs[i%len(groupIDs)])
		body, _ := json.Marshal(j)
		if _, err := e.JS.PublishAsync(e.Topo.Subjects.JobSubject(jobs.DefaultPool, j), body); err != nil {
			return nil, err
		}
	}
measured:
	mu.Lock()
	defer mu.Unlock()
	r.WritesPerSec = float64(r.Writes) / r.Window.Seconds()
	r.BudgetPercent = 100 * r.WritesPerSec / writeRate
	r.Requests, r.Throttled = e.Sim.Requests.Load()-req0, e.Sim.Throttled.Load()-thr0
	r.ThrottledPercent = 100 * float64(r.Throttled) / float64(max(r.Requests, 1))
	return r, nil
}

// mixedAction is the i-th job of the mix, on user u and group g.
func mixedAction(i int, u, g string) *jobs.Job {
	var action string
	var params any
	switch i % 7 {
	case 0:
		title := fmt.Sprintf("bench %d", i)
		action, params = jobs.ActionUpdateUser, jobs.UpdateUserParams{UserRef: jobs.UserRef{User: u}, JobTitle: &title}
	case 1:
		action, params = jobs.ActionDisableUser, jobs.DisableUserParams{UserRef: jobs.UserRef{User: u}}
	case 2:
		action, params = jobs.ActionEnableUser, jobs.EnableUserParams{UserRef: jobs.UserRef{User: u}}
	case 3:
		action, params = jobs.ActionAssignLicense, jobs.AssignLicenseParams{UserRef: jobs.UserRef{User: u}, SKU: "FLOW_FREE"}
	case 4:
		action, params = jobs.ActionRemoveLicense, jobs.RemoveLicenseParams{UserRef: jobs.UserRef{User: u}, SKU: "FLOW_FREE"}
	case 5:
		action, params = jobs.ActionAddGroupMember, jobs.AddGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: g}, Member: u}}
	default:
		action, params = jobs.ActionRemoveGroupMember, jobs.RemoveGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: g}, Member: u}}
	}
	raw, _ := json.Marshal(params)
	now := time.Now().UTC()
	return &jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: fmt.Sprintf("bench-%d", i), Instance: "acme", Action: jobs.FullAction(action), Params: raw,
		RequestedBy: "m365-worker bench", RequestedAt: &now}
}

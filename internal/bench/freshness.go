package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/jobs"
)

// FreshnessOptions configure the freshness benchmark: how soon an admin's
// change in a tenant reaches the consumer's view, with change notifications
// and with polling, and what each costs in Graph requests.
type FreshnessOptions struct {
	Binary string
	// Instances (tenants) of Users users each; Changes random changes
	// (a user created in a random instance) spread over the measurement.
	Instances, Users, Changes int
	// NotifyLatency is the simulator's notification latency of the
	// realistic run (the other runs with none).
	NotifyLatency time.Duration
	// PollInterval is the polling run's interval (the default 5 minutes
	// makes the run long; the report scales a shorter one).
	PollInterval time.Duration
	// Quiet is how long request rates are measured with no change (at
	// least two backstop rounds with notifications).
	Quiet time.Duration
	Log   io.Writer
}

// FreshnessRun is one way of keeping tenants fresh.
type FreshnessRun struct {
	Name          string        `json:"name"`
	Changes       int           `json:"changes"`
	Seen          int           `json:"seen"`
	P50, P99, Max time.Duration `json:"-"`
	P50MS         int64         `json:"p50_ms"`
	P99MS         int64         `json:"p99_ms"`
	MaxMS         int64         `json:"max_ms"`
	// QuietRequests are the Graph requests of all instances during the
	// quiet window, in QuietRounds scheduled rounds (QuietSkips ticks were
	// closed as backstop_not_due); RequestsPerRound follows.
	QuietRequests    int64   `json:"quiet_graph_requests"`
	QuietRounds      int     `json:"quiet_rounds"`
	QuietSkips       int     `json:"quiet_skipped_ticks"`
	RequestsPerRound float64 `json:"requests_per_round"`
}

// FreshnessResult is the benchmark's outcome.
type FreshnessResult struct {
	Instances int            `json:"instances"`
	Users     int            `json:"users"`
	Runs      []FreshnessRun `json:"runs"`
	// PollInterval and Backstop of the measured runs; the per-hour figures
	// at the defaults are the measured requests per round times the rounds
	// an hour has at 5 min (polling) and at 30 min (the backstop).
	PollInterval, Backstop time.Duration `json:"-"`
	PollPerHourAtDefault   float64       `json:"poll_requests_per_instance_hour_at_5m"`
	NotifyPerHourAtDefault float64       `json:"notify_requests_per_instance_hour_at_30m_backstop"`
	RequestRatio           float64       `json:"request_ratio"`
}

// RunFreshness runs three ways in turn, each in an environment of its own:
// notifications with no latency, notifications with NotifyLatency, and
// polling every PollInterval.
func RunFreshness(ctx context.Context, o FreshnessOptions) (*FreshnessResult, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	res := &FreshnessResult{Instances: o.Instances, Users: o.Users, PollInterval: o.PollInterval}
	// The quiet window sees each run's own schedule: the backstop is set so
	// that its ratio to the poll interval is the defaults' (30 min : 5 min).
	res.Backstop = 6 * o.PollInterval
	for _, m := range []struct {
		name    string
		notify  bool
		latency time.Duration
	}{{"notifications, latency 0", true, 0}, {fmt.Sprintf("notifications, latency %s", o.NotifyLatency), true, o.NotifyLatency}, {fmt.Sprintf("polling every %s", o.PollInterval), false, 0}} {
		fmt.Fprintf(o.Log, "freshness: %s\n", m.name)
		// Request rates are measured with no latency and with polling; the
		// quiet window covers at least two backstop rounds.
		quiet := o.Quiet
		if m.notify {
			quiet = max(quiet, 2*res.Backstop)
		}
		if m.latency > 0 {
			quiet = 0
		}
		run, err := freshnessRun(ctx, o, m.notify, m.latency, res.Backstop, quiet)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.name, err)
		}
		run.Name = m.name
		res.Runs = append(res.Runs, *run)
	}
	// Per instance and hour at the defaults: a quiet tenant's round costs
	// what was measured; polling runs 12 an hour, the backstop 2 (skipped
	// ticks cost no request: see QuietRequests against QuietRounds).
	res.PollPerHourAtDefault = res.Runs[2].RequestsPerRound * 12
	res.NotifyPerHourAtDefault = res.Runs[0].RequestsPerRound * 2
	if res.NotifyPerHourAtDefault > 0 {
		res.RequestRatio = res.PollPerHourAtDefault / res.NotifyPerHourAtDefault
	}
	return res, nil
}

func freshnessRun(ctx context.Context, o FreshnessOptions, withNotify bool, latency, backstop, quiet time.Duration) (*FreshnessRun, error) {
	sim := graphsim.Options{Tenants: o.Instances, Users: o.Users, Groups: max(1, o.Users/10), Seed: 21, NoThrottling: true, NotifyLatency: latency}
	var hooks *httptest.Server
	late := &lateHandler{}
	if withNotify {
		hooks = httptest.NewTLSServer(late)
		defer hooks.Close()
		sim.NotifyClient = hooks.Client()
	}
	opts := Options{Binary: o.Binary, Sim: sim, Log: o.Log}
	var master []byte
	var keyFile string
	if withNotify {
		master = make([]byte, 32)
		_, _ = rand.Read(master)
		dir, err := os.MkdirTemp("", "m365-fresh-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		keyFile = filepath.Join(dir, "default.notify-key")
		if err := os.WriteFile(keyFile, []byte(base64.RawURLEncoding.EncodeToString(notify.PoolKey(master, jobs.DefaultPool))), 0o600); err != nil {
			return nil, err
		}
		opts.WorkerArgs = []string{"--notify-url", hooks.URL, "--notify-key-file", keyFile, "--notify-backstop", backstop.String()}
	}
	e, err := Start(opts)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	if withNotify {
		recv, err := notify.New(notify.Config{Master: master, JetStream: e.JS, Spacing: 200 * time.Millisecond})
		if err != nil {
			return nil, err
		}
		defer recv.Close()
		var h http.Handler = recv
		late.set(h)
	}
	// Ticks every PollInterval; with notifications healthy they are the
	// backstop, running a round only every backstop.
	creds := e.Sim.Credentials()
	for i := range o.Instances {
		if err := e.AddTenant(ctx, instanceName(i), creds[i], o.PollInterval); err != nil {
			return nil, err
		}
	}
	if err := e.StartWorkers(ctx, 1, 0); err != nil {
		return nil, err
	}
	// The first (full) rounds, which also make the subscriptions.
	for i := range o.Instances {
		if rep, _, err := e.Sync(ctx, instanceName(i), true); err != nil || rep.Outcome != jobs.OutcomeSucceeded {
			return nil, fmt.Errorf("first round of %s: %+v %v", instanceName(i), rep, err)
		}
	}
	seen, stop, err := tailUsers(ctx, e.JS)
	if err != nil {
		return nil, err
	}
	defer stop()

	// Quiet: the request rate of tenants that do not change.
	run := &FreshnessRun{}
	if quiet > 0 {
		q0, t0 := e.Sim.Requests.Load(), time.Now()
		if err := sleepCtx(ctx, quiet); err != nil {
			return nil, err
		}
		run.QuietRequests = e.Sim.Requests.Load() - q0
		if run.QuietRounds, run.QuietSkips, err = scheduledRounds(ctx, e.JS, t0, time.Now()); err != nil {
			return nil, err
		}
		run.RequestsPerRound = float64(run.QuietRequests) / float64(max(run.QuietRounds, 1))
	}

	// Changes: a user created in a random instance, one at a time at random
	// moments, so that polling sees them at every point of its interval.
	r := mrand.New(mrand.NewPCG(5, 21))
	spread := max(o.PollInterval*2, 10*time.Second)
	made := map[string]time.Time{}
	for k := range o.Changes {
		i := r.IntN(o.Instances)
		alias := fmt.Sprintf("fresh-%d", k)
		if err := e.Sim.Mutate(creds[i].TenantID, func(a *graphsim.Admin) error { a.CreateUser(alias, "Fresh "+alias); return nil }); err != nil {
			return nil, err
		}
		made[alias] = time.Now()
		if err := sleepCtx(ctx, time.Duration(r.Int64N(max(1, int64(2*spread)/int64(max(o.Changes, 1)))))); err != nil {
			return nil, err
		}
	}
	deadline := time.Now().Add(o.PollInterval + backstop + time.Minute)
	var lat []time.Duration
	for {
		lat = lat[:0]
		seen.mu.Lock()
		for alias, t0 := range made {
			if t, ok := seen.at[alias]; ok {
				lat = append(lat, t.Sub(t0))
			}
		}
		seen.mu.Unlock()
		if len(lat) == len(made) || time.Now().After(deadline) {
			break
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
	run.Changes, run.Seen = len(made), len(lat)
	slices.Sort(lat)
	if len(lat) > 0 {
		run.P50, run.P99, run.Max = pct(lat, 50), pct(lat, 99), lat[len(lat)-1]
		run.P50MS, run.P99MS, run.MaxMS = run.P50.Milliseconds(), run.P99.Milliseconds(), run.Max.Milliseconds()
	}
	return run, nil
}

// scheduledRounds counts the scheduled rounds that ran, and the ticks
// closed as not due, between from and to.
func scheduledRounds(ctx context.Context, js jetstream.JetStream, from, to time.Time) (rounds, skips int, err error) {
	c, err := js.OrderedConsumer(ctx, "M365_RESULTS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"m365.results.*.syncs"}})
	if err != nil {
		return 0, 0, err
	}
	for {
		b, err := c.Fetch(500, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return 0, 0, err
		}
		n := 0
		for m := range b.Messages() {
			n++
			var r jobs.SyncReport
			if json.Unmarshal(m.Data(), &r) != nil || r.Trigger != jobs.TriggerSchedule || r.FinishedAt.Before(from) || r.FinishedAt.After(to) {
				continue
			}
			switch r.Outcome {
			case jobs.OutcomeSucceeded:
				rounds++
			case jobs.OutcomeSkipped:
				skips++
			}
		}
		if n == 0 {
			return rounds, skips, nil
		}
	}
}

func instanceName(i int) string { return fmt.Sprintf("t%03d", i) }

func pct(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// seenUsers records when each user alias first reached the results stream.
type seenUsers struct {
	mu sync.Mutex
	at map[string]time.Time
}

// tailUsers follows every instance's user deltas.
func tailUsers(ctx context.Context, js jetstream.JetStream) (*seenUsers, func(), error) {
	s := &seenUsers{at: map[string]time.Time{}}
	c, err := js.OrderedConsumer(ctx, "M365_RESULTS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"m365.results.*.assets." + jobs.AssetUser},
		DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return nil, nil, err
	}
	cc, err := c.Consume(func(m jetstream.Msg) {
		var d jobs.AssetDelta
		if json.Unmarshal(m.Data(), &d) != nil {
			return
		}
		now := time.Now()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, ch := range d.Changes {
			var u struct {
				UPN string `json:"userPrincipalName"`
			}
			if ch.Op != jobs.OpUpsert || json.Unmarshal(ch.Asset, &u) != nil {
				continue
			}
			alias, _, _ := strings.Cut(u.UPN, "@")
			if _, ok := s.at[alias]; !ok {
				s.at[alias] = now
			}
		}
	})
	if err != nil {
		return nil, nil, err
	}
	return s, cc.Stop, nil
}

// lateHandler serves h once it is set (the receiver needs JetStream, which
// starts after the simulator that calls it).
type lateHandler struct {
	mu sync.RWMutex
	h  http.Handler
}

func (l *lateHandler) set(h http.Handler) { l.mu.Lock(); l.h = h; l.mu.Unlock() }

func (l *lateHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	l.mu.RLock()
	h := l.h
	l.mu.RUnlock()
	if h == nil {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	h.ServeHTTP(w, r)
}

package graphclient_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/graphsim/graphsimtest"
)

func startSim(t testing.TB, o graphsim.Options) *graphsim.Server {
	t.Helper()
	return graphsimtest.Start(t, o)
}

// simConfig is the client configuration of a simulator tenant.
func simConfig(sim *graphsim.Server, i int) graphclient.Config {
	c := sim.Credentials()[i]
	return graphclient.Config{Instance: fmt.Sprintf("inst%d", i), TenantID: c.TenantID, ClientID: c.ClientID, ClientSecret: c.ClientSecret,
		Authority: c.Authority, GraphRoot: c.GraphRoot, CAPEM: sim.CAPEM()}
}

func newClient(t testing.TB, pool *graphclient.Pool, cfg graphclient.Config) *graphclient.Client {
	t.Helper()
	c, err := pool.Client(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// drive runs SubscribedSkus calls (3 RU each) from many goroutines through
// each client until the deadline, and returns successes and throttled
// responses seen by the clients.
func drive(t *testing.T, clients []*graphclient.Client, d time.Duration) (ok int64) {
	var wg sync.WaitGroup
	var okN atomic.Int64
	deadline := time.Now().Add(d)
	for _, c := range clients {
		for g := 0; g < 12; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					ctx, cancel := context.WithDeadline(context.Background(), deadline)
					_, err := c.Graph.SubscribedSkus().Get(ctx, nil)
					cancel()
					if err == nil {
						okN.Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	return okN.Load()
}

var simScale = 1.5 // budget windows run 1.5 times as fast

// windows is two and a half budget windows of wall-clock time.
var windows = time.Duration(25 / simScale * float64(time.Second))

func checkBudgetUse(t *testing.T, clients []*graphclient.Client, ok int64, elapsed time.Duration) {
	t.Helper()
	var requests, throttled int64
	for _, c := range clients {
		s := c.Stats()
		requests += s.Requests
		throttled += s.Throttled
	}
	model := elapsed.Seconds() * simScale
	budget := 3500 + 350*model // a full bucket plus its refill
	used := float64(ok*3) / budget
	t.Logf("%d calls, %d requests, %d throttled, %.0f of %.0f RU used (%.1f %%)", ok, requests, throttled, float64(ok*3), budget, used*100)
	if float64(throttled) > 0.01*float64(requests) {
		t.Errorf("%d of %d responses throttled (more than 1 %%)", throttled, requests)
	}
	if used < 0.9 {
		t.Errorf("used %.1f %% of the budget, want at least 90 %%", used*100)
	}
}

func TestPacingOneClientAtThreeTimesBudget(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 20, Groups: 2, TimeScale: simScale})
	pool := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, TimeScale: simScale, MaxWait: time.Minute})
	c := newClient(t, pool, simConfig(sim, 0))
	if _, err := c.Graph.SubscribedSkus().Get(context.Background(), nil); err != nil { // token
		t.Fatal(err)
	}
	start := time.Now()
	ok := drive(t, []*graphclient.Client{c}, windows)
	checkBudgetUse(t, []*graphclient.Client{c}, ok+1, time.Since(start))
}

func TestPacingThreeWorkersShareATenant(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 20, Groups: 2, TimeScale: simScale})
	var clients []*graphclient.Client
	for i := 0; i < 3; i++ {
		pool := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, TimeScale: simScale, MaxWait: time.Minute, Workers: func() int { return 3 }})
		c := newClient(t, pool, simConfig(sim, 0))
		if _, err := c.Graph.SubscribedSkus().Get(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	start := time.Now()
	ok := drive(t, clients, windows)
	checkBudgetUse(t, clients, ok+3, time.Since(start))
}

func TestRetryAfterHonouredExactly(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true})
	cfg := simConfig(sim, 0)
	pool := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true})
	c := newClient(t, pool, cfg)
	ctx := context.Background()
	if _, err := c.Graph.SubscribedSkus().Get(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		wait   time.Duration
		asDate bool
		least  time.Duration
	}{
		{"fractional seconds", 500 * time.Millisecond, false, 500 * time.Millisecond},
		// An HTTP date has one-second resolution: the wait is at least
		// what is left of the second it names.
		{"HTTP date", 2 * time.Second, true, time.Second},
	} {
		_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error { a.ThrottleNextWith(1, tc.wait, tc.asDate); return nil })
		before := c.Stats()
		t0 := time.Now()
		if _, err := c.Graph.SubscribedSkus().Get(ctx, nil); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		el := time.Since(t0)
		d := c.Stats().Sub(before)
		if d.Throttled != 1 || d.Retries != 1 || d.Requests != 2 {
			t.Errorf("%s: %+v", tc.name, d)
		}
		if el < tc.least {
			t.Errorf("%s: Retry-After %s honoured after only %s", tc.name, tc.wait, el)
		}
	}
}

func TestLongRetryAfterReturnsTheWait(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true})
	cfg := simConfig(sim, 0)
	pool := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, MaxWait: time.Second})
	c := newClient(t, pool, cfg)
	_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error { a.ThrottleNextWith(1, 90*time.Second, false); return nil })
	t0 := time.Now()
	_, err := c.Graph.SubscribedSkus().Get(context.Background(), nil)
	var ge *graphclient.Error
	if !errors.Is(err, graphclient.ErrThrottled) || !errors.As(err, &ge) || ge.RetryAfter < 89*time.Second {
		t.Fatalf("got %v, want a throttled error carrying about 90s", err)
	}
	if time.Since(t0) > 30*time.Second {
		t.Errorf("held the caller for %s", time.Since(t0))
	}
	// The tenant stays paused: the next call returns at once with the rest
	// of the wait, without a request.
	before := c.Stats()
	_, err = c.Graph.SubscribedSkus().Get(context.Background(), nil)
	if !errors.As(err, &ge) || ge.RetryAfter < 80*time.Second || c.Stats().Sub(before).Requests != 0 {
		t.Errorf("paused tenant: %v, %+v", err, c.Stats().Sub(before))
	}
}

func TestWrongSecretFailsFast(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 10, Groups: 1, NoThrottling: true})
	cfg := simConfig(sim, 0)
	cfg.ClientSecret = "not-the-secret"
	pool := graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true, AuthBackoff: time.Hour})
	c := newClient(t, pool, cfg)
	before := sim.Tokens.Load()
	for i := 0; i < 5; i++ {
		_, err := c.Graph.Users().Get(context.Background(), nil)
		var ge *graphclient.Error
		if !errors.As(err, &ge) || ge.Code != "AADSTS7000215" || !errors.Is(err, graphclient.ErrAuth) || !strings.Contains(err.Error(), "client secret is wrong") {
			t.Fatalf("call %d: %v", i, err)
		}
		if strings.Contains(err.Error(), "not-the-secret") {
			t.Fatal("the error shows the secret")
		}
	}
	if n := sim.Tokens.Load() - before; n != 1 {
		t.Errorf("%d token requests for 5 calls within one backoff step, want 1", n)
	}
	if sim.Requests.Load() != 0 {
		t.Errorf("%d Graph requests without a token", sim.Requests.Load())
	}
}

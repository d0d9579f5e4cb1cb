package graphclient_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphclient/graphsim"
	"github.com/tevyra/m365-worker/internal/slot"
)

// A guarded context sends nothing once its guard refuses: the worker's
// lock check before every Graph request.
func TestGuardStopsRequests(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 5, Groups: 1, NoThrottling: true})
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), simConfig(sim, 0))
	held := true
	lost := errors.New("lock lost")
	ctx := graphclient.WithGuard(context.Background(), func() error {
		if held {
			return nil
		}
		return lost
	})
	if _, err := c.SubscribedSKUs(ctx); err != nil {
		t.Fatal(err)
	}
	before := c.Stats().Requests
	held = false
	if _, err := c.SubscribedSKUs(ctx); !errors.Is(err, lost) {
		t.Fatalf("guarded request after the loss: %v", err)
	}
	if err := c.ListUsers(ctx, "", func([]graphclient.User) error { return nil }); !errors.Is(err, lost) {
		t.Fatalf("bulk read after the loss: %v", err)
	}
	if n := c.Stats().Requests - before; n != 0 {
		t.Fatalf("%d requests sent after the guard refused", n)
	}
}

type countingParker struct{ parked, unparked, now, peak atomic.Int64 }

func (p *countingParker) Park() {
	p.parked.Add(1)
	if n := p.now.Add(1); n > p.peak.Load() {
		p.peak.Store(n)
	}
}
func (p *countingParker) Unpark() { p.unparked.Add(1); p.now.Add(-1) }

// Every request parks its job while it waits on Graph (SDK calls and bulk
// reads alike), and unparks it when Graph has answered.
func TestRequestsParkTheirJob(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 30, Groups: 2, NoThrottling: true})
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), simConfig(sim, 0))
	p := &countingParker{}
	ctx := slot.With(context.Background(), p)
	if _, err := c.SubscribedSKUs(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.ListUsers(ctx, "", func([]graphclient.User) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if p.parked.Load() < 2 || p.parked.Load() != p.unparked.Load() || p.now.Load() != 0 {
		t.Fatalf("parked %d, unparked %d, still parked %d", p.parked.Load(), p.unparked.Load(), p.now.Load())
	}
}

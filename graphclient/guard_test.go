package graphclient_test

import (
	"context"
	"errors"
	"testing"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
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

package graphclient_test

import (
	"context"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

// While a walk's page is being handled (a round's handler may wait on
// JetStream), the next page is already requested, so that a walk of many
// pages costs Graph's latency, not Graph's plus the handler's. Each walk's
// handler of the first page waits until the simulator has received the
// second page's request: without the read-ahead it would wait forever.
func TestNextPageIsRequestedWhileAPageIsHandled(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 1200, Groups: 450})
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), simConfig(sim, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.SubscribedSKUs(ctx); err != nil { // the token
		t.Fatal(err)
	}
	waitAhead := func(first *bool, before int64) error {
		if *first {
			return nil
		}
		*first = true
		for sim.Requests.Load() < before+2 {
			if ctx.Err() != nil {
				t.Fatal("the next page was not requested while the first was handled")
			}
			time.Sleep(5 * time.Millisecond)
		}
		return nil
	}
	walks := map[string]func(before int64) error{
		"list users": func(before int64) error {
			var first bool
			return c.ListUsers(ctx, "", func([]graphclient.User) error { return waitAhead(&first, before) })
		},
		"user delta": func(before int64) error {
			var first bool
			_, err := c.UserDelta(ctx, "", func([]graphclient.UserChange) error { return waitAhead(&first, before) })
			return err
		},
		"group delta": func(before int64) error {
			var first bool
			_, err := c.GroupDelta(ctx, "", func([]graphclient.GroupChange) error { return waitAhead(&first, before) })
			return err
		},
	}
	for name, walk := range walks {
		if err := walk(sim.Requests.Load()); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

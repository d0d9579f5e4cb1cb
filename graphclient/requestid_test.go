package graphclient_test

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

var guid = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Every request carries a client-request-id GUID, the client's own reads
// (user segments, both deltas, deleted items, $batch) as well as the SDK's,
// and a failed request's error names it beside Graph's request-id.
func TestEveryRequestCarriesAClientRequestID(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 30, Groups: 4, NoThrottling: true})
	cfg := simConfig(sim, 0)
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), cfg)
	ctx := context.Background()
	if err := c.ListUsers(ctx, "", func([]graphclient.User) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UserDelta(ctx, "", func([]graphclient.UserChange) error { return nil }); err != nil {
		t.Fatal(err)
	}
	glink, err := c.GroupDelta(ctx, "", func([]graphclient.GroupChange) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RecycledID(ctx, "nobody@"+sim.Credentials()[0].Domain, false); err != nil && !errors.Is(err, graphclient.ErrNotFound) {
		t.Fatal(err)
	}
	for _, v := range sim.Conformance().Violations {
		if v.Rule == "client-request-id" {
			t.Errorf("%s", v)
		}
	}
	// An error answer read by the client's own code names both ids.
	_ = sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error { a.ResetDelta(); return nil })
	_, err = c.GroupDelta(ctx, glink, func([]graphclient.GroupChange) error { return nil })
	var ge *graphclient.Error
	if !errors.As(err, &ge) || !guid.MatchString(ge.ClientRequestID) || ge.RequestID == "" ||
		!strings.Contains(err.Error(), "client-request-id "+ge.ClientRequestID) {
		t.Fatalf("a refused delta: %v (client-request-id %q)", err, ge.ClientRequestID)
	}
}

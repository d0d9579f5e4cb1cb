package graphclient_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

// A user record's licences are named from the SKUs the client has read:
// subscribedSkus (3 resource units) is read again only for a SKU it has not
// named yet, and a SKU the tenant does not list stays unnamed.
func TestSKUNamesAreReadOnlyForSKUsNotNamedYet(t *testing.T) {
	sim := startSim(t, graphsim.Options{Users: 20})
	cfg := simConfig(sim, 0)
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.CountUsers(ctx); err != nil { // the token
		t.Fatal(err)
	}
	snap, err := sim.Export(cfg.TenantID)
	if err != nil || len(snap.SKUs) < 2 {
		t.Fatalf("the tenant's SKUs: %v (%v)", snap, err)
	}
	a, b := snap.SKUs[0], snap.SKUs[1]
	var parts map[string]string
	names := func(ids ...string) int64 {
		t.Helper()
		before := sim.Requests.Load()
		if parts, err = c.SKUPartNumbers(ctx, ids); err != nil {
			t.Fatal(err)
		}
		return sim.Requests.Load() - before
	}
	if n := names(strings.ToUpper(a.SkuID)); n != 1 || parts[strings.ToLower(a.SkuID)] != a.SkuPartNumber {
		t.Fatalf("first naming: %d requests, %q named %q (want 1 request, %q)", n, a.SkuID, parts[strings.ToLower(a.SkuID)], a.SkuPartNumber)
	}
	if n := names(a.SkuID, b.SkuID); n != 0 || parts[strings.ToLower(b.SkuID)] != b.SkuPartNumber {
		t.Fatalf("SKUs named already: %d requests, %q named %q", n, b.SkuID, parts[strings.ToLower(b.SkuID)])
	}
	if n := names(); n != 0 {
		t.Fatalf("a user without licences: %d requests", n)
	}

	// A subscription bought since: read again, and named.
	const added = "4b9405b0-7788-4568-add1-99614e613b69"
	if err := sim.Mutate(cfg.TenantID, func(ad *graphsim.Admin) error {
		ad.AddSKU(graphsim.SKU{SkuID: added, SkuPartNumber: "EXCHANGESTANDARD", Enabled: 5})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := names(a.SkuID, added); n != 1 || parts[added] != "EXCHANGESTANDARD" {
		t.Fatalf("a SKU bought since: %d requests, named %q", n, parts[added])
	}
	if n := names(added); n != 0 {
		t.Fatalf("the new SKU named again: %d requests", n)
	}

	// A SKU the tenant does not list: read each time, never named.
	const gone = "00000000-0000-0000-0000-00000000dead"
	for range 2 {
		if n := names(gone); n != 1 {
			t.Fatalf("a SKU the tenant does not list: %d requests, want 1", n)
		}
		if name, ok := parts[gone]; ok {
			t.Fatalf("a SKU the tenant does not list named %q", name)
		}
	}
	// The list read by others (a round, a licence action) names SKUs too.
	c2 := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), cfg)
	if _, err := c2.SubscribedSKUs(ctx); err != nil {
		t.Fatal(err)
	}
	before := sim.Requests.Load()
	if parts, err := c2.SKUPartNumbers(ctx, []string{b.SkuID, added}); err != nil || sim.Requests.Load() != before || parts[added] != "EXCHANGESTANDARD" {
		t.Fatalf("after a subscribedSkus read: %d requests, %v (%v)", sim.Requests.Load()-before, parts, err)
	}
}

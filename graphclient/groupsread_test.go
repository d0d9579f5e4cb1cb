package graphclient_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

// A tenant's groups read by listing their ids and then by delta filtered on
// chunks of them: every group once, with all its members (the large ones
// arrive in pieces), and no request beyond Graph's bounds on a delta filter
// (50 ids) and a URL (2,048 characters).
func TestGroupsReadByChunksOfIDs(t *testing.T) {
	var mu sync.Mutex
	var longest, most int
	sim := startSim(t, graphsim.Options{Users: 5000, Groups: 130, DeltaPageSize: 9, NoThrottling: true, BeforeRequest: func(r *http.Request) {
		if r.URL.Path != "/v1.0/groups/delta" || !r.URL.Query().Has("$filter") {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		longest = max(longest, len("https://graph.microsoft.com"+r.URL.RequestURI()))
		most = max(most, strings.Count(r.URL.Query().Get("$filter"), "id eq "))
	}})
	c := newClient(t, graphclient.NewPool(graphclient.PoolConfig{AllowEndpointOverrides: true}), simConfig(sim, 0))
	ctx := context.Background()
	var ids []string
	if err := c.ListGroupIDs(ctx, func(page []string) error { ids = append(ids, page...); return nil }); err != nil {
		t.Fatal(err)
	}
	chunks := graphclient.DeltaIDChunks(ids)
	if len(chunks) < 3 || !slices.Equal(slices.Concat(chunks...), ids) {
		t.Fatalf("%d ids in %d chunks that do not add up to them", len(ids), len(chunks))
	}
	members := map[string]map[string]bool{}
	for _, chunk := range chunks {
		err := c.GroupDeltaOf(ctx, chunk, func(page []graphclient.GroupChange) error {
			for _, ch := range page {
				if !slices.Contains(chunk, ch.ID) {
					t.Errorf("group %s is not in its chunk", ch.ID)
				}
				if members[ch.ID] == nil {
					members[ch.ID] = map[string]bool{}
				}
				for _, m := range ch.MembersAdded {
					members[ch.ID][m] = true
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	snap, err := sim.Export(sim.Credentials()[0].TenantID)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != len(snap.Groups) {
		t.Fatalf("read %d groups; the tenant has %d", len(members), len(snap.Groups))
	}
	large := 0
	for _, g := range snap.Groups {
		got := members[g.ID]
		if len(got) != len(g.Members) {
			t.Errorf("group %s: %d members read, %d in the tenant", g.ID, len(got), len(g.Members))
		}
		for _, m := range g.Members {
			if !got[m] {
				t.Errorf("group %s: member %s not read", g.ID, m)
				break
			}
		}
		if len(g.Members) > 500 {
			large++
		}
	}
	if large == 0 {
		t.Fatal("no group large enough to span delta entries")
	}
	if most > 50 || longest > 2048 {
		t.Errorf("a filtered delta request had %d ids and a URL of %d characters; Graph takes 50 and 2,048", most, longest)
	}
	t.Logf("%d groups in %d chunks; at most %d ids and %d characters a request", len(ids), len(chunks), most, longest)
}

package graphclient_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/graphsim"
)

// faultyTenant starts a small simulator tenant answering with faults, and a
// client with the given pool configuration.
func faultyTenant(t *testing.T, pc graphclient.PoolConfig, f graphsim.ResponseFaults) (*graphclient.Client, *graphsim.Snapshot) {
	t.Helper()
	sim := startSim(t, graphsim.Options{Users: 30, Groups: 4, NoThrottling: true})
	cfg := simConfig(sim, 0)
	snap, _ := sim.Export(cfg.TenantID)
	if err := sim.Mutate(cfg.TenantID, func(a *graphsim.Admin) error { a.SetResponseFaults(f); return nil }); err != nil {
		t.Fatal(err)
	}
	return newClient(t, graphclient.NewPool(pc), cfg), snap
}

// walks are the client's paging walks, each run to its end.
func walks(snap *graphsim.Snapshot) map[string]func(context.Context, *graphclient.Client) error {
	group := snap.Groups[0].ID
	for _, g := range snap.Groups {
		if len(g.Members) > 0 {
			group = g.ID
		}
	}
	return map[string]func(context.Context, *graphclient.Client) error{
		"list users": func(ctx context.Context, c *graphclient.Client) error {
			return c.ListUsers(ctx, "", func([]graphclient.User) error { return nil })
		},
		"user delta": func(ctx context.Context, c *graphclient.Client) error {
			_, err := c.UserDelta(ctx, "", func([]graphclient.UserChange) error { return nil })
			return err
		},
		"group delta": func(ctx context.Context, c *graphclient.Client) error {
			_, err := c.GroupDelta(ctx, "", func([]graphclient.GroupChange) error { return nil })
			return err
		},
		"list members of " + group: func(ctx context.Context, c *graphclient.Client) error {
			_, err := c.MemberIDs(ctx, group)
			return err
		},
	}
}

// isGraphFault checks that err is the typed, retryable ErrBadResponse of
// the named operation, its message containing want.
func isGraphFault(t *testing.T, op string, err error, want string) {
	t.Helper()
	var ge *graphclient.Error
	if !errors.Is(err, graphclient.ErrBadResponse) || !errors.Is(err, graphclient.ErrUnavailable) || !errors.As(err, &ge) || !ge.Retryable() {
		t.Fatalf("%s: %v, want a retryable ErrBadResponse", op, err)
	}
	if !strings.HasPrefix(err.Error(), op+": ") || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: %q should name the walk and say %q", op, err, want)
	}
}

// A Graph that returns the same nextLink again ends every walk at the
// repeat, after two requests (page one, then the link that links to
// itself).
func TestRepeatedNextLinkEndsTheWalk(t *testing.T) {
	c, snap := faultyTenant(t, graphclient.PoolConfig{AllowEndpointOverrides: true}, graphsim.ResponseFaults{RepeatNextLink: true})
	for op, run := range walks(snap) {
		t.Run(op, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			before := c.Stats()
			isGraphFault(t, op, run(ctx, c), "already read: its paging loops")
			if n := c.Stats().Sub(before).Requests; n != 2 {
				t.Errorf("%d requests, want 2 (page one and the repeated link once)", n)
			}
		})
	}
}

// An endless chain of distinct pages ends at PoolConfig.MaxPages, after
// exactly that many pages.
func TestEndlessPagingStopsAtTheCap(t *testing.T) {
	const maxPages = 25
	c, snap := faultyTenant(t, graphclient.PoolConfig{AllowEndpointOverrides: true, MaxPages: maxPages}, graphsim.ResponseFaults{EndlessPages: true})
	for op, run := range walks(snap) {
		t.Run(op, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			before := c.Stats()
			isGraphFault(t, op, run(ctx, c), "did not end after 25 pages (the cap, PoolConfig.MaxPages)")
			if n := c.Stats().Sub(before).Requests; n != maxPages {
				t.Errorf("%d requests, want %d", n, maxPages)
			}
		})
	}
}

// A page body over PoolConfig.MaxPageBytes fails the read, on the raw
// (ListUsers, UserDelta) and the SDK path (SubscribedSKUs) alike.
func TestPageBodyOverTheCap(t *testing.T) {
	c, _ := faultyTenant(t, graphclient.PoolConfig{AllowEndpointOverrides: true, MaxPageBytes: 2 << 10}, graphsim.ResponseFaults{})
	ctx := context.Background()
	err := c.ListUsers(ctx, "", func([]graphclient.User) error { return nil })
	isGraphFault(t, "list users", err, "exceeds 2048 bytes (the cap, PoolConfig.MaxPageBytes)")
	_, err = c.UserDelta(ctx, "", func([]graphclient.UserChange) error { return nil })
	isGraphFault(t, "user delta", err, "exceeds 2048 bytes")
	_, err = c.SubscribedSKUs(ctx)
	isGraphFault(t, "list subscribed SKUs", err, "exceeds 2048 bytes")
	// A small answer is read whole.
	if _, err := c.CountUsers(ctx); err != nil {
		t.Errorf("count under the cap: %v", err)
	}
}

// A huge error body is read only up to PoolConfig.MaxErrorBytes (a batch
// item's, inside a 200 envelope, is cut to the message cap): the *Error
// keeps the status and Graph's code, its message is the start of the text,
// marked truncated.
func TestHugeErrorBodyIsTruncated(t *testing.T) {
	for _, status := range []int{400, 503} {
		c, snap := faultyTenant(t, graphclient.PoolConfig{AllowEndpointOverrides: true, MaxAttempts: 2}, graphsim.ResponseFaults{HugeErrorBytes: 8 << 20, HugeErrorStatus: status})
		ctx := context.Background()
		_, sdkErr := c.GetUser(ctx, snap.Users[0].ID)
		rawErr := c.ListUsers(ctx, "", func([]graphclient.User) error { return nil })
		res, batchErr := c.Batch(ctx, []graphclient.BatchRequest{{ID: "1", Method: "GET", URL: "/users/" + snap.Users[0].ID}})
		if batchErr == nil {
			batchErr = res[0].Err()
		}
		for path, err := range map[string]error{"SDK": sdkErr, "raw": rawErr, "batch": batchErr} {
			var ge *graphclient.Error
			if !errors.As(err, &ge) || ge.Status != status {
				t.Fatalf("%d via %s: %v", status, path, err)
			}
			if len(ge.Message) > 5<<10 || !strings.Contains(ge.Message, "xxxxxxxx") || !strings.Contains(ge.Message, "truncated") {
				t.Errorf("%d via %s: message of %d bytes: %.200s", status, path, len(ge.Message), ge.Message)
			}
			if ge.Code != "generalException" {
				t.Errorf("%d via %s: code %q, want Graph's generalException", status, path, ge.Code)
			}
		}
	}
}

// A 204 No Content answer to $count is an error, not a nil dereference.
func TestCountAnsweredNoContent(t *testing.T) {
	c, _ := faultyTenant(t, graphclient.PoolConfig{AllowEndpointOverrides: true}, graphsim.ResponseFaults{NoContentCount: true})
	ctx := context.Background()
	_, err := c.CountUsers(ctx)
	isGraphFault(t, "count users", err, "without a body")
	_, err = c.CountDirectory(ctx)
	isGraphFault(t, "count users", err, "without a body")
}

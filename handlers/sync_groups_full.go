package handlers

import (
	"context"

	"github.com/tevyra/m365-worker/graphclient"
)

// defaultGroupSegmentsFrom is the group count from which a full round reads
// the groups in parallel: below it, the one delta walk from scratch is a few
// pages and costs fewer requests.
const defaultGroupSegmentsFrom = 1000

// groupReaders bounds the group reads a round runs at once (the users'
// segments run beside them; the tenant's pacer caps the requests in
// flight).
const groupReaders = 8

// fullGroups reads every group with its members for a full round and
// returns the deltaLink the next round follows: in parallel from a tracking
// point when the tenant has GroupSegmentsFrom groups or more, else by one
// delta walk from scratch.
func (r *round) fullGroups(c *graphclient.Client, apply graphclient.DeltaPage[graphclient.GroupChange]) (string, error) {
	if from := r.s.cfg.GroupSegmentsFrom; from >= 0 {
		n, err := c.CountGroups(r.ctx)
		if err != nil {
			return "", err
		}
		if n >= from {
			tracking, err := r.parallelGroups(c, apply)
			if err != nil {
				return "", err
			}
			// The changes made while the groups were read: applied over
			// what was read (idempotently), so none is lost.
			return c.GroupDelta(r.ctx, tracking, apply)
		}
	}
	return c.GroupDelta(r.ctx, "", apply)
}

// parallelGroups takes a group delta tracking point, then reads every group
// with its members and returns the point. Graph's group delta is one chain
// of pages that no filter splits except by id, and a list of groups
// expands at most 20 members each; so the round lists the group ids (999 a
// page) and, as each page arrives, reads its groups by delta filtered on
// their ids (with all their members, as the walk from scratch gives them),
// up to groupReaders chunks at once.
func (r *round) parallelGroups(c *graphclient.Client, apply graphclient.DeltaPage[graphclient.GroupChange]) (string, error) {
	tracking, err := c.GroupDelta(r.ctx, "latest", func([]graphclient.GroupChange) error { return nil })
	if err != nil {
		return "", err
	}
	readers := newFanOut(r.ctx, groupReaders, r.s.reads)
	err = c.ListGroupIDs(readers.ctx, func(ids []string) error {
		for _, chunk := range graphclient.DeltaIDChunks(ids) {
			readers.do(func(ctx context.Context) error { return c.GroupDeltaOf(ctx, chunk, apply) })
		}
		return nil
	})
	if err != nil {
		readers.cancel() // the listing failed: the reads stop too
		_ = readers.wait()
		return "", err
	}
	if err := readers.wait(); err != nil {
		return "", err
	}
	return tracking, nil
}

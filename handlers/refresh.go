package handlers

import (
	"context"
	"encoding/json"
	"sort"
	"strings"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/publisher"
	"github.com/tevyra/m365-worker/worker"
)

// Post-action refreshes: right after an action, the records it changed are
// published, so Tevyra shows the change before the next sync. The sync
// state remembers that a refresh published the object (keep, with
// refreshedHash): the next round publishes it again, so a later change that
// puts the object back the way an earlier round saw it is still published,
// and so is the object a cut-off round left stale. The flags the
// indicators counted are kept as they are; an object no round has counted
// yet is marked uncounted.

// refresh publishes one changed record and remembers it in the sync state.
func (a *Actions) refresh(ctx context.Context, j *worker.Job, typ string, ch jobs.AssetChange, keep func(old []byte, ok bool) []byte) {
	ctx = context.WithoutCancel(ctx)
	d := &jobs.AssetDelta{SchemaVersion: jobs.SchemaVersion, Instance: j.Job.Instance, SyncID: "action:" + j.ID, Type: typ,
		Mode: jobs.ModeIncremental, Batch: 1, Last: true, Changes: []jobs.AssetChange{ch}}
	msgID := "assets:action:" + j.Job.Instance + ":" + j.ID + ":" + typ + ":" + ch.ID
	if _, err := a.pub.Publish(ctx, publisher.Message{Subject: a.sub.Assets(j.Job.Instance, typ), MsgID: msgID, Value: d}); err != nil {
		j.Logger.Warn("action: post-action refresh not published; the next sync will carry the change", "error", err)
		return
	}
	// Compare-and-set: a round that writes the object's state meanwhile
	// has counted it, and keep runs again on what the round wrote.
	if err := j.State().UpdateAssetState(ctx, stateKind(typ), ch.ID, keep); err != nil {
		j.Logger.Warn("action: cannot record the refresh in the sync state; the next full round corrects it", "error", err)
	}
}

func stateKind(typ string) string {
	switch typ {
	case jobs.AssetUser:
		return state.AssetUser
	case jobs.AssetGroup:
		return state.AssetGroup
	}
	return state.AssetLicense
}

// deletedHash marks an object an action deleted: the round that sees the
// deletion still counts it out of the indicators.
const deletedHash = "-"

// refreshedHash is the hash a post-action refresh stores: no record has
// it, so the next round publishes the object again, whatever it reads. A
// round that read the object before the action may publish that older
// record after the refresh and be cut off before it stores the object's
// state; the state then holds the refresh's record, not what consumers
// last got, and only this keeps the next round from skipping the object
// (TestRoundAfterARefreshPublishesTheUserAgain; the chaos run with seed
// 589539 left a user stale that way). The cost: one more upsert of each
// object an action changed, in the next round.
const refreshedHash = "refreshed"

// keepUserLike remembers that a user or licence record was published by a
// refresh.
func keepUserLike(old []byte, ok bool) []byte {
	var st userState
	if !ok || json.Unmarshal(old, &st) != nil {
		st = userState{Uncounted: true}
	}
	st.Hash = refreshedHash
	b, _ := json.Marshal(st)
	return b
}

func (a *Actions) refreshDeleted(ctx context.Context, j *worker.Job, typ, id string) {
	a.refresh(ctx, j, typ, jobs.AssetChange{Op: jobs.OpDelete, ID: id, Reason: jobs.ReasonSoftDeleted}, func(old []byte, ok bool) []byte {
		if !ok {
			return nil // never published by a round: nothing to remember
		}
		var st map[string]any
		if json.Unmarshal(old, &st) != nil {
			return nil
		}
		st["h"] = deletedHash
		b, _ := json.Marshal(st)
		return b
	})
}

func (a *Actions) refreshUser(ctx context.Context, j *worker.Job, c *graphclient.Client, id string) {
	u, err := c.GetUser(ctx, id)
	if err != nil {
		j.Logger.Debug("action: post-action refresh skipped", "error", err)
		return
	}
	a.refreshUserRecord(ctx, j, c, u)
}

// refreshUserRecord publishes a user record already at hand. Its licences
// are named from what the client knows of the tenant's SKUs: subscribedSkus
// is read only for a SKU it has not seen yet.
func (a *Actions) refreshUserRecord(ctx context.Context, j *worker.Job, c *graphclient.Client, u *graphclient.User) {
	ids := make([]string, len(u.AssignedLicenses))
	for i, l := range u.AssignedLicenses {
		ids[i] = l.SkuID
	}
	part, err := c.SKUPartNumbers(ctx, ids)
	if err != nil {
		j.Logger.Debug("action: post-action refresh skipped", "error", err)
		return
	}
	raw, _ := json.Marshal(userAssetOf(u, part))
	a.refresh(ctx, j, jobs.AssetUser, jobs.AssetChange{Op: jobs.OpUpsert, ID: u.ID, Asset: raw}, keepUserLike)
}

func (a *Actions) refreshLicense(ctx context.Context, j *worker.Job, c *graphclient.Client, skuID string) {
	skus, err := c.SubscribedSKUs(ctx)
	if err != nil {
		return
	}
	for _, s := range skus {
		if strings.EqualFold(s.SkuID, skuID) {
			raw, _ := json.Marshal(licenseAssetOf(s))
			a.refresh(ctx, j, jobs.AssetLicense, jobs.AssetChange{Op: jobs.OpUpsert, ID: s.SkuID, Asset: raw}, keepUserLike)
		}
	}
}

func (a *Actions) refreshGroup(ctx context.Context, j *worker.Job, c *graphclient.Client, id string) {
	g, err := c.GetGroup(ctx, id)
	if err != nil {
		return
	}
	members, err := c.MemberIDs(ctx, id)
	if err != nil {
		return
	}
	a.refreshGroupRecord(ctx, j, g, members)
}

// refreshGroupRecord publishes a group record with its members, and keeps
// the record and members in the sync state the way a round keeps them.
func (a *Actions) refreshGroupRecord(ctx context.Context, j *worker.Job, g *graphclient.Group, members []string) {
	if len(members) > jobs.MaxInlineMembers {
		return // a large group is published in parts by the next round
	}
	members = append([]string(nil), members...)
	sort.Strings(members)
	raw := marshalGroup(g, members, false)
	rec, _ := json.Marshal(g)
	a.refresh(ctx, j, jobs.AssetGroup, jobs.AssetChange{Op: jobs.OpUpsert, ID: g.ID, Asset: raw}, func(old []byte, ok bool) []byte {
		var prev groupState
		uncounted := !ok || json.Unmarshal(old, &prev) != nil || prev.Uncounted
		return marshalGroupState(groupState{Hash: refreshedHash, Record: rec, Members: members, Uncounted: uncounted})
	})
}

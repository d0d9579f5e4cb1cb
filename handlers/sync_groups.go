package handlers

import (
	"encoding/json"
	"errors"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
)

func (r *round) syncGroups(c *graphclient.Client, link string) (string, error) {
	b := r.batcher(jobs.AssetGroup)
	defer func() { _ = b.wait() }() // on an error: the batch in flight ends with the round
	if b.mode == jobs.ModeFull {
		link = ""
	}
	// Groups touched this round, with their merged state; published once the
	// round is read (a large group spans pages).
	touched := map[string]*groupState{}
	// members is each touched group's member list, merged fragment by
	// fragment in time linear in the changes (a large group arrives in many
	// fragments), of interned ids (sync_ids.go).
	members := map[string]*memberList{}
	removed := map[string]string{}
	// stored is what an incremental round read of each touched group's
	// stored state (its raw value, read ahead, is let go once read).
	stored := map[string]storedGroup{}
	var order []string
	full := b.mode == jobs.ModeFull
	pages, objects, t0 := 0, 0, time.Now()
	var mu sync.Mutex // a full round reads in parallel; changes apply one at a time
	apply := func(page []graphclient.GroupChange) error {
		mu.Lock()
		defer mu.Unlock()
		pages++
		objects += len(page)
		r.prog.groups.pages.Add(1)
		r.prog.groups.objects.Add(int64(len(page)))
		if !full {
			keys := make([]assetRef, 0, len(page))
			for _, ch := range page {
				if touched[ch.ID] == nil && ch.Removed == "" {
					keys = append(keys, assetRef{state.AssetGroup, ch.ID})
				}
			}
			if err := r.prefetch(keys); err != nil {
				return err
			}
		}
		if pages%25 == 0 {
			r.log.Info("sync: groups in progress", "pages", pages, "objects", objects, "per_second", int(float64(objects)/time.Since(t0).Seconds()))
		}
		for _, ch := range page {
			if ch.Removed != "" {
				delete(touched, ch.ID)
				delete(members, ch.ID)
				removed[ch.ID] = ch.Removed
				continue
			}
			delete(removed, ch.ID)
			st, set := touched[ch.ID], members[ch.ID]
			if st == nil {
				st, set = &groupState{}, &memberList{}
				if !full {
					ok, err := r.getGroupState(ch.ID, st, set)
					if err != nil {
						return err
					}
					r.forget(assetRef{state.AssetGroup, ch.ID})
					stored[ch.ID] = storedOf(ok, st)
				}
				touched[ch.ID], members[ch.ID] = st, set
				order = append(order, ch.ID)
			}
			if ch.Group != nil {
				rec, _ := json.Marshal(ch.Group)
				st.Record = rec
			}
			set.added = slices.Grow(set.added, len(ch.MembersAdded))
			for _, m := range ch.MembersAdded {
				set.add(r.ids.intern(m))
			}
			for _, m := range ch.MembersRemoved {
				set.remove(r.ids.intern(m))
			}
		}
		r.job.Progress()
		return nil
	}
	var next string
	var err error
	if full {
		next, err = r.fullGroups(c, apply)
	} else {
		next, err = c.GroupDelta(r.ctx, link, apply)
		if errors.Is(err, graphclient.ErrDeltaExpired) && link != "" {
			r.log.Info("sync: group delta token expired or reset; running a full round")
			b.mode, full = jobs.ModeFull, true
			touched, members, removed, stored, order = map[string]*groupState{}, map[string]*memberList{}, map[string]string{}, map[string]storedGroup{}, nil
			next, err = r.fullGroups(c, apply)
		}
	}
	if err != nil {
		return "", err
	}
	r.log.Debug("sync: groups read", "pages", pages, "objects", objects, "touched", len(order), "removed", len(removed), "took", time.Since(t0).Round(time.Millisecond))
	if err := r.afterUsers(); err != nil {
		return "", err
	}
	r.log.Debug("sync: groups wait for the users", "took", time.Since(t0).Round(time.Millisecond))
	for _, id := range order {
		st := touched[id]
		if st == nil || st == publishedGroup {
			continue // removed, or listed again after a removal and published
		}
		var old *storedGroup
		switch {
		case !full:
			o := stored[id]
			old = &o
		case r.job.Rerun():
			// What an earlier attempt may have stored.
			var o groupState
			ok, err := r.getState(assetRef{state.AssetGroup, id}, &o)
			if err != nil {
				return "", err
			}
			so := storedOf(ok, &o)
			old = &so
		}
		if err := r.publishGroup(b, id, st, members[id], old); err != nil {
			return "", err
		}
		if full {
			r.mu.Lock()
			r.published.groups++ // a full round publishes every group it read
			r.mu.Unlock()
		}
		// touched now only says that the round saw the group.
		touched[id] = publishedGroup
		delete(members, id)
	}
	ids := make([]string, 0, len(removed))
	for id := range removed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		key := assetRef{state.AssetGroup, id}
		var old groupState
		if ok, err := r.getState(key, &old); err != nil {
			return "", err
		} else if !ok {
			continue
		}
		if !old.Uncounted {
			r.countGroup(-1)
		}
		reason := jobs.ReasonSoftDeleted
		if removed[id] == graphclient.RemovedHard {
			reason = jobs.ReasonHardDeleted
		}
		if err := b.add(jobs.AssetChange{Op: jobs.OpDelete, ID: id, Reason: reason}, groupDeleteOps(id, old)...); err != nil {
			return "", err
		}
	}
	if full {
		// A group delta removed is accounted for: deleted above (or
		// never published).
		seen := func(id string) bool { return touched[id] != nil || removed[id] != "" }
		if err := r.deleteMissing(b, state.AssetGroup, seen); err != nil {
			return "", err
		}
	}
	r.noteMode(b.mode)
	if err := r.afterLicences(); err != nil {
		return "", err
	}
	return next, b.flush(true)
}

// publishedGroup is a touched group's entry once it is published.
var publishedGroup = &groupState{}

// storedGroup is what a round keeps of a group's stored state once it has
// its members: whether it was stored, and its hash, count flag and number
// of member chunks.
type storedGroup struct {
	ok, uncounted bool
	hash          string
	chunks        int
}

// storedOf is what a round keeps of st, read from the state (ok: found).
func storedOf(ok bool, st *groupState) storedGroup {
	return storedGroup{ok: ok, hash: st.Hash, uncounted: st.Uncounted, chunks: st.MemberChunks}
}

// publishGroup publishes a touched group with its merged member list, unless
// consumers have it as stored (old; nil in a full round, which publishes
// everything), and stores its state with its last change.
func (r *round) publishGroup(b *batcher, id string, st *groupState, set *memberList, old *storedGroup) error {
	st.Members = set.strings(&r.ids)
	var g graphclient.Group
	_ = json.Unmarshal(st.Record, &g)
	g.ID = id
	raw := marshalGroup(&g, st.Members, false) // the whole record, for its hash
	oldChunks := 0
	if old != nil {
		oldChunks = old.chunks
		if old.ok && !old.uncounted && old.hash == hashOf(raw) {
			return nil
		}
		if !old.ok || old.uncounted {
			r.countGroup(1)
		}
		if old.ok && old.hash == hashOf(raw) {
			// Consumers have this record (a refresh by a worker older
			// than refreshedHash): it is only counted now.
			st.Hash, st.Uncounted = old.hash, false
			b.keep(groupStateOps(id, *st, oldChunks)...)
			return nil
		}
	}
	st.Hash, st.Uncounted = hashOf(raw), false
	// The state goes with the group's last change: stored once all of the
	// group is.
	changes := groupChanges(&g, st.Members, raw)
	for i, ch := range changes {
		var ops []stateOp
		if i == len(changes)-1 {
			ops = groupStateOps(id, *st, oldChunks)
		}
		if err := b.add(ch, ops...); err != nil {
			return err
		}
	}
	return nil
}

// groupAssetOf is the m365_group record of a group with its member ids.
func groupAssetOf(g *graphclient.Group, members []string) jobs.GroupAsset {
	a := jobs.GroupAsset{ID: g.ID, DisplayName: g.DisplayName, Description: g.Description, Mail: g.Mail, MailNickname: g.MailNickname,
		MailEnabled: g.MailEnabled, SecurityEnabled: g.SecurityEnabled, GroupTypes: g.GroupTypes, Visibility: g.Visibility,
		MembershipRule: g.MembershipRule, CreatedDateTime: g.CreatedDateTime, Members: members}
	if a.GroupTypes == nil {
		a.GroupTypes = []string{}
	}
	if a.Members == nil {
		a.Members = []string{}
	}
	return a
}

package handlers

import (
	"encoding/json"
	"errors"
	"sort"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
)

func (r *round) syncGroups(c *graphclient.Client, link string) (string, error) {
	b := r.batcher(jobs.AssetGroup)
	if b.mode == jobs.ModeFull {
		link = ""
	}
	// Groups touched this round, with their merged state; published once the
	// round is read (a large group spans pages).
	touched := map[string]*groupState{}
	// members is each touched group's member set, merged fragment by
	// fragment in time linear in the changes (a large group arrives in many
	// fragments).
	members := map[string]map[string]struct{}{}
	removed := map[string]string{}
	var order []string
	full := b.mode == jobs.ModeFull
	pages, objects, t0 := 0, 0, time.Now()
	apply := func(page []graphclient.GroupChange) error {
		pages++
		objects += len(page)
		r.prog.groups.pages.Add(1)
		r.prog.groups.objects.Add(int64(len(page)))
		if !full {
			keys := make([]assetRef, 0, len(page))
			for _, ch := range page {
				if touched[ch.ID] == nil {
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
			st := touched[ch.ID]
			if st == nil {
				st = &groupState{}
				if !full {
					if _, err := r.getState(assetRef{state.AssetGroup, ch.ID}, st); err != nil {
						return err
					}
					if err := r.loadMembers(ch.ID, st); err != nil {
						return err
					}
				}
				touched[ch.ID] = st
				order = append(order, ch.ID)
			}
			if ch.Group != nil {
				rec, _ := json.Marshal(ch.Group)
				st.Record = rec
			}
			set := members[ch.ID]
			if set == nil {
				set = make(map[string]struct{}, len(st.Members))
				for _, m := range st.Members {
					set[m] = struct{}{}
				}
				members[ch.ID] = set
			}
			for _, m := range ch.MembersAdded {
				set[m] = struct{}{}
			}
			for _, m := range ch.MembersRemoved {
				delete(set, m)
			}
		}
		r.job.Progress()
		return nil
	}
	next, err := c.GroupDelta(r.ctx, link, apply)
	if errors.Is(err, graphclient.ErrDeltaExpired) && link != "" {
		r.log.Info("sync: group delta token expired or reset; running a full round")
		b.mode, full = jobs.ModeFull, true
		touched, members, removed, order = map[string]*groupState{}, map[string]map[string]struct{}{}, map[string]string{}, nil
		next, err = c.GroupDelta(r.ctx, "", apply)
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
		if st == nil {
			continue
		}
		st.Members = make([]string, 0, len(members[id]))
		for m := range members[id] {
			st.Members = append(st.Members, m)
		}
		sort.Strings(st.Members)
		var g graphclient.Group
		_ = json.Unmarshal(st.Record, &g)
		g.ID = id
		raw, _ := json.Marshal(groupAssetOf(&g, st.Members)) // the whole record, for its hash
		key := assetRef{state.AssetGroup, id}
		oldChunks := 0
		if !full || r.job.Rerun() {
			// The stored state (an incremental round read it ahead with
			// its page: prefetch).
			var old groupState
			ok, err := r.getState(key, &old)
			if err != nil {
				return "", err
			}
			oldChunks = old.MemberChunks
			if ok && !old.Uncounted && old.Hash == hashOf(raw) {
				continue
			}
			if !ok || old.Uncounted {
				r.countGroup(1)
			}
			if ok && old.Hash == hashOf(raw) {
				// Consumers have this record (a post-action refresh): it
				// is only counted now.
				st.Hash, st.Uncounted = old.Hash, false
				b.keep(groupStateOps(id, *st, oldChunks)...)
				continue
			}
		}
		st.Hash, st.Uncounted = hashOf(raw), false
		// The state goes with the group's last change: stored once all of
		// the group is.
		changes := groupChanges(&g, st.Members)
		for i, ch := range changes {
			var ops []stateOp
			if i == len(changes)-1 {
				ops = groupStateOps(id, *st, oldChunks)
			}
			if err := b.add(ch, ops...); err != nil {
				return "", err
			}
		}
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
		seen := map[string]bool{}
		for id := range touched {
			seen[id] = true
		}
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

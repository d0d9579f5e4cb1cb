package handlers

import (
	"encoding/json"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
)

// licenseAssetOf is the m365_license record of a SKU.
func licenseAssetOf(s graphclient.SKU) jobs.LicenseAsset {
	plans := make([]jobs.ServicePlan, 0, len(s.ServicePlans))
	for _, p := range s.ServicePlans {
		plans = append(plans, jobs.ServicePlan{ServicePlanID: p.ID, ServicePlanName: p.Name, ProvisioningStatus: p.ProvisioningStatus, AppliesTo: p.AppliesTo})
	}
	return jobs.LicenseAsset{ID: s.ID, SkuID: s.SkuID, SkuPartNumber: s.SkuPartNumber, CapabilityStatus: s.CapabilityStatus, AppliesTo: s.AppliesTo,
		PrepaidUnits:  jobs.PrepaidUnits{Enabled: s.Enabled, Suspended: s.Suspended, Warning: s.Warning, LockedOut: s.LockedOut},
		ConsumedUnits: s.ConsumedUnits, AvailableUnits: s.Available(), ServicePlans: plans}
}

func (r *round) syncLicenses(skus []graphclient.SKU) error {
	b := r.batcher(jobs.AssetLicense)
	defer func() { _ = b.wait() }() // on an error: the batch in flight ends with the round
	seen := map[string]bool{}
	for _, s := range skus {
		raw, _ := json.Marshal(licenseAssetOf(s))
		key := assetRef{state.AssetLicense, s.SkuID}
		seen[s.SkuID] = true
		var old userState
		if ok, err := r.getState(key, &old); err != nil {
			return err
		} else if ok && old.Hash == hashOf(raw) {
			continue
		}
		if err := b.add(jobs.AssetChange{Op: jobs.OpUpsert, ID: s.SkuID, Asset: raw}, putState(key, userState{Hash: hashOf(raw)})); err != nil {
			return err
		}
	}
	// The SKU list is always complete: what is gone was removed.
	if err := r.deleteMissing(b, state.AssetLicense, func(id string) bool { return seen[id] }); err != nil {
		return err
	}
	return b.flush(true)
}

// indicators counts the synced state.
// An incremental first attempt adds the round's change to the last
// indicators; a round that started full counts what it published; any
// other full round, and a rerun, counts the state again.
func (r *round) indicators(skus []graphclient.SKU, prev *jobs.Indicators) (*jobs.Indicators, error) {
	ind := &jobs.Indicators{SchemaVersion: jobs.SchemaVersion, Instance: r.instance, SyncID: r.syncID, At: time.Now().UTC()}
	if r.mode == jobs.ModeIncremental && !r.job.Rerun() && prev != nil {
		ind.UsersTotal, ind.UsersEnabled = prev.UsersTotal+r.change.users, prev.UsersEnabled+r.change.enabled
		ind.UsersLicensed, ind.GroupsTotal = prev.UsersLicensed+r.change.licensed, prev.GroupsTotal+r.change.groups
		r.finishIndicators(ind, skus)
		return ind, nil
	}
	if r.selfCounted {
		// A full round's first attempt published every object there is.
		r.mu.Lock()
		u := r.published.users
		ind.UsersTotal, ind.UsersEnabled, ind.UsersLicensed, ind.GroupsTotal = u.users, u.enabled, u.licensed, r.published.groups
		r.mu.Unlock()
		r.finishIndicators(ind, skus)
		return ind, nil
	}
	// Objects only an action published so far are counted by the round
	// that sees them.
	err := r.state.EachAssetState(r.ctx, state.AssetGroup, func(_ string, raw []byte) {
		var st struct {
			Uncounted bool `json:"n"`
		}
		if json.Unmarshal(raw, &st) == nil && !st.Uncounted {
			ind.GroupsTotal++
		}
	})
	if err != nil {
		return nil, err
	}
	// The flags are in the users' states.
	err = r.state.EachAssetState(r.ctx, state.AssetUser, func(_ string, raw []byte) {
		var st userState
		if json.Unmarshal(raw, &st) != nil || st.Uncounted {
			return
		}
		ind.UsersTotal++
		ind.UsersEnabled += b2i(st.Enabled)
		ind.UsersLicensed += b2i(st.Licensed)
	})
	if err != nil {
		return nil, err
	}
	r.finishIndicators(ind, skus)
	return ind, nil
}

// finishIndicators adds the licence counts and the totals of the report.
func (r *round) finishIndicators(ind *jobs.Indicators, skus []graphclient.SKU) {
	for _, s := range skus {
		ind.LicensesTotal += s.Enabled
		ind.LicensesConsumed += s.ConsumedUnits
	}
	for typ, n := range map[string]int{jobs.AssetUser: ind.UsersTotal, jobs.AssetGroup: ind.GroupsTotal, jobs.AssetLicense: len(skus)} {
		c := r.counts[typ]
		c.Total = n
		r.counts[typ] = c
	}
}

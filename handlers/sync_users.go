package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
)

func (r *round) userAsset(u *graphclient.User) jobs.UserAsset { return userAssetOf(u, r.skuPart) }

// userAssetOf is the m365_user record of a user; skuPart maps lower-case
// skuIds to part numbers.
func userAssetOf(u *graphclient.User, skuPart map[string]string) jobs.UserAsset {
	a := jobs.UserAsset{ID: u.ID, UserPrincipalName: u.UserPrincipalName, DisplayName: u.DisplayName, GivenName: u.GivenName, Surname: u.Surname,
		Mail: u.Mail, JobTitle: u.JobTitle, Department: u.Department, OfficeLocation: u.OfficeLocation, MobilePhone: u.MobilePhone,
		BusinessPhones: u.BusinessPhones, AccountEnabled: u.AccountEnabled != nil && *u.AccountEnabled, UsageLocation: u.UsageLocation,
		CreatedDateTime: u.CreatedDateTime, OnPremisesSyncEnabled: u.OnPremisesSyncEnabled, AssignedLicenses: []jobs.AssignedLicense{}}
	if a.BusinessPhones == nil {
		a.BusinessPhones = []string{}
	}
	if u.UserType != nil {
		a.UserType = *u.UserType
	}
	for _, l := range u.AssignedLicenses {
		dp := l.DisabledPlans
		if dp == nil {
			dp = []string{}
		}
		a.AssignedLicenses = append(a.AssignedLicenses, jobs.AssignedLicense{SkuID: l.SkuID, SkuPartNumber: skuPart[strings.ToLower(l.SkuID)], DisabledPlans: dp})
	}
	return a
}

func (r *round) syncUsers(c *graphclient.Client, link string) (string, error) {
	b := r.batcher(jobs.AssetUser)
	defer func() { _ = b.wait() }()   // on an error: the batch in flight ends with the round
	seen := idSet{}                   // ids the round read, or deleted as delta removed them
	emitted := map[uint32]uint64{}    // id → userMark of what this round published
	var tally userTally               // the users in emitted
	counted := map[string]userState{} // id → state counted this round ({} once gone); not in a full round
	if b.mode == jobs.ModeFull {
		link = ""
	}
	pages, objects, t0 := 0, 0, time.Now()
	var mu sync.Mutex // segments are read in parallel; changes apply one at a time
	apply := func(page []graphclient.UserChange) error {
		if err := r.afterLicences(); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if b.mode != jobs.ModeFull || r.job.Rerun() {
			keys := make([]assetRef, 0, len(page))
			for _, ch := range page {
				if _, ok := counted[ch.ID]; !ok {
					keys = append(keys, assetRef{state.AssetUser, ch.ID})
				}
			}
			if err := r.prefetch(keys); err != nil {
				return err
			}
		}
		pages++
		objects += len(page)
		r.prog.users.pages.Add(1)
		r.prog.users.objects.Add(int64(len(page)))
		if pages%25 == 0 {
			r.log.Info("sync: users in progress", "pages", pages, "objects", objects, "per_second", int(float64(objects)/time.Since(t0).Seconds()))
		}
		for _, ch := range page {
			key := assetRef{state.AssetUser, ch.ID}
			i := r.ids.intern(ch.ID)
			if ch.Removed != "" {
				// Accounted for: deleted below (or never published), so
				// the pass for what the round did not see skips it.
				seen[i] = struct{}{}
				if m, ok := emitted[i]; ok {
					tally.add(m, -1)
					delete(emitted, i)
				}
				old, ok, err := r.lastUserState(counted, key, ch.ID)
				if err != nil {
					return err
				}
				if !ok {
					continue // never published: nothing to delete
				}
				counted[ch.ID] = userState{} // gone
				r.countUser(old, !old.Uncounted, userState{}, false)
				reason := jobs.ReasonSoftDeleted
				if ch.Removed == graphclient.RemovedHard {
					reason = jobs.ReasonHardDeleted
				}
				if err := b.add(jobs.AssetChange{Op: jobs.OpDelete, ID: ch.ID, Reason: reason}, deleteState(key)); err != nil {
					return err
				}
				continue
			}
			seen[i] = struct{}{}
			asset := r.userAsset(ch.User)
			raw, _ := json.Marshal(asset)
			st := userState{Hash: hashOf(raw), Enabled: asset.AccountEnabled, Licensed: len(asset.AssignedLicenses) > 0}
			mark := userMark(st)
			if m, ok := emitted[i]; ok && m == mark {
				continue // repeated in this round
			}
			if b.mode != jobs.ModeFull || r.job.Rerun() {
				// A full round publishes everything (unless it reruns);
				// an incremental one counts the indicators' change.
				old, ok, err := r.lastUserState(counted, key, ch.ID)
				if err != nil {
					return err
				}
				wasCounted := ok && !old.Uncounted
				if wasCounted && old.Hash == st.Hash && old.Enabled == st.Enabled && old.Licensed == st.Licensed {
					continue // unchanged (or a rerun)
				}
				counted[ch.ID] = st
				r.countUser(old, wasCounted, st, true)
				if ok && old.Hash == st.Hash {
					// Consumers have this record (a refresh by a worker
					// older than refreshedHash): only what the
					// indicators counted changes.
					b.keep(putState(key, st))
					continue
				}
			}
			if m, ok := emitted[i]; ok {
				tally.add(m, -1)
			}
			emitted[i] = mark
			tally.add(mark, 1)
			if err := b.add(jobs.AssetChange{Op: jobs.OpUpsert, ID: ch.ID, Asset: raw}, putState(key, st)); err != nil {
				return err
			}
		}
		r.job.Progress()
		return nil
	}
	// fullStart reads the tenant in parallel segments from a tracking
	// point and returns the point, for delta to follow from it. If the
	// segments do not cover the tenant it returns "": delta from scratch
	// then says which users exist, so what the segments saw is forgotten
	// and stored, and a user they read that the walk no longer lists
	// (deleted meanwhile, and not among its removals) is deleted as
	// missing.
	fullStart := func() (string, error) {
		tracking, ok, err := r.parallelUsers(c, apply)
		if err != nil || ok {
			return tracking, err
		}
		seen, emitted, tally = idSet{}, map[uint32]uint64{}, userTally{}
		return "", b.flushPending()
	}
	if b.mode == jobs.ModeFull {
		var err error
		if link, err = fullStart(); err != nil {
			return "", err
		}
	}
	next, err := c.UserDelta(r.ctx, link, apply)
	if errors.Is(err, graphclient.ErrDeltaExpired) && link != "" && b.mode != jobs.ModeFull {
		r.log.Info("sync: user delta token expired or reset; running a full round")
		b.mode = jobs.ModeFull
		seen = idSet{}
		from, ferr := fullStart()
		if ferr != nil {
			return "", ferr
		}
		next, err = c.UserDelta(r.ctx, from, apply)
	}
	if err != nil {
		return "", err
	}
	r.log.Debug("sync: users read", "pages", pages, "objects", objects, "took", time.Since(t0).Round(time.Millisecond))
	if b.mode == jobs.ModeFull {
		if err := r.deleteMissing(b, state.AssetUser, r.ids.in(seen)); err != nil {
			return "", err
		}
		r.log.Debug("sync: users stored, and those not seen deleted", "took", time.Since(t0).Round(time.Millisecond))
	}
	r.noteMode(b.mode)
	r.mu.Lock()
	r.published.users = tally
	r.mu.Unlock()
	if err := r.afterLicences(); err != nil {
		return "", err
	}
	return next, b.flush(true)
}

// userMark is what a round keeps of a user it published: the first 64 bits
// of its record's hash (enough to tell whether a record repeated within a
// round is the one already published) with the indicators' two flags in
// the lowest bits.
func userMark(st userState) uint64 {
	return hash64(st.Hash)&^3 | uint64(b2i(st.Enabled)) | uint64(b2i(st.Licensed))<<1
}

// userTally counts users and their indicator flags.
type userTally struct{ users, enabled, licensed int }

// add counts the user of mark sign times (1 or -1).
func (t *userTally) add(mark uint64, sign int) {
	t.users += sign
	t.enabled += sign * int(mark&1)
	t.licensed += sign * int(mark>>1&1)
}

// lastUserState is a user's state as this round last counted it, else as
// stored.
func (r *round) lastUserState(counted map[string]userState, key assetRef, id string) (userState, bool, error) {
	if st, ok := counted[id]; ok {
		return st, st.Hash != "", nil
	}
	var st userState
	ok, err := r.getState(key, &st)
	return st, ok, err
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// countUser records the indicators' change from old (if it existed) to
// new (if it exists).
func (r *round) countUser(old userState, hadOld bool, st userState, hasNew bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if hadOld {
		r.change.users--
		r.change.enabled -= b2i(old.Enabled)
		r.change.licensed -= b2i(old.Licensed)
	}
	if hasNew {
		r.change.users++
		r.change.enabled += b2i(st.Enabled)
		r.change.licensed += b2i(st.Licensed)
	}
}

func (r *round) countGroup(delta int) {
	r.mu.Lock()
	r.change.groups += delta
	r.mu.Unlock()
}

// noteMode makes the round full when one of its parts had to be.
func (r *round) noteMode(mode string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if mode == jobs.ModeFull {
		r.mode = jobs.ModeFull
	}
}

// userReaders bounds the user segments a full round reads at once. The
// tenant's pacer caps its requests in flight (16), which the group reads
// share: the users take the slots the groups leave, and more of them once
// the groups are read. At 300,000 users here, with 8 readers the users'
// reads took 30-35 s; with 12 or 16, full rounds of 32-41 s (the machine's
// noise), and 16 held more pages at once.
const userReaders = 12

// DefaultParallelReads bounds the parallel reads (user segments, group
// chunks) of every round a worker runs at once (SyncConfig.ParallelReads):
// one large tenant's full round (12 user readers, 8 group readers) has all
// it wants, while several at once share them. With 2,000 tenants on three
// workers, six large tenants' first rounds at once took a worker to 421 MB
// with no bound, and 243 MB with this one, their first rounds ending 43 s
// later (docs/BENCHMARKS.md).
const DefaultParallelReads = 24

// userSegments split a tenant's users by the first character of their UPN.
const userSegments = "abcdefghijklmnopqrstuvwxyz0123456789"

// parallelUsers takes a delta tracking point, then reads every user in
// parallel segments (one per first character of the UPN, 999 a page) within
// the tenant's budget. It reports ok=false when the segments do not add up to
// the tenant's user count (a UPN starting with another character): the
// caller then walks delta from scratch instead.
func (r *round) parallelUsers(c *graphclient.Client, apply graphclient.DeltaPage[graphclient.UserChange]) (string, bool, error) {
	tracking, err := c.UserDelta(r.ctx, "latest", func([]graphclient.UserChange) error { return nil })
	if err != nil {
		return "", false, err
	}
	total, err := c.CountUsers(r.ctx)
	if err != nil {
		return "", false, err
	}
	var (
		mu   sync.Mutex
		read int
	)
	readers := newFanOut(r.ctx, userReaders, r.s.reads)
	for _, ch := range userSegments {
		readers.do(func(ctx context.Context) error {
			return c.ListUsers(ctx, "startswith(userPrincipalName,'"+string(ch)+"')", func(page []graphclient.User) error {
				changes := make([]graphclient.UserChange, len(page))
				for i := range page {
					changes[i] = graphclient.UserChange{ID: page[i].ID, User: &page[i]}
				}
				mu.Lock()
				read += len(page)
				mu.Unlock()
				return apply(changes)
			})
		})
	}
	if err := readers.wait(); err != nil {
		return "", false, err
	}
	if read != total {
		r.log.Warn("sync: the UPN segments did not cover every user; reading the tenant by delta instead", "read", read, "count", total)
		return "", false, nil
	}
	return tracking, true, nil
}

// Package handlers holds the Graph-backed job handlers: the sync job and
// (as they land) the microsoft-365.* actions. They use graphclient for Graph,
// publisher for results and the state bucket for what must outlive a worker.
package handlers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/publisher"
	"github.com/tevyra/m365-worker/worker"
)

// SyncConfig configures the sync handler. Zero values take the defaults.
type SyncConfig struct {
	Topology worker.Topology
	// Graph hands out the paced Graph clients.
	Graph *graphclient.Pool
	// BatchChanges bounds the changes in one asset-delta message. Default
	// 200.
	BatchChanges int
	// BatchBytes bounds one asset-delta message (under the NATS payload
	// limit, 1 MiB by default). Default 512 KiB.
	BatchBytes int
	// RoundTimeout bounds one round: a Graph that never ends a walk must
	// not hold the instance's lock and a worker slot forever. Default 2h.
	RoundTimeout time.Duration
	Logger       *slog.Logger
}

// Syncer runs sync jobs.
type Syncer struct {
	cfg   SyncConfig
	pub   *publisher.Publisher
	subjs jobs.Subjects
}

// NewSyncer returns the sync handler publishing through js.
func NewSyncer(ctx context.Context, js jetstream.JetStream, cfg SyncConfig) (*Syncer, error) {
	if cfg.BatchChanges <= 0 {
		cfg.BatchChanges = 200
	}
	if cfg.BatchBytes <= 0 {
		cfg.BatchBytes = 512 << 10
	}
	if cfg.RoundTimeout <= 0 {
		cfg.RoundTimeout = 2 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Graph == nil {
		return nil, errors.New("sync: no Graph client pool")
	}
	return &Syncer{cfg: cfg, pub: publisher.New(js, publisher.Config{Subjects: cfg.Topology.Subjects}), subjs: cfg.Topology.Subjects}, nil
}

// Register adds the sync handler to reg: one round per instance at a time.
func (s *Syncer) Register(reg worker.Registry) {
	reg[jobs.ActionSync] = worker.Handler{Func: s.Handle, Exclusive: true}
}

// SyncMeta is an instance's sync state: delta links, the last round, and
// credential health. It lives in the instance's part of the state bucket.
type SyncMeta struct {
	UserLink    string    `json:"user_delta_link,omitempty"`
	GroupLink   string    `json:"group_delta_link,omitempty"`
	LastSyncID  string    `json:"last_sync_id,omitempty"`
	LastMode    string    `json:"last_mode,omitempty"`
	LastOutcome string    `json:"last_outcome,omitempty"`
	LastAt      time.Time `json:"last_at"`
	// LastDuration, LastCounts, LastRequests and LastThrottled describe the
	// last successful round.
	LastDuration  worker.Duration            `json:"last_duration,omitempty"`
	LastCounts    map[string]jobs.SyncCounts `json:"last_counts,omitempty"`
	LastRequests  int64                      `json:"last_graph_requests,omitempty"`
	LastThrottled int64                      `json:"last_throttled,omitempty"`
	Users         int                        `json:"users"`
	// AuthFailed is set while the instance's credentials are refused.
	AuthFailed bool   `json:"auth_failed,omitempty"`
	AuthError  string `json:"auth_error,omitempty"`
	// Indicators are the last published indicators.
	Indicators *jobs.Indicators `json:"indicators,omitempty"`
}

// ReadSyncMeta reads an instance's sync state (zero when it never synced).
func ReadSyncMeta(ctx context.Context, sc *state.Scope) (SyncMeta, error) {
	var m SyncMeta
	_, err := sc.SyncMeta(ctx, &m)
	return m, err
}

type userState struct {
	Hash     string `json:"h"`
	Enabled  bool   `json:"e,omitempty"`
	Licensed bool   `json:"l,omitempty"`
}

type groupState struct {
	Hash    string          `json:"h"`
	Record  json.RawMessage `json:"r"`
	Members []string        `json:"m"`
}

func hashOf(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:12])
}

// ClientConfig is the Graph client configuration of an instance; open
// opens its sealed secret (a worker's pool key).
func ClientConfig(in *worker.Instance, open func(*jobs.SealedSecret) ([]byte, error), users int) (graphclient.Config, error) {
	cfg := graphclient.Config{Instance: in.ID, TenantID: in.TenantID, ClientID: in.ClientID, Cloud: in.Cloud, Authority: in.Authority,
		GraphRoot: in.GraphRoot, CAPEM: []byte(in.CAPEM), HTTPProxy: in.HTTPProxy, Users: users}
	switch {
	case in.ClientSecret != nil:
		b, err := open(in.ClientSecret)
		if err != nil {
			return cfg, worker.Permanent(CodeSecretUnreadable, fmt.Sprintf("cannot open the client secret of %s: %v", in.ID, err))
		}
		cfg.ClientSecret = string(b)
	case in.CertificateKey != nil:
		b, err := open(in.CertificateKey)
		if err != nil {
			return cfg, worker.Permanent(CodeSecretUnreadable, fmt.Sprintf("cannot open the certificate key of %s: %v", in.ID, err))
		}
		cfg.CertificatePEM, cfg.PrivateKeyPEM = []byte(in.Certificate), b
	}
	return cfg, nil
}

// graphClient builds the job's instance's Graph client.
func graphClient(pool *graphclient.Pool, j *worker.Job, users int) (*graphclient.Client, error) {
	if j.InstanceConfig == nil {
		return nil, worker.Permanent(jobs.CodeInstanceNotFound, fmt.Sprintf("no configuration for instance %q in the instances bucket", j.Job.Instance))
	}
	cfg, err := ClientConfig(j.InstanceConfig, j.OpenSecret, users)
	if err != nil {
		return nil, err
	}
	return pool.Client(cfg)
}

// round is one sync round's working state.
type round struct {
	s        *Syncer
	ctx      context.Context
	job      *worker.Job
	state    *state.Scope
	instance string
	syncID   string
	mode     string
	mu       sync.Mutex // counts, mode and change: users and groups sync at once
	counts   map[string]jobs.SyncCounts
	// change is the indicators' change in an incremental round.
	change  struct{ users, enabled, licensed, groups int }
	skuPart map[string]string
	log     *slog.Logger
	prog    *progress
	// started and statsBefore measure the round for its sync state.
	started     time.Time
	statsBefore graphclient.Stats
	// licencesDone closes once the licences are published (licencesErr
	// says how that went) and skuPart is set; usersDone once the users are
	// (usersErr). Users publish after licences, groups after users.
	licencesDone, usersDone chan struct{}
	licencesErr, usersErr   error
	// pre holds stored states read ahead by prefetch (nil: not stored).
	preMu sync.Mutex
	pre   map[assetRef][]byte
}

// afterLicences waits until the licences are published.
func (r *round) afterLicences() error {
	select {
	case <-r.licencesDone:
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
	if r.licencesErr != nil {
		return fmt.Errorf("licences: %w", r.licencesErr)
	}
	return nil
}

// afterUsers waits until the users are published.
func (r *round) afterUsers() error {
	select {
	case <-r.usersDone:
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
	if r.usersErr != nil {
		return fmt.Errorf("users: %w", r.usersErr)
	}
	return nil
}

// Handle runs one sync round of the job's instance.
func (s *Syncer) Handle(ctx context.Context, j *worker.Job) (any, error) {
	started := time.Now().UTC()
	params, _ := j.Params.(*jobs.SyncParams)
	sc := j.State()
	meta, err := ReadSyncMeta(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("read sync state: %w", err)
	}
	c, err := graphClient(s.cfg.Graph, j, meta.Users)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, s.cfg.RoundTimeout, errRoundTimeout)
	defer cancel()
	before := c.Stats()
	r := &round{s: s, ctx: ctx, job: j, state: sc, instance: j.Job.Instance, syncID: syncIDOf(j), counts: map[string]jobs.SyncCounts{}, log: j.Logger, started: started, statsBefore: before}
	full := meta.UserLink == "" || meta.GroupLink == "" || (params != nil && params.Full)
	r.mode = jobs.ModeIncremental
	if full {
		r.mode = jobs.ModeFull
	}
	stopProgress := r.startProgress()
	report, err := r.run(c, &meta)
	stopProgress()
	stats := c.Stats().Sub(before)
	if err != nil {
		return nil, s.roundError(ctx, r, meta, err)
	}
	report.StartedAt = started
	report.GraphRequests, report.ResourceUnits, report.Throttled, report.Retries = stats.Requests, stats.ResourceUnits, stats.Throttled, stats.Retries
	return report, nil
}

// errRoundTimeout ends a round that ran past SyncConfig.RoundTimeout.
var errRoundTimeout = errors.New("the sync round ran past its deadline")

// roundError is what a failed round returns to the runtime.
func (s *Syncer) roundError(ctx context.Context, r *round, meta SyncMeta, err error) error {
	var ge *graphclient.Error
	switch {
	case errors.Is(err, graphclient.ErrAuth):
		meta.AuthFailed, meta.AuthError = true, err.Error()
		_ = r.state.PutSyncMeta(context.WithoutCancel(ctx), meta)
		return &jobs.Error{Code: "auth_failed", Message: err.Error()}
	case errors.As(err, &ge) && errors.Is(err, graphclient.ErrThrottled):
		return worker.RetryAfter(ge.RetryAfter, err)
	case errors.Is(context.Cause(ctx), errRoundTimeout):
		// Retried by attempts: a walk that never ends fails the job once
		// they are used up, with this in its message.
		return fmt.Errorf("%w (%s): %v", errRoundTimeout, s.cfg.RoundTimeout, err)
	}
	return err
}

// syncIDOf is the sync id of this run of a round: the job id, and for every
// later delivery the job id with the delivery number. A rerun's batches are
// then never taken by the results stream for the earlier run's duplicates
// (their numbering restarts), and consumers never see two runs under one id.
func syncIDOf(j *worker.Job) string {
	if j.Delivery > 1 {
		return fmt.Sprintf("%s~%d", j.ID, j.Delivery)
	}
	return j.ID
}

func (r *round) run(c *graphclient.Client, meta *SyncMeta) (*jobs.SyncReport, error) {
	// Licences, users and groups are read at once, within the tenant's
	// budget; what is published keeps the contract's order: licences, then
	// users (whose records name their SKUs' part numbers), then groups.
	r.licencesDone, r.usersDone = make(chan struct{}), make(chan struct{})
	var skus []graphclient.SKU
	var tLicences time.Duration
	go func() {
		defer close(r.licencesDone)
		defer func() { tLicences = time.Since(r.started) }()
		r.licencesErr = worker.Safely(func() (err error) {
			if skus, err = c.SubscribedSKUs(r.ctx); err != nil {
				return err
			}
			part := map[string]string{}
			for _, s := range skus {
				part[strings.ToLower(s.SkuID)] = s.SkuPartNumber
			}
			r.skuPart = part
			return r.syncLicenses(skus)
		})
	}()
	var userLink, groupLink string
	var userErr, groupErr error
	var tUsers, tGroups time.Duration
	var wg sync.WaitGroup
	wg.Add(2)
	t0 := time.Now()
	go func() {
		defer wg.Done()
		defer close(r.usersDone)
		userErr = worker.Safely(func() (err error) { userLink, err = r.syncUsers(c, meta.UserLink); return err })
		r.usersErr, tUsers = userErr, time.Since(t0)
	}()
	go func() {
		defer wg.Done()
		groupErr = worker.Safely(func() (err error) { groupLink, err = r.syncGroups(c, meta.GroupLink); return err })
		tGroups = time.Since(t0)
	}()
	wg.Wait()
	<-r.licencesDone
	switch { // keep the typed error (auth, throttled) for the caller
	case r.licencesErr != nil:
		return nil, r.licencesErr
	case userErr != nil:
		return nil, userErr
	case groupErr != nil:
		return nil, groupErr
	}
	ind, err := r.indicators(skus, meta.Indicators)
	if err != nil {
		return nil, err
	}
	if err := r.s.pub.Indicators(r.ctx, ind); err != nil {
		return nil, err
	}
	meta.UserLink, meta.GroupLink = userLink, groupLink
	meta.LastSyncID, meta.LastMode, meta.LastOutcome, meta.LastAt = r.syncID, r.mode, jobs.OutcomeSucceeded, time.Now().UTC()
	st := c.Stats().Sub(r.statsBefore)
	meta.LastDuration, meta.LastCounts, meta.LastRequests, meta.LastThrottled = worker.Duration(meta.LastAt.Sub(r.started)), r.counts, st.Requests, st.Throttled
	meta.Users, meta.AuthFailed, meta.AuthError, meta.Indicators = ind.UsersTotal, false, "", ind
	if err := r.state.PutSyncMeta(context.WithoutCancel(r.ctx), *meta); err != nil {
		return nil, fmt.Errorf("save sync state: %w", err)
	}
	r.log.Info("sync: round done", "mode", r.mode, "took", time.Since(r.started).Round(time.Millisecond), "licences", tLicences.Round(time.Millisecond),
		"users", tUsers.Round(time.Millisecond), "groups", tGroups.Round(time.Millisecond), "graph_requests", st.Requests)
	return &jobs.SyncReport{SyncID: r.syncID, Mode: r.mode, Outcome: jobs.OutcomeSucceeded, Counts: r.counts}, nil
}

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
	seen := map[string]bool{}
	emitted := map[string]string{}    // id → hash published this round
	counted := map[string]userState{} // id → state counted this round ({} once gone)
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
			if ch.Removed != "" {
				delete(seen, ch.ID)
				delete(emitted, ch.ID)
				old, ok, err := r.lastUserState(counted, key, ch.ID)
				if err != nil {
					return err
				}
				if !ok {
					continue // never published: nothing to delete
				}
				counted[ch.ID] = userState{} // gone
				r.countUser(old, true, userState{}, false)
				reason := jobs.ReasonSoftDeleted
				if ch.Removed == graphclient.RemovedHard {
					reason = jobs.ReasonHardDeleted
				}
				if err := b.add(jobs.AssetChange{Op: jobs.OpDelete, ID: ch.ID, Reason: reason}, deleteState(key)); err != nil {
					return err
				}
				continue
			}
			seen[ch.ID] = true
			asset := r.userAsset(ch.User)
			raw, _ := json.Marshal(asset)
			st := userState{Hash: hashOf(raw), Enabled: asset.AccountEnabled, Licensed: len(asset.AssignedLicenses) > 0}
			if emitted[ch.ID] == st.Hash {
				continue // repeated in this round
			}
			if b.mode != jobs.ModeFull || r.job.Rerun() {
				// A full round publishes everything (unless it reruns);
				// an incremental one counts the indicators' change.
				old, ok, err := r.lastUserState(counted, key, ch.ID)
				if err != nil {
					return err
				} else if ok && old.Hash == st.Hash {
					continue // unchanged (or a rerun)
				}
				counted[ch.ID] = st
				r.countUser(old, ok, st, true)
			}
			emitted[ch.ID] = st.Hash
			if err := b.add(jobs.AssetChange{Op: jobs.OpUpsert, ID: ch.ID, Asset: raw}, putState(key, st)); err != nil {
				return err
			}
		}
		r.job.Progress()
		return nil
	}
	if b.mode == jobs.ModeFull {
		// A full round reads the tenant in parallel segments from a
		// tracking point, then follows delta from that point.
		tracking, ok, err := r.parallelUsers(c, apply)
		if err != nil {
			return "", err
		}
		if ok {
			link = tracking
		} else {
			link = ""
		}
	}
	next, err := c.UserDelta(r.ctx, link, apply)
	if errors.Is(err, graphclient.ErrDeltaExpired) && link != "" && b.mode != jobs.ModeFull {
		r.log.Info("sync: user delta token expired or reset; running a full round")
		b.mode = jobs.ModeFull
		seen = map[string]bool{}
		if tracking, ok, perr := r.parallelUsers(c, apply); perr != nil {
			return "", perr
		} else if ok {
			next, err = c.UserDelta(r.ctx, tracking, apply)
		} else {
			next, err = c.UserDelta(r.ctx, "", apply)
		}
	}
	if err != nil {
		return "", err
	}
	if b.mode == jobs.ModeFull {
		if err := r.deleteMissing(b, state.AssetUser, seen); err != nil {
			return "", err
		}
	}
	r.noteMode(b.mode)
	if err := r.afterLicences(); err != nil {
		return "", err
	}
	return next, b.flush(true)
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
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		read  int
	)
	sem := make(chan struct{}, 8)
	for _, ch := range userSegments {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			err := c.ListUsers(ctx, "startswith(userPrincipalName,'"+string(ch)+"')", func(page []graphclient.User) error {
				changes := make([]graphclient.UserChange, len(page))
				for i := range page {
					changes[i] = graphclient.UserChange{ID: page[i].ID, User: &page[i]}
				}
				mu.Lock()
				read += len(page)
				mu.Unlock()
				return apply(changes)
			})
			if err != nil {
				mu.Lock()
				if first == nil {
					first = err
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return "", false, first
	}
	if read != total {
		r.log.Warn("sync: the UPN segments did not cover every user; reading the tenant by delta instead", "read", read, "count", total)
		return "", false, nil
	}
	return tracking, true, nil
}

func (r *round) syncGroups(c *graphclient.Client, link string) (string, error) {
	b := r.batcher(jobs.AssetGroup)
	if b.mode == jobs.ModeFull {
		link = ""
	}
	// Groups touched this round, with their merged state; published once the
	// round is read (a large group spans pages).
	touched := map[string]*groupState{}
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
				}
				touched[ch.ID] = st
				order = append(order, ch.ID)
			}
			if ch.Group != nil {
				rec, _ := json.Marshal(ch.Group)
				st.Record = rec
			}
			set := map[string]bool{}
			for _, m := range st.Members {
				set[m] = true
			}
			for _, m := range ch.MembersAdded {
				set[m] = true
			}
			for _, m := range ch.MembersRemoved {
				delete(set, m)
			}
			st.Members = st.Members[:0]
			for m := range set {
				st.Members = append(st.Members, m)
			}
		}
		r.job.Progress()
		return nil
	}
	next, err := c.GroupDelta(r.ctx, link, apply)
	if errors.Is(err, graphclient.ErrDeltaExpired) && link != "" {
		r.log.Info("sync: group delta token expired or reset; running a full round")
		b.mode, full = jobs.ModeFull, true
		touched, removed, order = map[string]*groupState{}, map[string]string{}, nil
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
		sort.Strings(st.Members)
		var g graphclient.Group
		_ = json.Unmarshal(st.Record, &g)
		g.ID = id
		raw, _ := json.Marshal(groupAssetOf(&g, st.Members))
		key := assetRef{state.AssetGroup, id}
		if !full || r.job.Rerun() {
			// The stored state (an incremental round read it ahead with
			// its page: prefetch).
			var old groupState
			ok, err := r.getState(key, &old)
			if err != nil {
				return "", err
			}
			if ok && old.Hash == hashOf(raw) {
				continue
			}
			if !ok {
				r.countGroup(1)
			}
		}
		st.Hash = hashOf(raw)
		if err := b.add(jobs.AssetChange{Op: jobs.OpUpsert, ID: id, Asset: raw}, putState(key, st)); err != nil {
			return "", err
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
		r.countGroup(-1)
		reason := jobs.ReasonSoftDeleted
		if removed[id] == graphclient.RemovedHard {
			reason = jobs.ReasonHardDeleted
		}
		if err := b.add(jobs.AssetChange{Op: jobs.OpDelete, ID: id, Reason: reason}, deleteState(key)); err != nil {
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
	if err := r.deleteMissing(b, state.AssetLicense, seen); err != nil {
		return err
	}
	return b.flush(true)
}

// indicators counts the synced state.
// An incremental first attempt adds the round's change to the last
// indicators; a full round or a rerun counts the state again.
func (r *round) indicators(skus []graphclient.SKU, prev *jobs.Indicators) (*jobs.Indicators, error) {
	ind := &jobs.Indicators{SchemaVersion: jobs.SchemaVersion, Instance: r.instance, SyncID: r.syncID, At: time.Now().UTC()}
	if r.mode == jobs.ModeIncremental && !r.job.Rerun() && prev != nil {
		ind.UsersTotal, ind.UsersEnabled = prev.UsersTotal+r.change.users, prev.UsersEnabled+r.change.enabled
		ind.UsersLicensed, ind.GroupsTotal = prev.UsersLicensed+r.change.licensed, prev.GroupsTotal+r.change.groups
		r.finishIndicators(ind, skus)
		return ind, nil
	}
	groups, err := r.state.AssetIDs(r.ctx, state.AssetGroup)
	if err != nil {
		return nil, err
	}
	ind.GroupsTotal = len(groups)
	// The flags are in the users' states.
	err = r.state.EachAssetState(r.ctx, state.AssetUser, func(_ string, raw []byte) {
		var st userState
		if json.Unmarshal(raw, &st) != nil {
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

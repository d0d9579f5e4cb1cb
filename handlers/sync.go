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
	// GroupSegmentsFrom is the group count from which a full round reads
	// the groups in parallel (sync_groups_full.go). Default 1,000;
	// negative: never.
	GroupSegmentsFrom int
	// ParallelReads bounds the parallel reads (user segments, group
	// chunks) of every round the worker runs at once. Default
	// DefaultParallelReads.
	ParallelReads int
	// Notify turns Graph change notifications on (subscriptions.go).
	Notify NotifyConfig
	Logger *slog.Logger
}

// Syncer runs sync jobs.
type Syncer struct {
	cfg      SyncConfig
	pub      *publisher.Publisher
	subjs    jobs.Subjects
	subStats SubscriptionStats
	creds    credentialGauge
	// reads is the worker's read slots, shared by its rounds' parallel
	// reads (SyncConfig.ParallelReads).
	reads *readSlots
}

// NewSyncer returns the sync handler publishing through js.
func NewSyncer(ctx context.Context, js jetstream.JetStream, cfg SyncConfig) (*Syncer, error) {
	if cfg.GroupSegmentsFrom == 0 {
		cfg.GroupSegmentsFrom = defaultGroupSegmentsFrom
	}
	if cfg.BatchChanges <= 0 {
		cfg.BatchChanges = 200
	}
	if cfg.BatchBytes <= 0 {
		cfg.BatchBytes = 512 << 10
	}
	if cfg.ParallelReads <= 0 {
		cfg.ParallelReads = DefaultParallelReads
	}
	cfg.Notify = cfg.Notify.withDefaults()
	if cfg.RoundTimeout <= 0 {
		cfg.RoundTimeout = 2 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Graph == nil {
		return nil, errors.New("sync: no Graph client pool")
	}
	return &Syncer{cfg: cfg, pub: publisher.New(js, publisher.Config{Subjects: cfg.Topology.Subjects}), subjs: cfg.Topology.Subjects, reads: newReadSlots(cfg.ParallelReads)}, nil
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
	// LastResourceUnits is what the last round spent of the tenant's Graph
	// budget (resource units, as Graph charges them).
	LastResourceUnits int64 `json:"last_resource_units,omitempty"`
	Users             int   `json:"users"`
	// AuthFailed is set while the instance's credentials are refused.
	AuthFailed bool   `json:"auth_failed,omitempty"`
	AuthError  string `json:"auth_error,omitempty"`
	// Indicators are the last published indicators.
	Indicators *jobs.Indicators `json:"indicators,omitempty"`
	// Notify is the instance's change-notification subscriptions, when the
	// pool has notifications on.
	Notify *NotifyState `json:"notify,omitempty"`
	// Credential is the instance's credential and its expiry, as the last
	// round knew it.
	Credential *CredentialMeta `json:"credential,omitempty"`
}

// ReadSyncMeta reads an instance's sync state (zero when it never synced).
func ReadSyncMeta(ctx context.Context, sc *state.Scope) (SyncMeta, error) {
	var m SyncMeta
	_, err := sc.SyncMeta(ctx, &m)
	return m, err
}

// userState is what the sync state keeps of a user (and, with the hash
// only, of a licence): the hash of the record consumers last received, from
// a round or a post-action refresh, and the flags the indicators counted.
// Uncounted marks the state of an object an action published that no round
// has counted yet.
type userState struct {
	Hash      string `json:"h"`
	Enabled   bool   `json:"e,omitempty"`
	Licensed  bool   `json:"l,omitempty"`
	Uncounted bool   `json:"n,omitempty"`
}

// groupState keeps a group's published hash, its record and member ids (to
// publish full member lists from delta's member changes).
type groupState struct {
	Hash      string          `json:"h"`
	Record    json.RawMessage `json:"r"`
	Members   []string        `json:"m"`
	Uncounted bool            `json:"n,omitempty"`
	// MemberChunks counts the member chunks a large group's members are
	// stored in instead of Members (sync_members.go).
	MemberChunks int `json:"mc,omitempty"`
}

func hashOf(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:12])
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
	change struct{ users, enabled, licensed, groups int }
	// published counts what a round that started full, on its first
	// attempt, published: every object there is, so its indicators
	// (selfCounted).
	published struct {
		users  userTally
		groups int
	}
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
	// selfCounted: the round counts its indicators from what it publishes
	// (round.published), not from the state.
	selfCounted bool
	// ids interns the ids the round meets (sync_ids.go).
	ids idTable
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
	// Nothing more reaches Graph once the instance's lock may be lost.
	ctx = graphclient.WithGuard(ctx, j.StillHolds)
	params, _ := j.Params.(*jobs.SyncParams)
	sc := j.State()
	meta, err := ReadSyncMeta(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("read sync state: %w", err)
	}
	if skip := s.backstopSkip(j, meta, started); skip != nil {
		return skip, nil // no Graph request: notifications keep the instance fresh
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
	r.selfCounted = full && !j.Rerun()
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
	case errors.Is(err, graphclient.ErrAuth) && r.job.InstanceChanged(ctx):
		return worker.RetryAfter(time.Second, fmt.Errorf("the instance's credentials changed during the round; again with the new ones: %w", err))
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
	meta.LastResourceUnits = st.ResourceUnits
	meta.Users, meta.AuthFailed, meta.AuthError, meta.Indicators = ind.UsersTotal, false, "", ind
	meta.Credential = r.credentialState(c, meta.Credential)
	r.s.creds.set(r.instance, meta.Credential)
	if r.s.cfg.Notify.on() {
		if meta.Notify == nil {
			meta.Notify = &NotifyState{}
		}
		r.judge(meta.Notify)
		r.ensureSubscriptions(c, meta.Notify)
	}
	if err := r.state.PutSyncMeta(context.WithoutCancel(r.ctx), *meta); err != nil {
		return nil, fmt.Errorf("save sync state: %w", err)
	}
	r.log.Info("sync: round done", "mode", r.mode, "took", time.Since(r.started).Round(time.Millisecond), "licences", tLicences.Round(time.Millisecond),
		"users", tUsers.Round(time.Millisecond), "groups", tGroups.Round(time.Millisecond), "graph_requests", st.Requests)
	rep := &jobs.SyncReport{SyncID: r.syncID, Mode: r.mode, Outcome: jobs.OutcomeSucceeded, Counts: r.counts, Warnings: credentialWarnings(r.instance, meta.Credential, time.Now())}
	if meta.Credential != nil {
		rep.Credential = &meta.Credential.CredentialState
	}
	return rep, nil
}

package handlers

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// Graph change notifications trigger incremental rounds (docs/notify.md).
// After every successful round of an instance, the round makes sure the
// instance has its two subscriptions (/users and /groups, updated and
// deleted) pointing at the receiver, renewing them well before Graph's
// 41,760-minute limit and creating them again when Graph lost them. While
// both are healthy, the instance's scheduled ticks are only a backstop: a
// tick runs a round when the last one is older than the backstop interval,
// and is closed with a skipped report otherwise. Graph gives no signal for
// a missed notification on users or groups, so any doubt returns the
// instance to its normal interval: a subscription that cannot be created
// or renewed, or a backstop round that finds changes no notification
// announced.

// NotifyConfig turns change notifications on for a pool's instances.
type NotifyConfig struct {
	// BaseURL is where Graph reaches the receiver (m365-worker notify),
	// e.g. https://hooks.example.com/graph. Empty: notifications off.
	BaseURL string
	// PoolKey is the pool's notification key, notify.PoolKey(master,
	// pool): it derives each instance's clientState. The pool never holds
	// the receiver's master key.
	PoolKey []byte
	// Backstop is the poll interval while an instance's subscriptions are
	// healthy. Default 30 minutes.
	Backstop time.Duration
	// RenewBefore renews a subscription once less than this is left of it.
	// Default 7 days (of Graph's 29).
	RenewBefore time.Duration
	// Reauthorize bounds how often a round triggered by a notification
	// renews the subscriptions anyway: Graph's reauthorizationRequired
	// lifecycle event reaches the workers as a trigger like any other, and
	// a renewal is also a reauthorization. Default 1 hour.
	Reauthorize time.Duration
}

func (c NotifyConfig) on() bool { return c.BaseURL != "" && len(c.PoolKey) > 0 }

func (c NotifyConfig) withDefaults() NotifyConfig {
	if c.Backstop <= 0 {
		c.Backstop = 30 * time.Minute
	}
	if c.RenewBefore <= 0 {
		c.RenewBefore = 7 * 24 * time.Hour
	}
	if c.Reauthorize <= 0 {
		c.Reauthorize = time.Hour
	}
	return c
}

// SubscriptionStats count what the pool's rounds did with subscriptions.
type SubscriptionStats struct {
	Created, Renewed, Failed, BackstopSkips atomic.Int64
	// Moved counts subscriptions made again under a new pool key.
	Moved atomic.Int64
}

// SubscriptionStats are the syncer's subscription counters (for /metrics).
func (s *Syncer) SubscriptionStats() *SubscriptionStats { return &s.subStats }

// subscriptionLifetime is what a subscription is created or renewed for:
// Graph's limit less an hour, so clocks that disagree a little never make
// Graph refuse it.
const subscriptionLifetime = graphclient.MaxSubscriptionLifetime - time.Hour

// NotifyState is an instance's subscriptions and their health, kept in its
// sync state.
type NotifyState struct {
	Users  *SubscriptionState `json:"users,omitempty"`
	Groups *SubscriptionState `json:"groups,omitempty"`
	// Error says why the subscriptions are not healthy (a missing
	// permission, Graph's quota, a receiver Graph could not validate).
	Error string `json:"error,omitempty"`
	// Doubt is set when a backstop round found changes no notification
	// announced; a backstop round without changes clears it.
	Doubt string `json:"doubt,omitempty"`
	// NotifiedAt is when a notification last triggered a round.
	NotifiedAt time.Time `json:"notified_at,omitzero"`
}

// SubscriptionState is one subscription.
type SubscriptionState struct {
	ID        string    `json:"id"`
	Expires   time.Time `json:"expires"`
	RenewedAt time.Time `json:"renewed_at"`
	// KeyID names the pool key whose clientState the subscription carries
	// (notify.KeyID); one made with another key is made again.
	KeyID string `json:"key_id,omitempty"`
}

// Healthy reports whether both subscriptions exist and run, and nothing
// casts doubt on them.
func (n *NotifyState) Healthy(now time.Time) bool {
	return n != nil && n.Error == "" && n.Doubt == "" && n.Users.live(now) && n.Groups.live(now)
}

func (s *SubscriptionState) live(now time.Time) bool {
	return s != nil && s.ID != "" && s.Expires.After(now)
}

// backstopSkip is the skipped report of a scheduled tick that is not needed
// while notifications are healthy, or nil when the tick should run.
func (s *Syncer) backstopSkip(j *worker.Job, meta SyncMeta, now time.Time) *jobs.SyncReport {
	n := s.cfg.Notify
	if !n.on() || j.Trigger != jobs.TriggerSchedule || !meta.Notify.Healthy(now) || meta.LastOutcome != jobs.OutcomeSucceeded {
		return nil
	}
	age := now.Sub(meta.LastAt)
	if age >= n.Backstop {
		return nil
	}
	s.subStats.BackstopSkips.Add(1)
	return &jobs.SyncReport{Outcome: jobs.OutcomeSkipped, Error: &jobs.Error{Code: CodeBackstopNotDue,
		Message: fmt.Sprintf("change notifications are healthy and the last round ran %s ago; the backstop round runs every %s", age.Round(time.Second), n.Backstop)}}
}

// CodeBackstopNotDue closes a scheduled tick while change notifications
// keep the instance fresh.
const CodeBackstopNotDue = "backstop_not_due"

// judge updates the doubt after a round: a backstop round (a scheduled tick
// that ran) with changes means a notification was missed or late; one
// without clears the doubt.
func (r *round) judge(n *NotifyState) {
	switch r.job.Trigger {
	case jobs.TriggerNotification:
		n.NotifiedAt = time.Now().UTC()
	case jobs.TriggerSchedule:
		if r.mode != jobs.ModeIncremental {
			return
		}
		changes := 0
		for _, typ := range []string{jobs.AssetUser, jobs.AssetGroup} {
			c := r.counts[typ]
			changes += c.Upserts + c.Deletes
		}
		n.Doubt = ""
		if changes > 0 {
			n.Doubt = fmt.Sprintf("the backstop round at %s found %d changes no notification announced", time.Now().UTC().Format(time.RFC3339), changes)
		}
	}
}

// ensureSubscriptions creates, renews or re-creates the instance's two
// subscriptions as needed and records their health in n: renewed when less
// than RenewBefore is left, when in doubt, and on a notification's round at
// most every hour (which answers reauthorizationRequired). It never fails
// the round: what goes wrong is kept in n.Error, and the instance is polled
// at its normal interval meanwhile.
func (r *round) ensureSubscriptions(c *graphclient.Client, n *NotifyState) {
	cfg := r.s.cfg.Notify
	now := time.Now().UTC()
	n.Error = ""
	for _, sub := range []struct {
		resource string
		st       **SubscriptionState
	}{{"/users", &n.Users}, {"/groups", &n.Groups}} {
		if err := r.ensureOne(c, cfg, sub.resource, sub.st, n.Doubt != "", now); err != nil {
			r.s.subStats.Failed.Add(1)
			n.Error = err.Error()
			r.log.Warn("sync: change notifications unavailable; polling at the normal interval", "resource", sub.resource, "error", err)
			return
		}
	}
}

func (r *round) ensureOne(c *graphclient.Client, cfg NotifyConfig, resource string, st **SubscriptionState, doubt bool, now time.Time) error {
	s := *st
	keyID := notify.KeyID(cfg.PoolKey)
	if s.live(now) && s.KeyID != keyID {
		return r.moveToKey(c, cfg, resource, st, now)
	}
	due := doubt || // a missed change: the subscription may need reauthorizing
		(r.job.Trigger == jobs.TriggerNotification && s != nil && now.Sub(s.RenewedAt) > cfg.Reauthorize)
	if s.live(now) && s.Expires.Sub(now) > cfg.RenewBefore && !due {
		return nil
	}
	if s.live(now) {
		got, err := c.RenewSubscription(r.ctx, s.ID, now.Add(subscriptionLifetime))
		if err == nil {
			r.s.subStats.Renewed.Add(1)
			*st = &SubscriptionState{ID: got.ID, Expires: got.ExpirationDateTime, RenewedAt: now, KeyID: keyID}
			if got.ID == "" {
				(*st).ID = s.ID
			}
			return nil
		}
		if !errors.Is(err, graphclient.ErrNotFound) {
			return fmt.Errorf("renew the %s subscription: %w", resource, err)
		}
		// Graph lost it: make it again.
	}
	return r.create(c, cfg, resource, st, now)
}

// create makes the instance's subscription to resource under the current
// pool key's clientState.
func (r *round) create(c *graphclient.Client, cfg NotifyConfig, resource string, st **SubscriptionState, now time.Time) error {
	pool, inst := r.job.Pool, r.instance
	got, err := c.CreateSubscription(r.ctx, graphclient.Subscription{Resource: resource, ChangeType: "updated,deleted",
		NotificationURL: notify.NotificationURL(cfg.BaseURL, pool, inst), LifecycleNotificationURL: notify.LifecycleURL(cfg.BaseURL, pool, inst),
		ClientState: notify.ClientState(cfg.PoolKey, inst), ExpirationDateTime: now.Add(subscriptionLifetime)})
	if err != nil {
		if errors.Is(err, graphclient.ErrForbidden) {
			return fmt.Errorf("create the %s subscription: %w (the app needs User.Read.All and Group.Read.All, and the tenant at most 1,000 subscriptions)", resource, err)
		}
		return fmt.Errorf("create the %s subscription: %w", resource, err)
	}
	r.s.subStats.Created.Add(1)
	*st = &SubscriptionState{ID: got.ID, Expires: got.ExpirationDateTime, RenewedAt: now, KeyID: notify.KeyID(cfg.PoolKey)}
	return nil
}

// moveToKey moves a subscription made under another pool key (a master-key
// rotation, docs/security.md) to the current key's clientState: Graph keeps
// a subscription's clientState for its life, so the new one is made first
// and the old one deleted after, and no change goes unannounced between
// them (the receiver accepts both keys during the rotation).
func (r *round) moveToKey(c *graphclient.Client, cfg NotifyConfig, resource string, st **SubscriptionState, now time.Time) error {
	old := *st
	if err := r.create(c, cfg, resource, st, now); err != nil {
		return err
	}
	if err := c.DeleteSubscription(r.ctx, old.ID); err != nil && !errors.Is(err, graphclient.ErrNotFound) {
		r.log.Warn("sync: the subscription made under the previous notification key was not deleted; it expires on its own",
			"resource", resource, "subscription_id", old.ID, "error", err)
	}
	r.s.subStats.Moved.Add(1)
	return nil
}

// InstanceRemoved deletes a removed instance's subscriptions (those whose
// notification URL is the instance's), with its last record and the pool's
// keys to open its secret. Every worker of the pool that saw the instance
// does it; a subscription already deleted is no error. Left over (no worker
// saw the removal), they expire within 29 days, and the receiver's triggers
// for the instance fail as instance_not_found meanwhile.
func (s *Syncer) InstanceRemoved(ctx context.Context, pool string, prev *worker.Instance, open func(*jobs.SealedSecret, jobs.Binding) ([]byte, error)) error {
	n := s.cfg.Notify
	if !n.on() {
		return nil
	}
	cfg, err := ClientConfig(prev, open, 0)
	if err != nil {
		return err
	}
	c, err := s.cfg.Graph.Client(cfg)
	if err != nil {
		return err
	}
	subs, err := c.ListSubscriptions(ctx)
	if err != nil {
		return fmt.Errorf("list the subscriptions of %s: %w", prev.ID, err)
	}
	want := notify.NotificationURL(n.BaseURL, pool, prev.ID)
	var errs []error
	for _, sub := range subs {
		if sub.NotificationURL == want {
			errs = append(errs, c.DeleteSubscription(ctx, sub.ID))
		}
	}
	return errors.Join(errs...)
}

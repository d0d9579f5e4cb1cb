package graphsim

import "fmt"

// The Admin side of change notifications: what tests inspect and the
// failures of Graph's they cause.

// Subscriptions lists the tenant's live subscriptions, of every app, oldest
// first.
func (a *Admin) Subscriptions() []SubscriptionInfo {
	n := a.s.notify
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sweep(n.clock.now())
	var out []SubscriptionInfo
	for _, sub := range n.subs {
		if sub.tenantID == a.t.ID {
			out = append(out, sub.info())
		}
	}
	return out
}

// ForgetSubscriptions loses the tenant's subscriptions, as Graph may: no
// signal, later requests for them answer 404.
func (a *Admin) ForgetSubscriptions() {
	n := a.s.notify
	n.mu.Lock()
	defer n.mu.Unlock()
	n.remove(func(sub *subscription) bool { return sub.tenantID == a.t.ID })
}

// RequireReauthorization sends a reauthorizationRequired lifecycle
// notification to the subscription's lifecycleNotificationUrl (if it has
// one); until POST /subscriptions/{id}/reauthorize or a renewal, nothing is
// delivered to it.
func (a *Admin) RequireReauthorization(id string) error {
	n := a.s.notify
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sweep(n.clock.now())
	sub := n.find(id)
	if sub == nil || sub.tenantID != a.t.ID {
		return fmt.Errorf("graphsim: no subscription %s in tenant %s", id, a.t.ID)
	}
	sub.reauthPending = true
	n.lifecycle(sub, "reauthorizationRequired")
	return nil
}

// NotificationsSent counts the tenant's change notifications POSTed to a
// receiver: each attempt and each duplicate (lifecycle notifications are
// not counted).
func (a *Admin) NotificationsSent() int64 { return a.stats().sent }

// NotificationsDelivered counts the change notifications a receiver
// acknowledged with a 2xx.
func (a *Admin) NotificationsDelivered() int64 { return a.stats().delivered }

// NotificationsDropped counts the change notifications never delivered:
// lost by NotifyDropRate, failed past the retries, or whose subscription
// went away (deleted, expired, awaiting reauthorization) while they waited.
func (a *Admin) NotificationsDropped() int64 { return a.stats().dropped }

func (a *Admin) stats() notifyStats {
	n := a.s.notify
	n.mu.Lock()
	defer n.mu.Unlock()
	return *n.statsOf(a.t.ID)
}

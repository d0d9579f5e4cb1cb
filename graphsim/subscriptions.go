package graphsim

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Change notifications for users and groups (shared NOTIFY.md): the
// /subscriptions endpoints, served outside the tenant lock because creating
// a subscription calls the receiver. The notifier (notify_delivery.go) owns
// the subscriptions; its lock guards them.

// subscription is one app's subscription in one tenant.
type subscription struct {
	id, tenantID, appID string
	resource            string   // as given
	kind                string   // "users" or "groups"
	objectID            string   // one object's id, "" for the collection
	changeType          string   // as given
	changeTypes         []string // parsed
	notificationURL     string
	lifecycleURL        string
	clientState         string
	tlsVersion          string
	expires             time.Time // model time
	// reauthPending: a reauthorizationRequired was sent and neither
	// reauthorize nor a renewal followed; nothing is delivered.
	reauthPending bool
}

// SubscriptionInfo is a subscription as the simulator holds it (for tests).
type SubscriptionInfo struct {
	ID, ApplicationID, Resource, ChangeType   string
	NotificationURL, LifecycleNotificationURL string
	ClientState                               string
	// Expiration is in model time (Server.Now).
	Expiration time.Time
	// ReauthorizationRequired: RequireReauthorization was called and
	// neither reauthorize nor a renewal followed; nothing is delivered.
	ReauthorizationRequired bool
}

func (sub *subscription) matches(kind, id, changeType string) bool {
	return sub.kind == kind && (sub.objectID == "" || strings.EqualFold(sub.objectID, id)) && contains(sub.changeTypes, changeType)
}

// changeNotification is a basic notification (no resource data: Graph
// offers no rich notifications for users and groups).
func (sub *subscription) changeNotification(kind, id, changeType string) *notification {
	res, typ := "Users/"+id, "#Microsoft.Graph.User"
	if kind == "groups" {
		res, typ = "Groups/"+id, "#Microsoft.Graph.Group"
	}
	return &notification{SubscriptionID: sub.id, SubscriptionExpiration: graphTime(sub.expires), ChangeType: changeType, Resource: res,
		ResourceData: &resourceData{ODataType: typ, ODataID: res, ID: id, OrganizationID: sub.tenantID},
		ClientState:  sub.clientStateOrNil(), TenantID: sub.tenantID}
}

func (sub *subscription) clientStateOrNil() *string {
	if sub.clientState == "" {
		return nil
	}
	cs := sub.clientState
	return &cs
}

func (sub *subscription) props(c *gctx) map[string]any {
	var lifecycle any
	if sub.lifecycleURL != "" {
		lifecycle = sub.lifecycleURL
	}
	return map[string]any{
		"@odata.context": c.context("subscriptions/$entity"),
		"id":             sub.id, "resource": sub.resource, "applicationId": sub.appID, "changeType": sub.changeType,
		"clientState": sub.clientStateOrNil(), "notificationUrl": sub.notificationURL, "lifecycleNotificationUrl": lifecycle,
		"expirationDateTime": graphTime(sub.expires), "creatorId": sub.appID, "includeResourceData": false,
		"latestSupportedTlsVersion": sub.tlsVersion, "notificationQueryOptions": nil, "encryptionCertificate": nil,
		"encryptionCertificateId": nil, "notificationUrlAppId": nil,
	}
}

func (sub *subscription) info() SubscriptionInfo {
	return SubscriptionInfo{ID: sub.id, ApplicationID: sub.appID, Resource: sub.resource, ChangeType: sub.changeType,
		NotificationURL: sub.notificationURL, LifecycleNotificationURL: sub.lifecycleURL, ClientState: sub.clientState,
		Expiration: sub.expires, ReauthorizationRequired: sub.reauthPending}
}

// graphTime formats a time as Graph does: UTC, seven fractional digits.
func graphTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.0000000Z") }

// --- the store (n.mu held) -------------------------------------------------

func (n *notifier) find(id string) *subscription {
	for _, sub := range n.subs {
		if sub.id == id {
			return sub
		}
	}
	return nil
}

// sweep forgets the subscriptions that expired.
func (n *notifier) sweep(now time.Time) {
	live := n.subs[:0]
	for _, sub := range n.subs {
		if now.Before(sub.expires) {
			live = append(live, sub)
		}
	}
	clear(n.subs[len(live):])
	n.subs = live
}

// remove forgets the subscriptions for which drop is true.
func (n *notifier) remove(drop func(*subscription) bool) {
	live := n.subs[:0]
	for _, sub := range n.subs {
		if !drop(sub) {
			live = append(live, sub)
		}
	}
	clear(n.subs[len(live):])
	n.subs = live
}

// owned is the caller's live subscription id, or nil.
func (n *notifier) owned(c *gctx, id string) *subscription {
	n.sweep(n.clock.now())
	sub := n.find(id)
	if sub == nil || sub.tenantID != c.t.ID || sub.appID != c.claims.AppID {
		return nil
	}
	return sub
}

func (n *notifier) count(tenantID, appID string) int {
	k := 0
	for _, sub := range n.subs {
		if sub.tenantID == tenantID && sub.appID == appID {
			k++
		}
	}
	return k
}

// --- HTTP ----------------------------------------------------------------

func isSubscriptions(segs []string) bool { return len(segs) > 0 && segs[0] == "subscriptions" }

// serveSubscriptions routes /subscriptions requests. s.mu is not held.
func (s *Server) serveSubscriptions(c *gctx) (*response, *apiError) {
	seg, m := c.segs, c.method
	switch {
	case len(seg) == 1 && m == http.MethodPost:
		return s.createSubscription(c)
	case len(seg) == 1 && m == http.MethodGet:
		return s.listSubscriptions(c)
	case len(seg) == 2 && m == http.MethodGet:
		return s.getSubscription(c, seg[1])
	case len(seg) == 2 && m == http.MethodPatch:
		return s.updateSubscription(c, seg[1])
	case len(seg) == 2 && m == http.MethodDelete:
		return s.deleteSubscription(c, seg[1])
	case len(seg) == 3 && (seg[2] == "reauthorize" || seg[2] == "microsoft.graph.reauthorize") && m == http.MethodPost:
		return s.reauthorizeSubscription(c, seg[1])
	}
	return nil, newErr(400, "BadRequest", fmt.Sprintf("Resource not found for the segment '%s'.", seg[len(seg)-1]))
}

func (s *Server) createSubscription(c *gctx) (*response, *apiError) {
	n := s.notify
	sub, e := n.parseNew(c)
	if e != nil {
		return nil, e
	}
	if e := n.checkQuota(c); e != nil {
		return nil, e
	}
	if e := n.handshake(sub.notificationURL); e != nil {
		return nil, e
	}
	if sub.lifecycleURL != "" {
		if e := n.handshake(sub.lifecycleURL); e != nil {
			return nil, e
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, newErr(503, "serviceNotAvailable", "The service is shutting down.")
	}
	if e := n.checkQuotaLocked(c); e != nil {
		return nil, e
	}
	n.subs = append(n.subs, sub)
	c.objects = 1
	return &response{status: 201, body: sub.props(c)}, nil
}

func (n *notifier) checkQuota(c *gctx) *apiError {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.checkQuotaLocked(c)
}

func (n *notifier) checkQuotaLocked(c *gctx) *apiError {
	n.sweep(n.clock.now())
	if n.count(c.t.ID, c.claims.AppID) >= n.opts.SubscriptionQuota {
		return extensionError(403, "Create", fmt.Sprintf("The application has reached its limit of %d subscriptions in this tenant.", n.opts.SubscriptionQuota))
	}
	return nil
}

func (s *Server) listSubscriptions(c *gctx) (*response, *apiError) {
	n := s.notify
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sweep(n.clock.now())
	values := []map[string]any{}
	for _, sub := range n.subs {
		if sub.tenantID == c.t.ID && sub.appID == c.claims.AppID {
			p := sub.props(c)
			delete(p, "@odata.context")
			values = append(values, p)
		}
	}
	c.objects = len(values)
	return &response{status: 200, body: map[string]any{"@odata.context": c.context("subscriptions"), "value": values}}, nil
}

func (s *Server) getSubscription(c *gctx, id string) (*response, *apiError) {
	n := s.notify
	n.mu.Lock()
	defer n.mu.Unlock()
	sub := n.owned(c, id)
	if sub == nil {
		return nil, subscriptionNotFound("Get")
	}
	c.objects = 1
	return &response{status: 200, body: sub.props(c)}, nil
}

// updateSubscription renews (expirationDateTime, which also ends a pending
// reauthorization) or moves (notificationUrl, validated again) a
// subscription.
func (s *Server) updateSubscription(c *gctx, id string) (*response, *apiError) {
	n := s.notify
	b, e := decodeSubscription(c.body)
	if e != nil {
		return nil, e
	}
	if b.LifecycleURL != nil {
		return nil, newErr(400, "InvalidRequest", "lifecycleNotificationUrl can only be set when the subscription is created.")
	}
	if b.ChangeType != nil || b.Resource != nil || b.ClientState != nil || b.IncludeResourceData != nil || b.TLSVersion != nil {
		return nil, newErr(400, "InvalidRequest", "Only expirationDateTime and notificationUrl can be updated.")
	}
	n.mu.Lock()
	found := n.owned(c, id) != nil
	n.mu.Unlock()
	if !found {
		return nil, subscriptionNotFound("Update")
	}
	if b.NotificationURL != nil {
		if e := checkURL("NotificationUrl", *b.NotificationURL); e != nil {
			return nil, e
		}
		if e := n.handshake(*b.NotificationURL); e != nil {
			return nil, e
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	sub := n.owned(c, id)
	if sub == nil {
		return nil, subscriptionNotFound("Update")
	}
	if b.Expiration != nil {
		exp, e := parseExpiry(*b.Expiration, n.clock.now())
		if e != nil {
			return nil, e
		}
		sub.expires, sub.reauthPending = exp, false
	}
	if b.NotificationURL != nil {
		sub.notificationURL = *b.NotificationURL
	}
	c.objects = 1
	return &response{status: 200, body: sub.props(c)}, nil
}

func (s *Server) deleteSubscription(c *gctx, id string) (*response, *apiError) {
	n := s.notify
	n.mu.Lock()
	defer n.mu.Unlock()
	sub := n.owned(c, id)
	if sub == nil {
		return nil, subscriptionNotFound("Delete")
	}
	n.remove(func(x *subscription) bool { return x == sub })
	return &response{status: 204}, nil
}

// reauthorizeSubscription ends a pending reauthorization, if the app still
// holds the permission.
func (s *Server) reauthorizeSubscription(c *gctx, id string) (*response, *apiError) {
	n := s.notify
	n.mu.Lock()
	defer n.mu.Unlock()
	sub := n.owned(c, id)
	if sub == nil {
		return nil, subscriptionNotFound("Reauthorize")
	}
	if c.require(readRoles(sub.kind)...) != nil {
		return nil, extensionError(403, "Reauthorize", "Forbidden")
	}
	sub.reauthPending = false
	return &response{status: 204}, nil
}

package graphsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The rules of a new subscription for users and groups (NOTIFY.md) and the
// validation handshake with its receiver.

const (
	maxSubscriptionLifetime = 41760 * time.Minute
	minSubscriptionLifetime = 45 * time.Minute
	maxClientState          = 128
)

// parseNew checks a creation body and the caller's permission for the
// resource; the subscription it returns is not stored yet.
func (n *notifier) parseNew(c *gctx) (*subscription, *apiError) {
	b, e := decodeSubscription(c.body)
	if e != nil {
		return nil, e
	}
	for _, f := range []struct {
		name string
		v    *string
	}{{"changeType", b.ChangeType}, {"notificationUrl", b.NotificationURL}, {"resource", b.Resource}, {"expirationDateTime", b.Expiration}} {
		if f.v == nil || *f.v == "" {
			return nil, newErr(400, "InvalidRequest", fmt.Sprintf("The property '%s' is required to create a subscription.", f.name))
		}
	}
	kind, objectID, ok := parseResource(*b.Resource)
	if !ok {
		return nil, newErr(400, "InvalidRequest", fmt.Sprintf("Resource '%s' is not supported: use /users, /users/{id}, /groups or /groups/{id}.", *b.Resource))
	}
	if c.require(readRoles(kind)...) != nil {
		return nil, extensionError(403, "Create", "Forbidden")
	}
	sub := &subscription{id: newID(), tenantID: c.t.ID, appID: c.claims.AppID, resource: *b.Resource, kind: kind, objectID: objectID,
		changeType: *b.ChangeType, notificationURL: *b.NotificationURL, tlsVersion: "v1_2"}
	if sub.changeTypes, e = parseChangeType(*b.ChangeType); e != nil {
		return nil, e
	}
	if e := checkURL("NotificationUrl", sub.notificationURL); e != nil {
		return nil, e
	}
	if b.LifecycleURL != nil && *b.LifecycleURL != "" {
		sub.lifecycleURL = *b.LifecycleURL
		if e := checkURL("LifecycleNotificationUrl", sub.lifecycleURL); e != nil {
			return nil, e
		}
	}
	if sub.expires, e = parseExpiry(*b.Expiration, n.clock.now()); e != nil {
		return nil, e
	}
	if b.ClientState != nil {
		if len([]rune(*b.ClientState)) > maxClientState {
			return nil, newErr(400, "InvalidRequest", fmt.Sprintf("clientState must be at most %d characters.", maxClientState))
		}
		sub.clientState = *b.ClientState
	}
	if b.IncludeResourceData != nil && *b.IncludeResourceData {
		return nil, newErr(400, "InvalidRequest", fmt.Sprintf("Rich notifications (includeResourceData) are not supported for resource '%s'.", sub.resource))
	}
	if b.TLSVersion != nil {
		switch *b.TLSVersion {
		case "v1_0", "v1_1", "v1_2", "v1_3":
			sub.tlsVersion = *b.TLSVersion
		default:
			return nil, newErr(400, "InvalidRequest", fmt.Sprintf("Invalid latestSupportedTlsVersion '%s'.", *b.TLSVersion))
		}
	}
	return sub, nil
}

// parseResource accepts users, groups and one of them by id, with or
// without the leading slash.
func parseResource(r string) (kind, id string, ok bool) {
	if strings.ContainsAny(r, "?$") {
		return "", "", false
	}
	parts := strings.Split(strings.TrimPrefix(r, "/"), "/")
	switch strings.ToLower(parts[0]) {
	case "users":
		kind = "users"
	case "groups":
		kind = "groups"
	default:
		return "", "", false
	}
	switch {
	case len(parts) == 1:
		return kind, "", true
	case len(parts) == 2 && parts[1] != "":
		return kind, parts[1], true
	}
	return "", "", false
}

// parseChangeType accepts a comma list of created, updated and deleted.
// Graph reports a creation as "updated", so "created" alone never fires.
func parseChangeType(s string) ([]string, *apiError) {
	var out []string
	for _, ct := range strings.Split(s, ",") {
		ct = strings.TrimSpace(ct)
		if ct != "created" && ct != "updated" && ct != "deleted" {
			return nil, newErr(400, "InvalidRequest", fmt.Sprintf("Invalid changeType '%s': use created, updated or deleted.", ct))
		}
		out = append(out, ct)
	}
	return out, nil
}

// checkURL accepts https URLs only, as Graph does.
func checkURL(field, raw string) *apiError {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return newErr(400, "InvalidRequest", fmt.Sprintf("%s '%s' is not a valid URL.", field, raw))
	}
	if !strings.EqualFold(u.Scheme, "https") {
		return newErr(400, "InvalidRequest", fmt.Sprintf("%s scheme='%s' is not supported.", field, u.Scheme))
	}
	return nil
}

// parseExpiry applies the lifetime rules of users and groups: at most 41,760
// minutes ahead; less than 45 minutes ahead is rounded up to 45.
func parseExpiry(raw string, now time.Time) (time.Time, *apiError) {
	t, err := time.Parse(time.RFC3339Nano, raw)
	if err != nil {
		t, err = time.ParseInLocation("2006-01-02T15:04:05.999999999", raw, time.UTC)
	}
	switch {
	case err != nil:
		return t, newErr(400, "InvalidRequest", fmt.Sprintf("Invalid expirationDateTime '%s'.", raw))
	case t.After(now.Add(maxSubscriptionLifetime)):
		return t, newErr(400, "ExtensionError", fmt.Sprintf("Subscription expiration can only be %d minutes in the future.", int(maxSubscriptionLifetime.Minutes())))
	case !t.After(now):
		return t, newErr(400, "ExtensionError", "Subscription expiration must be in the future.")
	case t.Before(now.Add(minSubscriptionLifetime)):
		t = now.Add(minSubscriptionLifetime)
	}
	return t, nil
}

func extensionError(status int, op, reason string) *apiError {
	code := strings.ReplaceAll(http.StatusText(status), " ", "")
	return newErr(status, "ExtensionError", fmt.Sprintf("Operation: %s; Exception: [Status Code: %s; Reason: %s]", op, code, reason))
}

func subscriptionNotFound(op string) *apiError {
	return extensionError(404, op, "Object was not found in the store.")
}

// handshake validates a notification URL as Graph does: it POSTs to
// url?validationToken=<token> and wants, within ValidationTimeout, a 200
// whose text/plain body is the decoded token. The token holds characters a
// receiver must decode (spaces, '+', ':', parentheses).
func (n *notifier) handshake(target string) *apiError {
	token := "Validation: Testing client application reachability for subscription Request-Id: " + newID() + " (graphsim+" + newID()[:8] + ")"
	sep := "?"
	if strings.Contains(target, "?") {
		sep = "&"
	}
	failed := newErr(400, "ValidationError", "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.")
	ctx, cancel := context.WithTimeout(n.ctx, n.opts.ValidationTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target+sep+"validationToken="+url.QueryEscape(token), nil)
	if err != nil {
		return failed
	}
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	resp, err := n.client.Do(req)
	var body []byte
	if err == nil {
		body, err = io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}
	var ne net.Error
	switch {
	case err != nil && (errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()):
		return newErr(400, "InvalidRequest", "Subscription validation request timed out.")
	case err != nil || resp.StatusCode != http.StatusOK:
		return failed
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt != "text/plain" || string(body) != token {
		return newErr(400, "ValidationError", "Subscription validation request failed. Response must exactly match validationToken query parameter.")
	}
	return nil
}

var subscriptionWritable = map[string]bool{"changeType": true, "notificationUrl": true, "lifecycleNotificationUrl": true,
	"resource": true, "expirationDateTime": true, "clientState": true, "includeResourceData": true, "latestSupportedTlsVersion": true,
	"encryptionCertificate": true, "encryptionCertificateId": true, "notificationQueryOptions": true, "notificationUrlAppId": true}

type subscriptionBody struct {
	ChangeType          *string `json:"changeType"`
	NotificationURL     *string `json:"notificationUrl"`
	LifecycleURL        *string `json:"lifecycleNotificationUrl"`
	Resource            *string `json:"resource"`
	Expiration          *string `json:"expirationDateTime"`
	ClientState         *string `json:"clientState"`
	IncludeResourceData *bool   `json:"includeResourceData"`
	TLSVersion          *string `json:"latestSupportedTlsVersion"`
}

func decodeSubscription(body []byte) (subscriptionBody, *apiError) {
	var b subscriptionBody
	if _, e := decodeStrict(body, "subscription", subscriptionWritable); e != nil {
		return b, e
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return b, newErr(400, "BadRequest", "Unable to read JSON request payload: "+err.Error())
	}
	return b, nil
}

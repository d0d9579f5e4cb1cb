package graphclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Subscription is a Graph change-notification subscription (users and
// groups: basic notifications, the changed object's id only).
type Subscription struct {
	ID                       string    `json:"id,omitempty"`
	Resource                 string    `json:"resource,omitempty"`
	ChangeType               string    `json:"changeType,omitempty"`
	NotificationURL          string    `json:"notificationUrl,omitempty"`
	LifecycleNotificationURL string    `json:"lifecycleNotificationUrl,omitempty"`
	ClientState              string    `json:"clientState,omitempty"`
	ExpirationDateTime       time.Time `json:"expirationDateTime"`
}

// MaxSubscriptionLifetime is the longest lifetime Graph gives a
// subscription on users or groups (41,760 minutes, just under 29 days).
const MaxSubscriptionLifetime = 41760 * time.Minute

// CreateSubscription creates s (Graph validates the notification URL with
// the receiver before it answers). A missing permission matches
// ErrForbidden, as does the per-tenant quota.
func (c *Client) CreateSubscription(ctx context.Context, s Subscription) (*Subscription, error) {
	var out Subscription
	if err := c.sendJSON(ctx, "create subscription", http.MethodPost, c.graphURL+"/subscriptions", s, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RenewSubscription moves a subscription's expiry to until; it also
// reauthorizes it. A subscription Graph no longer has matches ErrNotFound.
func (c *Client) RenewSubscription(ctx context.Context, id string, until time.Time) (*Subscription, error) {
	var out Subscription
	body := map[string]time.Time{"expirationDateTime": until.UTC()}
	if err := c.sendJSON(ctx, "renew subscription", http.MethodPatch, c.graphURL+"/subscriptions/"+url.PathEscape(id), body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListSubscriptions lists the app's subscriptions in the tenant (one
// page: Graph allows 100 per app and tenant).
func (c *Client) ListSubscriptions(ctx context.Context) ([]Subscription, error) {
	var out struct {
		Value []Subscription `json:"value"`
	}
	if err := c.sendJSON(ctx, "list subscriptions", http.MethodGet, c.graphURL+"/subscriptions", nil, &out); err != nil {
		return nil, err
	}
	return out.Value, nil
}

// DeleteSubscription removes a subscription; one already gone is not an
// error.
func (c *Client) DeleteSubscription(ctx context.Context, id string) error {
	err := c.sendJSON(ctx, "delete subscription", http.MethodDelete, c.graphURL+"/subscriptions/"+url.PathEscape(id), nil, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// sendJSON sends body (JSON, or nothing when nil) through the paced,
// authenticated transport and decodes a 2xx answer into out (when not nil);
// other statuses become an *Error.
func (c *Client) sendJSON(ctx context.Context, op, method, u string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return &Error{Op: op, Message: err.Error(), err: err}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return &Error{Op: op, Message: err.Error(), err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fromSDK(op, unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return c.responseError(op, resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, c.limits.errorBytes)).Decode(out); err != nil {
		return readError(op, "unreadable answer", err)
	}
	return nil
}

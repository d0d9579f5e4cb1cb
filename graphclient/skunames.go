package graphclient

import (
	"context"
	"maps"
	"strings"
	"sync"
)

// skuNames is what the tenant's SKUs are called (lower-case skuId →
// skuPartNumber), from every subscribedSkus the client read. A SKU's part
// number is the product's own name and never changes, so the names are
// kept for as long as the client lives and only read again for a SKU not
// named yet (a subscription added since). The map is never changed once
// handed out: a new one replaces it.
type skuNames struct {
	mu    sync.Mutex
	parts map[string]string
}

// remember adds the names of skus to what the client knows.
func (n *skuNames) remember(skus []SKU) {
	n.mu.Lock()
	defer n.mu.Unlock()
	parts := make(map[string]string, len(n.parts)+len(skus))
	maps.Copy(parts, n.parts)
	for _, s := range skus {
		parts[strings.ToLower(s.SkuID)] = s.SkuPartNumber
	}
	n.parts = parts
}

// known returns the names when every one of ids is among them.
func (n *skuNames) known(ids []string) (map[string]string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, id := range ids {
		if _, ok := n.parts[strings.ToLower(id)]; !ok {
			return n.parts, false
		}
	}
	return n.parts, true
}

// SKUPartNumbers names the SKUs ids (skuId values, as a user's
// assignedLicenses give them): a map from lower-case skuId to
// skuPartNumber, not to be changed. It reads subscribedSkus (3 resource
// units, as much as the rest of an update_user) only when one of ids is
// not named yet; a SKU the tenant does not list stays unnamed (absent).
func (c *Client) SKUPartNumbers(ctx context.Context, ids []string) (map[string]string, error) {
	if parts, ok := c.skus.known(ids); ok {
		return parts, nil
	}
	if _, err := c.SubscribedSKUs(ctx); err != nil {
		return nil, err
	}
	parts, _ := c.skus.known(nil)
	return parts, nil
}

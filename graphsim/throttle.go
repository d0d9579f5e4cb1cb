package graphsim

import (
	"math"
	"strconv"
	"sync"
	"time"
)

// clock runs the throttling model, token lifetimes and delta-token expiry
// Scale times faster than real time.
type clock struct {
	start time.Time
	scale float64
	// fixed, when set, stops model time (tests).
	fixed *time.Time
}

func (c clock) now() time.Time {
	if c.fixed != nil {
		return *c.fixed
	}
	el := time.Since(c.start)
	return c.start.Add(time.Duration(float64(el) * c.scale))
}

// real converts a model duration into wall-clock time.
func (c clock) real(d time.Duration) time.Duration { return time.Duration(float64(d) / c.scale) }

// appTenantWrites is the (app, tenant) write budget per 150 s (GRAPH.md §1).
const appTenantWrites = 3000

// bucket is a continuously refilled token bucket. Its level may go below
// zero: throttled requests are charged too.
type bucket struct {
	capacity float64
	rate     float64 // per model second
	level    float64
	last     time.Time
	scope    string // x-ms-throttle-scope value
	info     string // x-ms-throttle-information value
}

func newBucket(capacity float64, window time.Duration, now time.Time, scope, info string) *bucket {
	return &bucket{capacity: capacity, rate: capacity / window.Seconds(), level: capacity, last: now, scope: scope, info: info}
}

func (b *bucket) refill(now time.Time) {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.level = math.Min(b.capacity, b.level+el*b.rate)
		b.last = now
	}
}

// throttler holds every bucket of the simulator.
type throttler struct {
	mu      sync.Mutex
	clock   clock
	appTen  map[string]*bucket // "ru|app|tenant", "w|app|tenant"
	app     map[string]*bucket // "ru|app", "w|app", "req|app"
	tenant  map[string]*bucket // "w|tenant"
	enabled bool
}

func newThrottler(c clock, enabled bool) *throttler {
	return &throttler{clock: c, appTen: map[string]*bucket{}, app: map[string]*bucket{}, tenant: map[string]*bucket{}, enabled: enabled}
}

// verdict is the throttling outcome of one request.
type verdict struct {
	throttled  bool
	retryAfter time.Duration // wall clock
	scope      string
	info       string
	// limitPct is the highest usage of any bucket above 80 %, else 0.
	limitPct float64
}

func (th *throttler) get(m map[string]*bucket, key string, capacity float64, window time.Duration, now time.Time, scope, info string) *bucket {
	b, ok := m[key]
	if !ok {
		b = newBucket(capacity, window, now, scope, info)
		m[key] = b
	}
	if b.capacity != capacity { // size class changed
		b.level += capacity - b.capacity
		b.capacity, b.rate = capacity, capacity/window.Seconds()
	}
	return b
}

// charge applies a request of ru resource units (and a write if write) to
// every bucket that covers it.
func (th *throttler) charge(appID, tenantID string, ruBudget float64, ru int, write bool) verdict {
	if !th.enabled {
		return verdict{}
	}
	th.mu.Lock()
	defer th.mu.Unlock()
	now := th.clock.now()
	type use struct {
		b    *bucket
		cost float64
	}
	uses := []use{
		{th.get(th.appTen, "ru|"+appID+"|"+tenantID, ruBudget, 10*time.Second, now, "Tenant_Application/ReadWrite/"+appID+"/"+tenantID, "ResourceUnitLimitExceeded"), float64(ru)},
		{th.get(th.app, "ru|"+appID, 150000, 20*time.Second, now, "Application/ReadWrite/"+appID, "ResourceUnitLimitExceeded"), float64(ru)},
		{th.get(th.app, "req|"+appID, 130000, 10*time.Second, now, "Application/ReadWrite/"+appID, "ResourceUnitLimitExceeded"), 1},
	}
	if write {
		uses = append(uses,
			use{th.get(th.appTen, "w|"+appID+"|"+tenantID, appTenantWrites, 150*time.Second, now, "Tenant_Application/Write/"+appID+"/"+tenantID, "WriteLimitExceeded"), 1},
			use{th.get(th.app, "w|"+appID, 70000, 5*time.Minute, now, "Application/Write/"+appID, "WriteLimitExceeded"), 1},
			use{th.get(th.tenant, "w|"+tenantID, 18000, 5*time.Minute, now, "Tenant/Write/"+tenantID, "WriteLimitExceeded"), 1},
		)
	}
	var v verdict
	var wait float64
	for _, u := range uses {
		u.b.refill(now)
		if u.b.level < u.cost {
			v.throttled = true
			if v.scope == "" {
				v.scope, v.info = u.b.scope, u.b.info
			}
		}
	}
	for _, u := range uses {
		u.b.level = math.Max(-u.b.capacity, u.b.level-u.cost)
		if v.throttled && u.b.level < u.cost {
			wait = math.Max(wait, (u.cost-u.b.level)/u.b.rate)
		}
		// "Used" is how far the bucket is drawn down: near 1 the next
		// requests are throttled.
		if used := (u.b.capacity - u.b.level) / u.b.capacity; used > 0.8 {
			v.limitPct = math.Max(v.limitPct, math.Min(used, 1.8))
		}
	}
	if v.throttled {
		v.retryAfter = th.clock.real(time.Duration(wait * float64(time.Second)))
		if v.retryAfter < time.Millisecond {
			v.retryAfter = time.Millisecond
		}
	}
	return v
}

// formatRetryAfter writes seconds with up to three decimals, as Graph does
// ("2.128").
func formatRetryAfter(d time.Duration) string {
	s := strconv.FormatFloat(math.Ceil(d.Seconds()*1000)/1000, 'f', -1, 64)
	return s
}

// ruCost is the RU cost of a request per GRAPH.md §1.
func ruCost(method, path string, q queryOpts) int {
	cost := 1
	if method == "GET" {
		switch {
		case path == "/users" || path == "/users/delta" || path == "/groups/delta":
			cost = 2
		case path == "/subscribedSkus":
			cost = 3
		case len(path) > 8 && path[:8] == "/groups/" && hasSuffix(path, "/members"):
			cost = 3
		}
	}
	if method == "GET" {
		if q.hasSelect {
			cost--
		}
		if q.top > 0 && q.top < 20 {
			cost--
		}
	}
	if q.hasExpand {
		cost++
	}
	if cost < 1 {
		cost = 1
	}
	return cost
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }

// level returns a bucket's level now (refilled), or its capacity if it was
// never used.
func (th *throttler) level(m map[string]*bucket, key string, capacity float64) float64 {
	th.mu.Lock()
	defer th.mu.Unlock()
	b, ok := m[key]
	if !ok {
		return capacity
	}
	b.refill(th.clock.now())
	return b.level
}

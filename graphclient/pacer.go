package graphclient

import (
	"context"
	"math"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Budgets of GRAPH.md §1, per (app, tenant) unless noted.
const (
	budgetS       = 3500.0 // RU / 10 s, tenants under 50 users
	budgetM       = 5000.0 // 50 to 500 users
	budgetL       = 8000.0 // over 500 users
	ruWindow      = 10 * time.Second
	writeBudget   = 3000.0 // writes / 150 s
	writeWindow   = 150 * time.Second
	appRU         = 150000.0 // RU / 20 s, per app across tenants
	appRUWindow   = 20 * time.Second
	appWrites     = 70000.0 // writes / 5 min, per app
	appWriteWin   = 5 * time.Minute
	appRequests   = 130000.0 // requests / 10 s, per app
	appRequestWin = 10 * time.Second
)

// RUBudget returns the (app, tenant) RU budget per 10 s for a tenant of n
// users.
func RUBudget(users int) float64 {
	switch {
	case users < 50:
		return budgetS
	case users <= 500:
		return budgetM
	}
	return budgetL
}

// ruCost estimates a request's RU cost per GRAPH.md §1 (the response's
// x-ms-resource-unit corrects it).
func ruCost(method string, u *url.URL) int {
	path := strings.TrimPrefix(u.Path, "/v1.0")
	q := u.Query()
	cost := 1
	if method == "GET" {
		switch {
		case path == "/users" || strings.HasPrefix(path, "/users/delta") || strings.HasPrefix(path, "/groups/delta"):
			cost = 2
		case path == "/subscribedSkus":
			cost = 3
		case strings.HasPrefix(path, "/groups/") && strings.HasSuffix(path, "/members"):
			cost = 3
		case strings.HasPrefix(path, "/groups/") && strings.HasSuffix(path, "/transitiveMembers"):
			cost = 5
		}
		if q.Has("$select") {
			cost--
		}
		if n, err := strconv.Atoi(q.Get("$top")); err == nil && n < 20 {
			cost--
		}
	}
	if q.Has("$expand") {
		cost++
	}
	return max(cost, 1)
}

// bucket is a token bucket whose rate follows the live worker count and
// the adaptive factor.
type bucket struct {
	lim      *rate.Limiter
	capacity float64 // per window, whole budget
	window   time.Duration
}

func newBucket(capacity float64, window time.Duration, share, scale float64) *bucket {
	b := &bucket{capacity: capacity, window: window}
	b.lim = rate.NewLimiter(b.limit(share, scale), b.burst(share))
	return b
}

func (b *bucket) limit(share, scale float64) rate.Limit {
	return rate.Limit(b.capacity * share / b.window.Seconds() * scale)
}

// burst is a little below the share of the bucket: the headroom left in
// Graph's bucket absorbs requests that arrive bunched up (network and
// scheduling jitter between our pacing and Graph's count).
func (b *bucket) burst(share float64) int {
	return max(int(b.capacity*share*burstFraction/safety), 8)
}

const burstFraction = 0.9

func (b *bucket) set(share, scale float64) {
	b.lim.SetLimit(b.limit(share, scale))
	b.lim.SetBurst(b.burst(share))
}

// pacer paces one (app, tenant) or one app.
type pacer struct {
	mu          sync.Mutex
	scale       float64
	safety      float64 // fraction of the budget we aim at
	factor      float64 // adaptive, 0.25..1
	workers     int
	buckets     []*bucket // ru, writes[, requests]
	pausedUntil time.Time
	sem         chan struct{} // concurrency cap (tenant pacers)
}

const safety = 0.95

func (p *pacer) share() float64 { return p.safety * p.factor / float64(max(p.workers, 1)) }

// setWorkers applies a new live worker count.
func (p *pacer) setWorkers(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n < 1 {
		n = 1
	}
	if n != p.workers {
		p.workers = n
		p.apply()
	}
}

func (p *pacer) apply() {
	for _, b := range p.buckets {
		b.set(p.share(), p.scale)
	}
}

// setRUBudget changes the tenant's size class.
func (p *pacer) setRUBudget(capacity float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.buckets[0].capacity != capacity {
		p.buckets[0].capacity = capacity
		p.apply()
	}
}

// throttled slows down after a 429 and pauses for retryAfter.
func (p *pacer) throttled(retryAfter time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if until := time.Now().Add(retryAfter); until.After(p.pausedUntil) {
		p.pausedUntil = until
	}
	p.factor = math.Max(0.25, p.factor*0.85)
	p.apply()
}

// observe adapts to x-ms-throttle-limit-percentage (pct > 0) or recovers
// slowly on a quiet success (pct == 0).
func (p *pacer) observe(pct float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.factor
	switch {
	case pct >= 1.0: // over the budget: back off
		p.factor = math.Max(0.25, p.factor*0.9)
	case p.factor < 1:
		p.factor = math.Min(1, p.factor+0.005)
	}
	if p.factor != old {
		p.apply()
	}
}

// pause returns how long the tenant is paused by a Retry-After.
func (p *pacer) pause() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Until(p.pausedUntil)
}

// reserve takes n tokens from bucket i, returning the wait; when the wait
// exceeds max the reservation is cancelled and ok is false.
func (p *pacer) reserve(i int, n int, maxWait time.Duration) (time.Duration, *rate.Reservation, bool) {
	p.mu.Lock()
	b := p.buckets[i]
	p.mu.Unlock()
	r := b.lim.ReserveN(time.Now(), n)
	if !r.OK() {
		return maxWait + 1, nil, false
	}
	d := r.Delay()
	if d > maxWait {
		r.Cancel()
		return d, nil, false
	}
	return d, r, true
}

// charge takes extra tokens after the fact (the response said the request
// cost more than estimated).
func (p *pacer) charge(i int, n int) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	b := p.buckets[i]
	p.mu.Unlock()
	b.lim.ReserveN(time.Now(), min(n, b.lim.Burst()))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func newTenantPacer(users int, workers int, scale float64, concurrency int) *pacer {
	p := &pacer{scale: scale, safety: safety, factor: 1, workers: max(workers, 1), sem: make(chan struct{}, concurrency)}
	p.buckets = []*bucket{
		newBucket(RUBudget(users), ruWindow, p.share(), scale),
		newBucket(writeBudget, writeWindow, p.share(), scale),
	}
	return p
}

func newAppPacer(workers int, scale float64) *pacer {
	p := &pacer{scale: scale, safety: safety, factor: 1, workers: max(workers, 1)}
	p.buckets = []*bucket{
		newBucket(appRU, appRUWindow, p.share(), scale),
		newBucket(appWrites, appWriteWin, p.share(), scale),
		newBucket(appRequests, appRequestWin, p.share(), scale),
	}
	return p
}

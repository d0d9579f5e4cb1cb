package graphclient

import (
	"bytes"
	"context"
	"github.com/google/uuid"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/tevyra/m365-worker/internal/tracing"
)

// Counters count one client's Graph traffic.
type Counters struct {
	requests, ru, throttled, retries, errors, latency atomic.Int64
}

// Stats is a snapshot of Counters.
type Stats struct {
	Requests      int64         `json:"requests"`
	ResourceUnits int64         `json:"resource_units"`
	Throttled     int64         `json:"throttled"`
	Retries       int64         `json:"retries"`
	Errors        int64         `json:"errors"`
	Latency       time.Duration `json:"latency_total"`
}

// Snapshot reads the counters.
func (c *Counters) Snapshot() Stats {
	return Stats{Requests: c.requests.Load(), ResourceUnits: c.ru.Load(), Throttled: c.throttled.Load(),
		Retries: c.retries.Load(), Errors: c.errors.Load(), Latency: time.Duration(c.latency.Load())}
}

// Sub returns s − prev: the traffic between two snapshots.
func (s Stats) Sub(prev Stats) Stats {
	return Stats{Requests: s.Requests - prev.Requests, ResourceUnits: s.ResourceUnits - prev.ResourceUnits, Throttled: s.Throttled - prev.Throttled,
		Retries: s.Retries - prev.Retries, Errors: s.Errors - prev.Errors, Latency: s.Latency - prev.Latency}
}

// transport is the one retry layer: it paces every request against the
// tenant's and the app's budgets, caps concurrency per tenant, honours
// Retry-After by pausing the tenant, and backs off on 5xx and network
// errors. The SDK's own retry handler is removed from the pipeline.
type transport struct {
	base        http.RoundTripper
	tenant      *pacer
	app         *pacer
	workers     func() int
	maxWait     time.Duration
	maxAttempts int
	counters    *Counters
	log         *slog.Logger
}

// parseRetryAfter reads Retry-After as (fractional) seconds or an HTTP date.
func parseRetryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := h.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil && secs >= 0 {
		return time.Duration(secs * float64(time.Second)), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

func throttledErr(wait time.Duration, why string) *Error {
	return &Error{Status: 0, Code: "TooManyRequests", Message: why, RetryAfter: wait}
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	var body []byte
	if req.Body != nil && req.Body != http.NoBody {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
	}
	if t.workers != nil {
		n := t.workers()
		t.tenant.setWorkers(n)
		t.app.setWorkers(n)
	}
	// Every request carries a client-request-id (a GUID), the id Microsoft
	// support traces a call by; the SDK's telemetry middleware sets one on
	// its requests, this sets it on the client's own. Retries keep it: they
	// are the same request.
	if req.Header.Get("client-request-id") == "" {
		req = req.Clone(ctx)
		req.Header.Set("client-request-id", uuid.NewString())
	}
	cost := ruCost(req.Method, req.URL)
	write := req.Method != http.MethodGet && req.Method != http.MethodHead
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 500*time.Millisecond, 30*time.Second, 0
	bo.Reset()

	for attempt := 1; ; attempt++ {
		if err := t.admit(ctx, cost, write); err != nil {
			return nil, err
		}
		if err := checkGuard(ctx); err != nil {
			<-t.tenant.sem
			return nil, err
		}
		out := req.Clone(ctx)
		if body != nil {
			out.Body = io.NopCloser(bytes.NewReader(body))
			out.ContentLength = int64(len(body))
			out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		}
		start := time.Now()
		span := requestSpan(ctx, out, attempt)
		resp, err := t.base.RoundTrip(out)
		endRequestSpan(span, resp, err)
		<-t.tenant.sem
		t.counters.requests.Add(1)
		t.counters.latency.Add(int64(time.Since(start)))
		if err != nil {
			t.counters.errors.Add(1)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if attempt >= t.maxAttempts {
				return nil, &Error{Message: "Graph unreachable: " + err.Error(), err: err}
			}
			d := bo.NextBackOff()
			t.log.Debug("graph: network error; retrying", append([]any{"error", err, "retry_in", d, "attempt", attempt}, tracing.LogAttrs(ctx)...)...)
			t.counters.retries.Add(1)
			if err := waitFor(ctx, "wait before resending (network error)", d); err != nil {
				return nil, err
			}
			continue
		}
		if ru, err := strconv.Atoi(resp.Header.Get("x-ms-resource-unit")); err == nil {
			t.counters.ru.Add(int64(ru))
			if extra := ru - cost; extra > 0 {
				t.tenant.charge(0, extra)
				t.app.charge(0, extra)
			}
		}
		if pct, err := strconv.ParseFloat(resp.Header.Get("x-ms-throttle-limit-percentage"), 64); err == nil {
			t.tenant.observe(pct)
		} else if resp.StatusCode < 400 {
			t.tenant.observe(0)
		}
		switch resp.StatusCode {
		case http.StatusTooManyRequests, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusInternalServerError, http.StatusBadGateway:
		default:
			return resp, nil
		}
		ra, hasRA := parseRetryAfter(resp.Header, time.Now())
		if resp.StatusCode == http.StatusTooManyRequests {
			t.counters.throttled.Add(1)
			if !hasRA {
				ra = bo.NextBackOff()
			}
			t.tenant.throttled(ra)
		} else {
			t.counters.errors.Add(1)
			if !hasRA {
				ra = bo.NextBackOff()
			}
		}
		if attempt >= t.maxAttempts {
			if resp.StatusCode == http.StatusTooManyRequests {
				drain(resp)
				return nil, throttledErr(ra, "Graph throttled the tenant through every attempt")
			}
			return resp, nil // the SDK reports the 5xx
		}
		if ra > t.maxWait {
			drain(resp)
			if resp.StatusCode == http.StatusTooManyRequests {
				return nil, throttledErr(ra, "Graph throttled the tenant")
			}
			return nil, &Error{Status: resp.StatusCode, Code: "serviceNotAvailable", Message: "Graph is unavailable", RetryAfter: ra}
		}
		drain(resp)
		t.counters.retries.Add(1)
		t.log.Debug("graph: retrying", append([]any{"status", resp.StatusCode, "retry_after", ra, "attempt", attempt}, tracing.LogAttrs(ctx)...)...)
		if err := waitFor(ctx, "wait before resending (Graph's Retry-After or back-off)", ra); err != nil {
			return nil, err
		}
	}
}

// admit waits for a Retry-After pause, a concurrency slot and the budgets.
// A wait longer than maxWait returns a throttled *Error carrying the wait
// instead, so a job can give its slot back.
func (t *transport) admit(ctx context.Context, cost int, write bool) error {
	if d := t.tenant.pause(); d > 0 {
		if d > t.maxWait {
			return throttledErr(d, "the tenant is paused by Graph's Retry-After")
		}
		if err := waitFor(ctx, "wait for the tenant's Retry-After pause", d); err != nil {
			return err
		}
	}
	select {
	case t.tenant.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	type res struct {
		p *pacer
		i int
		n int
	}
	need := []res{{t.tenant, 0, cost}, {t.app, 0, cost}, {t.app, 2, 1}}
	if write {
		need = append(need, res{t.tenant, 1, 1}, res{t.app, 1, 1})
	}
	var wait time.Duration
	var taken []interface{ Cancel() }
	for _, n := range need {
		d, r, ok := n.p.reserve(n.i, n.n, t.maxWait)
		if !ok {
			for _, x := range taken {
				x.Cancel()
			}
			<-t.tenant.sem
			return throttledErr(d, "the tenant's Graph budget is used up for now")
		}
		taken = append(taken, r)
		wait = max(wait, d)
	}
	if err := waitFor(ctx, "wait for the tenant's Graph budget", wait); err != nil {
		<-t.tenant.sem
		return err
	}
	return nil
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
}

type guardKey struct{}

// WithGuard returns a context whose Graph requests are each preceded by
// guard: a request is not sent when it returns an error. The worker guards
// a job's requests with its lock: a job whose lock ran out (its worker was
// paused past the lock's TTL, another worker may be running it) sends
// nothing more, however soon after its resumption it tries.
func WithGuard(ctx context.Context, guard func() error) context.Context {
	return context.WithValue(ctx, guardKey{}, guard)
}

func checkGuard(ctx context.Context) error {
	if g, ok := ctx.Value(guardKey{}).(func() error); ok {
		return g()
	}
	return nil
}

package graphsim

import (
	"testing"
	"time"
)

// frozen is a clock whose model time does not move, so bucket levels depend
// only on what the test charges.
func frozen() clock {
	now := time.Now()
	return clock{start: now, scale: 1, fixed: &now}
}

func TestWriteBucket(t *testing.T) {
	th := newThrottler(frozen(), true)
	for i := 0; i < 3000; i++ {
		if v := th.charge("app", "ten", 1e9, 1, true); v.throttled {
			t.Fatalf("write %d throttled", i+1)
		}
	}
	v := th.charge("app", "ten", 1e9, 1, true)
	if !v.throttled || v.info != "WriteLimitExceeded" || v.scope != "Tenant_Application/Write/app/ten" {
		t.Fatalf("write 3001: %+v", v)
	}
	// 3,000 writes / 150 s refill one write every 50 ms; the throttled one
	// was charged too, so the wait covers two.
	if v.retryAfter != 100*time.Millisecond {
		t.Errorf("retry after %s, want 100ms", v.retryAfter)
	}
	if v.limitPct < 1 {
		t.Errorf("limit percentage %v", v.limitPct)
	}
}

func TestRUCost(t *testing.T) {
	for _, c := range []struct {
		method, path string
		q            queryOpts
		want         int
	}{
		{"GET", "/users", queryOpts{}, 2},
		{"GET", "/users", queryOpts{hasSelect: true}, 1},
		{"GET", "/groups/x/members", queryOpts{}, 3},
		{"GET", "/subscribedSkus", queryOpts{}, 3},
		{"GET", "/users/x", queryOpts{hasSelect: true}, 1},
		{"GET", "/users", queryOpts{hasSelect: true, top: 5}, 1},
		{"PATCH", "/users/x", queryOpts{}, 1},
		{"GET", "/users", queryOpts{hasExpand: true}, 3},
	} {
		if got := ruCost(c.method, c.path, c.q); got != c.want {
			t.Errorf("%s %s %+v: %d RU, want %d", c.method, c.path, c.q, got, c.want)
		}
	}
	if formatRetryAfter(2128*time.Millisecond) != "2.128" || formatRetryAfter(500*time.Millisecond) != "0.5" {
		t.Errorf("formatRetryAfter: %s %s", formatRetryAfter(2128*time.Millisecond), formatRetryAfter(500*time.Millisecond))
	}
}

func TestLimitPercentage(t *testing.T) {
	th := newThrottler(frozen(), true)
	var last verdict
	for i := 0; i < 2900; i++ { // the bucket drawn down to 17 %
		last = th.charge("app", "ten", 3500, 1, false)
		if i < 2790 && last.limitPct != 0 {
			t.Fatalf("limit percentage %v after %d RU", last.limitPct, i+1)
		}
	}
	if last.throttled || last.limitPct < 0.8 || last.limitPct > 0.85 {
		t.Fatalf("after 2,900 RU: %+v", last)
	}
}

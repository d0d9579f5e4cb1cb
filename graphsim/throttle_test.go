package graphsim_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/tevyra/m365-worker/graphsim"
)

const scale = 20 // model time runs 20× faster: a 10 s budget window lasts 0.5 s

func TestThrottleRetryAfterLetsThrough(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 20, Groups: 2, TimeScale: 5})
	r := newRaw(t, sim, sim.Credentials()[0])
	// Blast well past the S budget (3,500 RU / 10 s) with 3-RU requests
	// until throttled; the first 429 and when it arrived.
	blast := func() (*http.Response, time.Time) {
		var throttled *http.Response
		var at time.Time
		var mu sync.Mutex
		var wg sync.WaitGroup
		var stop atomic.Bool
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 5000 && !stop.Load(); i++ {
					resp, _ := r.do("GET", "/subscribedSkus", nil)
					if resp.StatusCode == 429 {
						mu.Lock()
						if throttled == nil {
							throttled, at = resp, time.Now()
						}
						mu.Unlock()
						stop.Store(true)
					}
				}
			}()
		}
		wg.Wait()
		return throttled, at
	}
	// Requests made during the Retry-After are still charged: an early
	// retry is refused again. On a loaded machine the retry may leave only
	// after the (time-scaled) Retry-After: that try proves nothing, and the
	// blast is made again.
	var ra float64
	for try := 1; ; try++ {
		throttled, at := blast()
		if throttled == nil {
			t.Fatal("never throttled")
		}
		var err error
		ra, err = strconv.ParseFloat(throttled.Header.Get("Retry-After"), 64)
		if err != nil || ra <= 0 {
			t.Fatalf("Retry-After %q", throttled.Header.Get("Retry-After"))
		}
		if throttled.Header.Get("x-ms-throttle-scope") == "" || throttled.Header.Get("x-ms-throttle-information") != "ResourceUnitLimitExceeded" {
			t.Errorf("throttle headers: %v", throttled.Header)
		}
		sent := time.Now()
		resp, b := r.do("GET", "/subscribedSkus", nil)
		if sent.Sub(at) >= time.Duration(ra*float64(time.Second)) {
			if try == 5 {
				t.Fatalf("five tries could not retry within the Retry-After of %.3fs", ra)
			}
			continue
		}
		if resp.StatusCode != 429 {
			t.Fatalf("retry %s after a 429 with Retry-After %.3fs: %d %s", sent.Sub(at), ra, resp.StatusCode, b)
		}
		if code, _ := graphErr(t, b); code != "TooManyRequests" {
			t.Errorf("code %s", code)
		}
		ra, _ = strconv.ParseFloat(resp.Header.Get("Retry-After"), 64)
		break
	}
	time.Sleep(time.Duration(ra * float64(time.Second)))
	if resp, b := r.do("GET", "/subscribedSkus", nil); resp.StatusCode != 200 {
		t.Fatalf("after honouring Retry-After %.3fs: %d %s", ra, resp.StatusCode, b)
	}
}

func TestThrottlePacedClientNeverThrottled(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 20, Groups: 2, TimeScale: scale})
	r := newRaw(t, sim, sim.Credentials()[0])
	// 95 % of 3,500 RU / 10 s at 1 RU a request, in wall-clock terms.
	lim := rate.NewLimiter(rate.Limit(0.95*350*scale), 10)
	var n, throttled, sawPct atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(3 * 10 * time.Second / scale) // three budget windows
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if err := lim.Wait(context.Background()); err != nil {
					return
				}
				resp, _ := r.do("GET", "/users?$select=id", nil)
				n.Add(1)
				if resp.StatusCode == 429 {
					throttled.Add(1)
				}
				if resp.Header.Get("x-ms-throttle-limit-percentage") != "" {
					sawPct.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if throttled.Load() != 0 {
		t.Errorf("%d of %d paced requests throttled", throttled.Load(), n.Load())
	}
	if n.Load() < 100 {
		t.Errorf("only %d requests made", n.Load())
	}
	t.Logf("%d requests, %d with x-ms-throttle-limit-percentage", n.Load(), sawPct.Load())
}

func TestForcedThrottleAndPermissions(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 10, Groups: 2, NoThrottling: true, ReadOnly: true})
	cred := sim.Credentials()[0]
	r := newRaw(t, sim, cred)
	_ = sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error { a.ThrottleNext(2); return nil })
	for i := 0; i < 2; i++ {
		if resp, _ := r.do("GET", "/users", nil); resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("forced throttle %d: %d", i, resp.StatusCode)
		}
	}
	if resp, _ := r.do("GET", "/users", nil); resp.StatusCode != 200 {
		t.Fatalf("after forced throttle: %d", resp.StatusCode)
	}
	// A read-only app cannot write.
	resp, b := r.do("PATCH", "/users/"+mustFirstUser(t, sim, cred.TenantID), map[string]any{"jobTitle": "x"})
	code, msg := graphErr(t, b)
	if resp.StatusCode != 403 || code != "Authorization_RequestDenied" || msg != "Insufficient privileges to complete the operation." {
		t.Errorf("read-only write: %d %s", resp.StatusCode, b)
	}
}

// Sustained throttling (POST /_admin/tenants/{id}/throttle): the share of
// the tenant's requests answers 429 in Graph's shape, evenly spread, until
// the share is set back to 0.
func TestSustainedThrottleShare(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 10, Groups: 2, NoThrottling: true})
	cred := sim.Credentials()[0]
	r := newRaw(t, sim, cred)
	admin := func(body string) int {
		t.Helper()
		resp, err := sim.Client().Post(sim.URL()+"/_admin/tenants/"+cred.TenantID+"/throttle", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := admin(`{"share":1.5}`); code != 400 {
		t.Fatalf("share 1.5: %d", code)
	}
	if code := admin(`{"share":0.5,"retry_after":2.5}`); code != 204 {
		t.Fatalf("throttle: %d", code)
	}
	var got []int
	for range 6 {
		resp, b := r.do("GET", "/users?$top=1", nil)
		got = append(got, resp.StatusCode)
		if resp.StatusCode == 429 {
			code, _ := graphErr(t, b)
			if code != "TooManyRequests" || resp.Header.Get("Retry-After") != "2.5" || resp.Header.Get("x-ms-throttle-scope") == "" || resp.Header.Get("x-ms-throttle-information") == "" {
				t.Errorf("a throttled answer: %s %v", b, resp.Header)
			}
		}
	}
	if fmt.Sprint(got) != "[200 429 200 429 200 429]" {
		t.Errorf("share 0.5 answered %v", got)
	}
	if admin(`{"share":0}`) != 204 {
		t.Fatal("throttle off")
	}
	for range 3 {
		if resp, _ := r.do("GET", "/users?$top=1", nil); resp.StatusCode != 200 {
			t.Fatalf("after the throttle is off: %d", resp.StatusCode)
		}
	}
}

func mustFirstUser(t *testing.T, sim *graphsim.Server, tenant string) string {
	snap, err := sim.Export(tenant)
	if err != nil {
		t.Fatal(err)
	}
	return snap.Users[0].ID
}

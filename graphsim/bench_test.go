package graphsim_test

import (
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
)

// BenchmarkSeedLargeTenant generates a 100,000-user / 10,000-group tenant
// and reports the time and the live heap it takes.
//
//	go test ./graphsim -run '^$' -bench SeedLargeTenant -benchtime 1x
func BenchmarkSeedLargeTenant(b *testing.B) {
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		t0 := time.Now()
		sim, err := graphsim.Start(graphsim.Options{Users: 100000, Groups: 10000, NoThrottling: true})
		if err != nil {
			b.Fatal(err)
		}
		el := time.Since(t0)
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(el.Seconds(), "seed-s")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heap-MB")
		snap, _ := sim.Export(sim.Credentials()[0].TenantID)
		members, largest := 0, 0
		for _, g := range snap.Groups {
			members += len(g.Members)
			largest = max(largest, len(g.Members))
		}
		b.ReportMetric(float64(members), "memberships")
		b.ReportMetric(float64(largest), "largest-group")
		sim.Close()
	}
}

// BenchmarkServe measures requests per second with throttling and latency
// off, the client on the same machine:
//
//	go test ./graphsim -run '^$' -bench Serve -benchtime 5s
func BenchmarkServe(b *testing.B) {
	sim, err := graphsim.Start(graphsim.Options{Users: 1000, Groups: 100, NoThrottling: true})
	if err != nil {
		b.Fatal(err)
	}
	defer sim.Close()
	cred := sim.Credentials()[0]
	r := newRaw(b, sim, cred)
	snap, _ := sim.Export(cred.TenantID)
	tr := &http.Transport{TLSClientConfig: sim.Client().Transport.(*http.Transport).TLSClientConfig, MaxIdleConnsPerHost: 64}
	hc := &http.Client{Transport: tr}
	for _, c := range []struct {
		name string
		path func(i int) string
	}{
		{"get-user", func(i int) string {
			return "/users/" + snap.Users[i%len(snap.Users)].ID + "?$select=id,displayName,accountEnabled"
		}},
		{"list-users-100", func(int) string { return "/users?$select=id,displayName&$top=100" }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetParallelism(4)
			t0 := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					req, _ := http.NewRequest("GET", cred.GraphRoot+"/v1.0"+c.path(i), nil)
					req.Header.Set("Authorization", "Bearer "+r.token)
					resp, err := hc.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					var buf [4096]byte
					for {
						if _, err := resp.Body.Read(buf[:]); err != nil {
							break
						}
					}
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
					i++
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "req/s")
		})
	}
}

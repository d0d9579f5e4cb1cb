package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
)

// mixedSizes is the tenant mix of a pool serving many customers: one tenant
// of 100,000 users (which gets a group of all of them), one in 400 of
// 5,000 to 50,000 users, and the rest of 20 to 500 users; a tenth as many
// groups as users (at least one).
func mixedSizes(n int) []graphsim.TenantSize {
	r := rand.New(rand.NewPCG(31, 13))
	large := []int{5000, 10000, 20000, 35000, 50000}
	nLarge := max(1, n/400)
	sizes := make([]graphsim.TenantSize, n)
	for i := range sizes {
		u := 20 + r.IntN(481)
		switch {
		case i == 0:
			u = 100000
		case i <= nLarge:
			u = large[(i-1)%len(large)]
		}
		sizes[i] = graphsim.TenantSize{Users: u, Groups: max(1, u/10)}
	}
	return sizes
}

// giantGroupMembers is the size of the group the largest tenant gets.
const giantGroupMembers = 100000

// addGiantGroup gives the simulator's first tenant a group of its first
// members users.
func addGiantGroup(sim *graphsim.Server, tenant string, members int) error {
	snap, err := sim.Export(tenant)
	if err != nil {
		return err
	}
	return sim.Mutate(tenant, func(a *graphsim.Admin) error {
		g := a.CreateGroup("giant", "Everyone")
		for _, u := range snap.Users[:min(members, len(snap.Users))] {
			a.SetMember(g, u.ID, true)
		}
		return nil
	})
}

// actionClock times actions from their publication to their result.
type actionClock struct {
	mu   sync.Mutex
	sent map[string]time.Time
	took map[string]time.Duration
}

func startActionClock(ctx context.Context, js jetstream.JetStream) (*actionClock, func(), error) {
	c := &actionClock{sent: map[string]time.Time{}, took: map[string]time.Duration{}}
	oc, err := js.OrderedConsumer(ctx, "M365_RESULTS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"m365.results.*.actions"}, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return nil, nil, err
	}
	cc, err := oc.Consume(func(m jetstream.Msg) {
		var r jobs.ActionResult
		if json.Unmarshal(m.Data(), &r) != nil {
			return
		}
		c.mu.Lock()
		if t0, ok := c.sent[r.JobID]; ok {
			if _, seen := c.took[r.JobID]; !seen {
				c.took[r.JobID] = time.Since(t0)
			}
		}
		c.mu.Unlock()
	})
	if err != nil {
		return nil, nil, err
	}
	return c, cc.Stop, nil
}

// publish sends an update_user job for instance's user upn, timed from now.
func (c *actionClock) publish(ctx context.Context, e *Env, id, instance, upn string) error {
	j, b := updateUserJob(id, instance, upn)
	c.mu.Lock()
	c.sent[id] = time.Now()
	c.mu.Unlock()
	_, err := e.JS.PublishAsync(e.Topo.Subjects.JobSubject(jobs.DefaultPool, j), b)
	return err
}

// updateUserJob is an update_user job (a new job title) for instance's
// user upn, and its envelope.
func updateUserJob(id, instance, upn string) (*jobs.Job, []byte) {
	title := "t-" + id
	p, _ := json.Marshal(jobs.UpdateUserParams{UserRef: jobs.UserRef{User: upn}, JobTitle: &title})
	j := &jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: id, Instance: instance, Action: jobs.ActionUpdateUser, Params: p}
	b, _ := json.Marshal(j)
	return j, b
}

// userNames returns the user principal names of a simulated tenant's first
// n users.
func userNames(sim *graphsim.Server, tenant string, n int) ([]string, error) {
	snap, err := sim.Export(tenant)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, u := range snap.Users[:min(n, len(snap.Users))] {
		out = append(out, u.UserPrincipalName)
	}
	return out, nil
}

// latencies returns the sorted latencies of the jobs whose id starts with
// prefix, and how many of them were sent.
func (c *actionClock) latencies(prefix string) (lat []time.Duration, sent int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.sent {
		if strings.HasPrefix(id, prefix) {
			sent++
			if d, ok := c.took[id]; ok {
				lat = append(lat, d)
			}
		}
	}
	slices.Sort(lat)
	return lat, sent
}

// ActionLatency is what the probes of one phase measured.
type ActionLatency struct {
	Sent, Done int
	P50, P99   time.Duration
}

func (c *actionClock) phase(prefix string) ActionLatency {
	lat, sent := c.latencies(prefix)
	a := ActionLatency{Sent: sent, Done: len(lat)}
	if len(lat) > 0 {
		a.P50, a.P99 = pct(lat, 50), pct(lat, 99)
	}
	return a
}

// probeTenant is a tenant the probes act on: its instance and some users.
type probeTenant struct {
	instance string
	upns     []string
}

func probeTenants(e *Env, indexes []int, users int) ([]probeTenant, error) {
	creds := e.Sim.Credentials()
	var out []probeTenant
	for _, i := range indexes {
		upns, err := userNames(e.Sim, creds[i].TenantID, users)
		if err != nil {
			return nil, err
		}
		out = append(out, probeTenant{instance: instanceName(i), upns: upns})
	}
	return out, nil
}

// probe publishes one action every 250 ms, to each probe tenant in turn,
// until d has passed.
func (c *actionClock) probe(ctx context.Context, e *Env, prefix string, tenants []probeTenant, d time.Duration) error {
	end := time.Now().Add(d)
	for i := 0; time.Now().Before(end); i++ {
		pt := tenants[i%len(tenants)]
		if err := c.publish(ctx, e, fmt.Sprintf("%s-%d", prefix, i), pt.instance, pt.upns[(i/len(tenants))%len(pt.upns)]); err != nil {
			return err
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// Noise sizes: the burst tenant's actions, and the throttled tenant's.
const (
	NoiseBurst     = 1000
	NoiseThrottled = 200
)

// startNoise makes one tenant publish a burst of actions at once and
// another tenant's Graph answer every request with 429 (it also gets
// actions, which wait on Graph).
func (c *actionClock) startNoise(ctx context.Context, e *Env, burst, throttled probeTenant, throttledTenantID string) error {
	if err := e.Sim.Mutate(throttledTenantID, func(a *graphsim.Admin) error {
		a.ThrottleNextWith(1<<30, 2*time.Second, false)
		return nil
	}); err != nil {
		return err
	}
	for i := range NoiseThrottled {
		if err := c.publish(ctx, e, fmt.Sprintf("throttled-%d", i), throttled.instance, throttled.upns[i%len(throttled.upns)]); err != nil {
			return err
		}
	}
	for i := range NoiseBurst {
		if err := c.publish(ctx, e, fmt.Sprintf("burst-%d", i), burst.instance, burst.upns[i%len(burst.upns)]); err != nil {
			return err
		}
	}
	<-e.JS.PublishAsyncComplete()
	return nil
}

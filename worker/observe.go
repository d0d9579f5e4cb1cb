package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

// actionMetrics counts jobs by action and outcome, and their durations.
type actionMetrics struct {
	mu       sync.Mutex
	outcomes map[[2]string]int64 // (action, outcome) → count
	failures map[[2]string]int64 // (action, contract code) → count
	durSum   map[string]float64
	durCount map[string]int64
}

// failed counts a failed job by its contract code (a bounded set: the
// codes are the handlers', never a job's input).
func (m *actionMetrics) failed(action, code string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failures == nil {
		m.failures = map[[2]string]int64{}
	}
	m.failures[[2]string{action, code}]++
}

func (m *actionMetrics) observe(action, outcome string, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.outcomes == nil {
		m.outcomes, m.durSum, m.durCount = map[[2]string]int64{}, map[string]float64{}, map[string]int64{}
	}
	m.outcomes[[2]string{action, outcome}]++
	if outcome == "succeeded" || outcome == "failed" {
		m.durSum[action] += d.Seconds()
		m.durCount[action]++
	}
}

// otherAction is the label of every action no handler is registered for:
// an action name comes from a job's subject, which any publisher makes up,
// and each name would otherwise stay a series for ever.
const otherAction = "other"

// actionLabel bounds an action label to the registered actions.
func (w *Worker) actionLabel(action string) string {
	if _, ok := w.handlers[action]; ok {
		return action
	}
	return otherAction
}

// Metric is one sample for the exposition.
type Metric struct {
	Name   string
	Help   string
	Type   string // counter or gauge
	Labels map[string]string
	Value  float64
}

// MetricsSource adds samples to a scrape (the Graph client's counters, …).
type MetricsSource func() []Metric

// Observer serves /metrics (Prometheus text format), /healthz and /readyz
// for a worker, and registers it as a NATS micro service so `nats micro ls`
// lists it.
type Observer struct {
	w       *Worker
	nc      *nats.Conn
	sources []MetricsSource

	// The consumer's backlog, read at most once per consumerInfoTTL: a
	// scrape (or anyone who can reach the listener) must not make a
	// JetStream API request each.
	mu     sync.Mutex
	info   *jetstream.ConsumerInfo
	infoAt time.Time
}

// consumerInfoTTL is how long a read of the consumer's backlog serves
// scrapes.
const consumerInfoTTL = 10 * time.Second

// consumerInfo is the pool consumer's info, cached for consumerInfoTTL.
func (o *Observer) consumerInfo(ctx context.Context) *jetstream.ConsumerInfo {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.info != nil && time.Since(o.infoAt) < consumerInfoTTL {
		return o.info
	}
	info, err := o.w.consumerInfo(ctx)
	if err != nil {
		return o.info // the last one read, if any
	}
	o.info, o.infoAt = info, time.Now()
	return info
}

// NewObserver observes w over nc; sources add samples to every scrape.
func NewObserver(w *Worker, nc *nats.Conn, sources ...MetricsSource) *Observer {
	return &Observer{w: w, nc: nc, sources: sources}
}

// Handler serves /metrics, /healthz and /readyz.
func (o *Observer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !o.nc.IsConnected() {
			http.Error(w, "NATS not connected", http.StatusServiceUnavailable)
			return
		}
		if !o.w.bound.Load() {
			http.Error(w, "consumer not bound yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		o.write(r.Context(), w)
	})
	return mux
}

func (o *Observer) samples(ctx context.Context) []Metric {
	w := o.w
	var ms []Metric
	w.metrics.mu.Lock()
	// Every registered action's succeeded and failed series exist from the
	// start, at 0: a rate or an increase (an alert's) sees the first failure
	// as an increase, not as a new series with one sample.
	for a := range w.handlers {
		for _, o := range []string{"succeeded", "failed"} {
			if _, ok := w.metrics.outcomes[[2]string{a, o}]; !ok {
				ms = append(ms, Metric{Name: "m365_jobs_total", Help: "Jobs by action and outcome (succeeded, failed, retried, snoozed, duplicate).", Type: "counter",
					Labels: map[string]string{"action": a, "outcome": o}})
			}
		}
	}
	for k, v := range w.metrics.outcomes {
		ms = append(ms, Metric{Name: "m365_jobs_total", Help: "Jobs by action and outcome (succeeded, failed, retried, snoozed, duplicate).", Type: "counter",
			Labels: map[string]string{"action": k[0], "outcome": k[1]}, Value: float64(v)})
	}
	for k, v := range w.metrics.failures {
		ms = append(ms, Metric{Name: "m365_job_failures_total", Help: "Failed jobs by action and the contract's error code (auth_failed: the instance's credentials were refused).", Type: "counter",
			Labels: map[string]string{"action": k[0], "code": k[1]}, Value: float64(v)})
	}
	for a, s := range w.metrics.durSum {
		ms = append(ms, Metric{Name: "m365_job_duration_seconds_sum", Help: "Total time spent on finished jobs.", Type: "counter", Labels: map[string]string{"action": a}, Value: s})
		ms = append(ms, Metric{Name: "m365_job_duration_seconds_count", Help: "Finished jobs.", Type: "counter", Labels: map[string]string{"action": a}, Value: float64(w.metrics.durCount[a])})
	}
	w.metrics.mu.Unlock()
	ms = append(ms, Metric{Name: "m365_ticks_missed_total", Help: "Scheduled sync ticks not served before the next replaced them (each reported in a ticks_missed sync report).", Type: "counter", Value: float64(w.stats.TicksMissed.Load())})
	for stage, n := range w.RoundTrips() {
		ms = append(ms, Metric{Name: "m365_jetstream_round_trips_total", Help: "JetStream requests (KV reads and writes, stored publishes, acknowledged acks) made for jobs, by the stage of a job's path that made them.", Type: "counter",
			Labels: map[string]string{"stage": stage}, Value: float64(n)})
	}
	ms = append(ms, Metric{Name: "m365_jobs_in_flight", Help: "Jobs being handled now.", Type: "gauge", Value: float64(w.InFlight())})
	if info := o.consumerInfo(ctx); info != nil {
		ms = append(ms,
			Metric{Name: "m365_consumer_pending", Help: "Jobs waiting in the pool's consumer (backlog).", Type: "gauge", Labels: map[string]string{"pool": w.cfg.Pool}, Value: float64(info.NumPending)},
			Metric{Name: "m365_consumer_ack_pending", Help: "Jobs delivered and not yet settled, across the pool.", Type: "gauge", Labels: map[string]string{"pool": w.cfg.Pool}, Value: float64(info.NumAckPending)})
	}
	for _, src := range o.sources {
		ms = append(ms, src()...)
	}
	return ms
}

func (o *Observer) write(ctx context.Context, out io.Writer) {
	ms := o.samples(ctx)
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
	seen := map[string]bool{}
	for _, m := range ms {
		if !seen[m.Name] {
			seen[m.Name] = true
			fmt.Fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", m.Name, m.Help, m.Name, m.Type)
		}
		var labels []string
		for k, v := range m.Labels {
			labels = append(labels, fmt.Sprintf("%s=%q", k, v))
		}
		sort.Strings(labels)
		if len(labels) > 0 {
			fmt.Fprintf(out, "%s{%s} %g\n", m.Name, strings.Join(labels, ","), m.Value)
		} else {
			fmt.Fprintf(out, "%s %g\n", m.Name, m.Value)
		}
	}
}

// Micro registers the worker as a NATS micro service ("m365-worker") with a
// "status" endpoint; stop it with the returned service's Stop.
func (o *Observer) Micro(version string) (micro.Service, error) {
	svc, err := micro.AddService(o.nc, micro.Config{
		Name: "m365-worker", Version: version, Description: "Microsoft 365 worker pool of Tevyra",
		Metadata: map[string]string{"worker": o.w.cfg.ID, "pool": o.w.cfg.Pool},
		StatsHandler: func(*micro.Endpoint) any {
			s := o.w.Stats()
			return map[string]any{"handled": s.Handled.Load(), "succeeded": s.Succeeded.Load(), "failed": s.Failed.Load(), "in_flight": o.w.InFlight(),
				"round_trips": o.w.RoundTrips()}
		},
	})
	if err != nil {
		return nil, err
	}
	err = svc.AddEndpoint("status", micro.HandlerFunc(func(r micro.Request) {
		s := o.w.Stats()
		b, _ := json.Marshal(map[string]any{"worker": o.w.cfg.ID, "pool": o.w.cfg.Pool, "handled": s.Handled.Load(), "succeeded": s.Succeeded.Load(),
			"failed": s.Failed.Load(), "retried": s.Retried.Load(), "snoozed": s.Snoozed.Load(), "in_flight": o.w.InFlight()})
		_ = r.Respond(b)
	}), micro.WithEndpointSubject("m365.status."+o.w.cfg.Pool+"."+sanitizeToken(o.w.cfg.ID)))
	if err != nil {
		_ = svc.Stop()
		return nil, err
	}
	return svc, nil
}

package notify

import (
	"fmt"
	"io"
	"net/http"
)

// metric is one counter of the exposition.
type metric struct {
	name, help string
	value      int64
}

func (r *Receiver) metrics() []metric {
	s := r.Stats()
	return []metric{
		{"m365_notify_received_total", "Change and lifecycle notifications received, accepted or refused.", s.Received},
		{"m365_notify_refused_total", "Notifications refused: clientState missing or not the instance's.", s.Refused},
		{"m365_notify_lifecycle_total", "Accepted lifecycle notifications (reauthorizationRequired, subscriptionRemoved, missed).", s.Lifecycle},
		{"m365_notify_triggers_published_total", "Sync triggers stored in the jobs stream.", s.Published},
		{"m365_notify_coalesced_total", "Accepted notifications that made no trigger of their own.", s.Coalesced},
		{"m365_notify_publish_failures_total", "Triggers given up on after the publish retries.", s.PublishFailures},
		{"m365_notify_publish_retries_total", "Publish attempts after a trigger's first.", s.PublishRetries},
	}
}

// WriteMetrics writes the counters in the Prometheus text format.
func (r *Receiver) WriteMetrics(w io.Writer) {
	for _, m := range r.metrics() {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", m.name, m.help, m.name, m.name, m.value)
	}
}

// MetricsHandler serves /metrics (Prometheus text format), /healthz and
// /readyz (ready while connected to NATS and not closing), for a listener
// of their own: the notification listener serves Graph only.
func (r *Receiver) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		r.WriteMetrics(w)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		r.mu.Lock()
		closed := r.closed
		r.mu.Unlock()
		switch {
		case closed:
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
		case r.cfg.JetStream.Conn() != nil && !r.cfg.JetStream.Conn().IsConnected():
			http.Error(w, "NATS not connected", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ready")
		}
	})
	return mux
}

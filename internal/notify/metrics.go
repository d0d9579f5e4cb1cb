package notify

import (
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
)

type counters struct {
	answers                                                                                   [answerCount]atomic.Int64
	received, lifecycle, previous, published, coalesced, deferred, dropped, failures, retries atomic.Int64
}

// Stats are the receiver's counters since it started.
type Stats struct {
	// Requests counts the requests by answer: accepted, handshake,
	// forbidden, bad_request, too_large, not_found, method_not_allowed,
	// busy, unavailable, shutting_down.
	Requests map[string]int64
	// Received counts notifications read (items of a POST's value array,
	// at most Config.MaxItems a POST), accepted or not.
	Received int64
	// Refused counts requests answered 403: none of their notifications
	// carried the instance's clientState.
	Refused int64
	// Lifecycle counts accepted lifecycle notifications.
	Lifecycle int64
	// PreviousKey counts notifications accepted under a previous master
	// key: once it stays still, no subscription uses one any more.
	PreviousKey int64
	// Published counts triggers stored in the jobs stream.
	Published int64
	// Coalesced counts accepted requests that made no trigger of their
	// own: they joined a trigger being stored or one already deferred.
	Coalesced int64
	// Deferred counts triggers deferred to the end of an instance's
	// spacing.
	Deferred int64
	// Dropped counts deferred triggers given up on after the retries: their
	// notifications were answered 202; the instance's next scheduled round
	// picks the change up.
	Dropped int64
	// PublishFailures counts failed publish attempts (answered 503 when the
	// request waited for it).
	PublishFailures int64
	// PublishRetries counts a deferred trigger's attempts after its first.
	PublishRetries int64
	// Pending counts instances whose trigger is being stored or whose
	// spacing runs.
	Pending int
}

// Stats returns the counters.
func (r *Receiver) Stats() Stats {
	c := &r.stats
	r.mu.Lock()
	pending := len(r.pending)
	r.mu.Unlock()
	s := Stats{Requests: map[string]int64{}, Received: c.received.Load(), Refused: c.answers[answerForbidden].Load(), Lifecycle: c.lifecycle.Load(),
		PreviousKey: c.previous.Load(), Published: c.published.Load(), Coalesced: c.coalesced.Load(), Deferred: c.deferred.Load(), Dropped: c.dropped.Load(),
		PublishFailures: c.failures.Load(), PublishRetries: c.retries.Load(), Pending: pending}
	for a := answerAccepted; a < answerCount; a++ {
		s.Requests[answerInfo[a].label] = c.answers[a].Load()
	}
	return s
}

// metric is one counter of the exposition.
type metric struct {
	name, help string
	value      int64
}

func (r *Receiver) metrics(s Stats) []metric {
	return []metric{
		{"m365_notify_received_total", "Change and lifecycle notifications read, accepted or not.", s.Received},
		{"m365_notify_refused_total", "Requests refused (403): no notification carried the instance's clientState.", s.Refused},
		{"m365_notify_lifecycle_total", "Accepted lifecycle notifications (reauthorizationRequired, subscriptionRemoved, missed).", s.Lifecycle},
		{"m365_notify_previous_key_total", "Notifications accepted under a previous master key (a rotation is done once it stays still).", s.PreviousKey},
		{"m365_notify_triggers_published_total", "Sync triggers stored in the jobs stream.", s.Published},
		{"m365_notify_coalesced_total", "Accepted requests that made no trigger of their own.", s.Coalesced},
		{"m365_notify_triggers_deferred_total", "Triggers deferred to the end of an instance's spacing.", s.Deferred},
		{"m365_notify_triggers_dropped_total", "Deferred triggers given up on after the publish retries (their notifications were answered 202).", s.Dropped},
		{"m365_notify_publish_failures_total", "Failed publish attempts.", s.PublishFailures},
		{"m365_notify_publish_retries_total", "Deferred triggers' publish attempts after their first.", s.PublishRetries},
	}
}

// WriteMetrics writes the counters in the Prometheus text format.
func (r *Receiver) WriteMetrics(w io.Writer) {
	s := r.Stats()
	const req = "m365_notify_requests_total"
	fmt.Fprintf(w, "# HELP %s Requests by answer.\n# TYPE %s counter\n", req, req)
	for a := answerAccepted; a < answerCount; a++ {
		fmt.Fprintf(w, "%s{answer=%q} %d\n", req, answerInfo[a].label, s.Requests[answerInfo[a].label])
	}
	for _, m := range r.metrics(s) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", m.name, m.help, m.name, m.name, m.value)
	}
	if f := r.connStats.Load(); f != nil {
		open, refused := (*f)()
		fmt.Fprintf(w, "# HELP m365_notify_connections_open Connections open on the notification listener.\n# TYPE m365_notify_connections_open gauge\nm365_notify_connections_open %d\n", open)
		fmt.Fprintf(w, "# HELP m365_notify_connections_refused_total Connections closed for the listener's cap (waiting ones making room, or new ones when every connection had a request in progress).\n# TYPE m365_notify_connections_refused_total counter\nm365_notify_connections_refused_total %d\n", refused)
	}
	fmt.Fprintf(w, "# HELP m365_notify_pending Instances whose trigger is being stored or whose spacing runs.\n# TYPE m365_notify_pending gauge\nm365_notify_pending %d\n", s.Pending)
}

// ConnectionStats makes /metrics show the notification listener's open
// and refused connections, as f reports them.
func (r *Receiver) ConnectionStats(f func() (open, refused int64)) { r.connStats.Store(&f) }

// MetricsHandler serves /metrics (Prometheus text format), /healthz and
// /readyz (ready while connected to NATS and not shutting down), for a
// listener of their own: the notification listener serves Graph only.
func (r *Receiver) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		r.WriteMetrics(w)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case r.closing():
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
		case !r.connected():
			http.Error(w, "NATS not connected", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ready")
		}
	})
	return mux
}

package worker

import (
	"errors"
	"time"
)

// A notification trigger (<prefix>.jobs.<pool>.<instance>.notified) is a
// hint from the internet-facing receiver, which knows no instance: anyone
// holding a pool's notification key can mint one for any instance name. A
// hint for an instance that does not exist is dropped before it costs
// anything: no lock, no ledger key, no result, no failure record; it is
// acked and counted (Stats.Dropped, m365_jobs_total{outcome="dropped"}).

// errDropped: a notification trigger for an instance this pool does not
// have; acked without a result.
var errDropped = errors.New("notification trigger for an unknown instance")

// checkHint drops a notification trigger whose instance does not exist in
// the worker's pool. Other jobs pass.
func (w *Worker) checkHint(d *delivery) error {
	if d.addrErr != nil || !d.addr.Notified {
		return nil
	}
	_, err := w.instances.Lookup(d.ctx, w.cfg.Pool, d.addr.Instance)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrInstanceNotFound):
		return errDropped
	default:
		return RetryAfter(2*time.Second, err)
	}
}

// drop acks a dropped trigger: nothing is stored for it.
func (w *Worker) drop(d *delivery) {
	d.log.Debug("worker: notification trigger for an unknown instance dropped")
	w.stats.Dropped.Add(1)
	w.metrics.observe(w.actionLabel(d.addr.Action), "dropped", 0)
	_ = d.msg.Ack()
}

package notify

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/retry"
)

// Coalescing. Accepted notifications of one target open a window (the
// first) or join it; when the window ends, its trigger is published by a
// goroutine of the target's own, so a target whose publishes fail does not
// hold up the others. A window that ends while its target's previous
// trigger is still being published waits for it, and all such windows make
// one more trigger: at most one publish per target is in flight, and at most
// one waits behind it.

// pending is a target's coalescing state; r.mu guards it.
type pending struct {
	window     *time.Timer // set while a window is open
	gen        uint64      // the open window's number, so a late timer is ignored
	publishing bool        // a goroutine publishes the target's triggers
	again      bool        // a window ended while publishing: publish once more
}

// accept counts n accepted notifications of t into its window, opening one
// if none is open. False once the receiver is closing.
func (r *Receiver) accept(t target, n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	p := r.pending[t]
	if p == nil {
		p = &pending{}
		r.pending[t] = p
	}
	if p.window != nil {
		r.stats.coalesced.Add(int64(n))
		return true
	}
	r.stats.coalesced.Add(int64(n - 1))
	p.gen++
	gen := p.gen
	p.window = time.AfterFunc(r.cfg.Window, func() { r.windowEnd(t, gen) })
	return true
}

// windowEnd publishes the trigger of t's window gen, unless a flush did.
func (r *Receiver) windowEnd(t target, gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pending[t]
	if p == nil || p.window == nil || p.gen != gen {
		return
	}
	p.window = nil
	r.startPublish(t, p)
}

// startPublish hands t's trigger to its publishing goroutine, starting one
// when none runs. r.mu is held.
func (r *Receiver) startPublish(t target, p *pending) {
	if p.publishing {
		if p.again {
			r.stats.coalesced.Add(1) // joins the trigger already waiting
		}
		p.again = true
		return
	}
	p.publishing = true
	r.wg.Add(1)
	go r.publishLoop(t, p)
}

// publishLoop publishes t's triggers until none waits.
func (r *Receiver) publishLoop(t target, p *pending) {
	defer r.wg.Done()
	for {
		r.publish(t)
		r.mu.Lock()
		if p.again {
			p.again = false
			r.mu.Unlock()
			continue
		}
		p.publishing = false
		if p.window == nil {
			delete(r.pending, t)
		}
		r.mu.Unlock()
		return
	}
}

// publish stores one trigger of t, retrying under the policy; a trigger
// given up on is counted and logged.
func (r *Receiver) publish(t target) {
	subject := TriggerSubject(r.cfg.Subjects, t.pool, t.instance)
	body, err := json.Marshal(TriggerJob(t.instance))
	if err != nil { // a Job always marshals
		panic(err)
	}
	attempts := 0
	err = retry.Do(r.ctx, r.cfg.Retry, func() error {
		attempts++
		if attempts > 1 {
			r.stats.retries.Add(1)
		}
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.PublishTimeout)
		defer cancel()
		// Rollup on the subject: an instance's triggers replace each other
		// in the stream, so a burst leaves at most one waiting.
		msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		_, err := r.cfg.JetStream.PublishMsg(ctx, msg)
		return err
	})
	log := r.cfg.Logger.With("pool", t.pool, "instance", t.instance, "subject", subject, "attempts", attempts)
	if err != nil {
		r.stats.failures.Add(1)
		log.Error("notify: trigger not published; the instance syncs at its next scheduled round", "error", err)
		return
	}
	r.stats.published.Add(1)
	log.Debug("notify: trigger published")
}

// Shutdown stops accepting notifications (answered 503 from now on, so
// Graph delivers them again later), publishes the triggers of open windows
// at once and waits for every publish. When ctx ends first, publishes still
// retrying are abandoned (counted failed and logged) and ctx's error is
// returned.
func (r *Receiver) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		for t, p := range r.pending {
			if p.window != nil {
				p.window.Stop()
				p.window = nil
				r.startPublish(t, p)
			}
		}
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	defer r.cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		r.cancel()
		<-done
		return ctx.Err()
	}
}

// Close is Shutdown without a deadline: publishes end within the retry
// policy.
func (r *Receiver) Close() { _ = r.Shutdown(context.Background()) }

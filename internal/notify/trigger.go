package notify

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/tevyra/m365-worker/internal/retry"
	"github.com/tevyra/m365-worker/internal/tracing"
)

// Triggers are hints, spaced per instance. The first accepted notification
// of an instance publishes its trigger while Graph waits for the answer:
// 202 once it is stored, 503 with Retry-After when it cannot be (Graph
// delivers the notification again), so nothing is answered 202 that was
// not stored. Requests for the instance meanwhile wait for that publish
// and get its answer. The trigger opens a spacing (Config.Spacing):
// notifications within it make exactly one more trigger, published when it
// ends (a deferred trigger: its notifications were answered 202, while the
// receiver's last publish succeeded, and it is retried under Config.Retry;
// given up on, it is counted dropped and the instance's scheduled round
// picks the change up). So one instance makes at most one trigger per
// spacing however many notifications come, replayed or not.

var (
	errClosing = errors.New("the receiver is shutting down")
	errFull    = errors.New("too many instances pending")
	errNoNATS  = errors.New("not connected to NATS")
)

// pending is a target's trigger state; r.mu guards it.
type pending struct {
	inflight   *call        // the spacing's first trigger, being published
	timer      *time.Timer  // ends the spacing of the last stored trigger
	want       bool         // a notification came during the spacing: one more trigger at its end
	publishing bool         // a deferred trigger is being published
	links      []trace.Link // the spans of the requests the deferred trigger stands for
}

// call is a publish requests wait for.
type call struct {
	done chan struct{}
	err  error
	span trace.SpanContext // the publish's
}

// trigger stores or defers t's trigger for n accepted notifications, ctx
// holding the request's span. nil means stored or deferred (answer 202).
func (r *Receiver) trigger(ctx context.Context, t target, n int) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return errClosing
	}
	p := r.pending[t]
	switch {
	case p == nil && len(r.pending) >= r.cfg.MaxPending:
		r.mu.Unlock()
		return errFull
	case p == nil:
		p = &pending{inflight: &call{done: make(chan struct{})}}
		r.pending[t] = p
		r.mu.Unlock()
		return r.publishFirst(trace.ContextWithSpan(r.ctx, trace.SpanFromContext(ctx)), t, p)
	case p.inflight != nil:
		c := p.inflight
		r.mu.Unlock()
		r.stats.coalesced.Add(1)
		select {
		case <-c.done:
			if c.span.IsValid() {
				trace.SpanFromContext(ctx).AddLink(trace.Link{SpanContext: c.span})
			}
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	default: // the spacing runs, or a deferred trigger is being published
		if p.want {
			r.stats.coalesced.Add(1)
		} else {
			p.want = true
			r.stats.deferred.Add(1)
		}
		if l, ok := linkTo(ctx); ok && len(p.links) < maxLinks {
			p.links = append(p.links, l)
		}
		r.mu.Unlock()
		if !r.connected() || r.failing.Load() {
			return errNoNATS // deferred all the same; Graph tries again
		}
		return nil
	}
}

// publishFirst publishes the first trigger of a spacing, once, while the
// request waits; ctx holds the request's span.
func (r *Receiver) publishFirst(ctx context.Context, t target, p *pending) error {
	sc, err := r.publishOnce(ctx, t, nil)
	r.mu.Lock()
	c := p.inflight
	p.inflight, c.err, c.span = nil, err, sc
	if err == nil {
		r.startSpacing(t, p)
	} else {
		delete(r.pending, t) // the next notification tries again
	}
	r.mu.Unlock()
	close(c.done)
	return err
}

// startSpacing starts t's spacing after a stored trigger. r.mu is held.
func (r *Receiver) startSpacing(t target, p *pending) {
	switch {
	case r.closed && p.want:
		r.startDeferred(t, p) // published at once during a shutdown
		return
	case r.closed:
		delete(r.pending, t)
		return
	}
	p.timer = time.AfterFunc(r.cfg.Spacing, func() { r.spacingEnd(t, p) })
}

// spacingEnd publishes t's deferred trigger, if a notification came during
// the spacing, or forgets t.
func (r *Receiver) spacingEnd(t target, p *pending) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending[t] != p || p.timer == nil {
		return // Shutdown took it over
	}
	p.timer = nil
	if !p.want {
		delete(r.pending, t)
		return
	}
	r.startDeferred(t, p)
}

// startDeferred starts publishing t's deferred trigger. r.mu is held.
func (r *Receiver) startDeferred(t target, p *pending) {
	links := p.links
	p.want, p.publishing, p.links = false, true, nil
	r.wg.Add(1)
	go r.publishDeferred(t, p, links)
}

// publishDeferred stores a deferred trigger under the retry policy; one
// given up on is counted dropped and logged. Its span links to those of
// the requests it stands for.
func (r *Receiver) publishDeferred(t target, p *pending, links []trace.Link) {
	defer r.wg.Done()
	attempts := 0
	err := retry.Do(r.ctx, r.cfg.Retry, func() error {
		attempts++
		if attempts > 1 {
			r.stats.retries.Add(1)
		}
		_, err := r.publishOnce(r.ctx, t, links)
		return err
	})
	if err != nil {
		r.stats.dropped.Add(1)
		r.cfg.Logger.Error("notify: deferred trigger not published; the instance syncs at its next scheduled round",
			"pool", t.pool, "instance", t.instance, "attempts", attempts, "error", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	p.publishing = false
	switch {
	case err == nil || p.want:
		r.startSpacing(t, p)
	default:
		delete(r.pending, t)
	}
}

// publishOnce stores one trigger of t: a JetStream publish with the rollup
// header, bounded by PublishTimeout, under a producer span (the child of
// ctx's, linking to links) whose context it returns.
func (r *Receiver) publishOnce(ctx context.Context, t target, links []trace.Link) (trace.SpanContext, error) {
	body, err := json.Marshal(TriggerJob(t.instance))
	if err != nil { // a Job always marshals
		panic(err)
	}
	subject := TriggerSubject(r.cfg.Subjects, t.pool, t.instance)
	ctx, span := r.sendSpan(ctx, t, subject, len(body), links)
	defer span.End()
	err = r.store(ctx, subject, body)
	r.failing.Store(err != nil)
	if err != nil {
		r.stats.failures.Add(1)
		traceSendError(span, err)
		r.cfg.Logger.Warn("notify: trigger not stored", append([]any{"pool", t.pool, "instance", t.instance, "error", err}, tracing.LogAttrs(ctx)...)...)
		return span.SpanContext(), err
	}
	r.stats.published.Add(1)
	return span.SpanContext(), nil
}

func (r *Receiver) store(ctx context.Context, subject string, body []byte) error {
	if !r.connected() {
		return errNoNATS
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	// Rollup on the subject: an instance's triggers replace each other in
	// the stream, so at most one waits. The trace context of the publish's
	// span goes along: the round the trigger causes links to it.
	msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	tracing.Inject(ctx, msg.Header)
	_, err := r.cfg.JetStream.PublishMsg(ctx, msg, jetstream.WithMsgTTL(r.cfg.TriggerTTL))
	return err
}

// connected reports whether the receiver's NATS connection is up.
func (r *Receiver) connected() bool {
	nc := r.cfg.JetStream.Conn()
	return nc == nil || nc.IsConnected()
}

// BeginShutdown stops accepting notifications (answered 503 with
// Retry-After from now on, so Graph delivers them again later; /readyz
// fails) and publishes the deferred triggers at once.
func (r *Receiver) BeginShutdown() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.closed = true
	for t, p := range r.pending {
		if p.timer == nil {
			continue
		}
		p.timer.Stop()
		p.timer = nil
		if p.want {
			r.startDeferred(t, p)
		} else {
			delete(r.pending, t)
		}
	}
}

// Shutdown is BeginShutdown, then waits for the deferred publishes. When
// ctx ends first, publishes still retrying are abandoned (counted dropped
// and logged) and ctx's error is returned.
func (r *Receiver) Shutdown(ctx context.Context) error {
	r.BeginShutdown()
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

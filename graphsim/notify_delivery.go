package graphsim

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"time"
)

// Delivery of change notifications. The model's changes reach the notifier
// through Tenant.onChange (under the tenant lock); it queues a notification
// per matching subscription, by receiver URL, and one goroutine per URL
// POSTs what is due, batched, retrying failures. The notifier's lock is
// taken after the tenant lock, never before it, and never held during a
// call to a receiver.

const (
	maxBatch       = 100                    // notifications per POST, as Graph
	batchWindow    = 5 * time.Millisecond   // real time a due notification waits for others to join its POST
	duplicateDelay = time.Second            // model time between a notification and its duplicate
	minTimer       = 100 * time.Microsecond // shortest real wait, against busy loops
)

// notification is one element of the "value" array Graph POSTs: a change
// notification or, with LifecycleEvent, a lifecycle notification.
type notification struct {
	SubscriptionID         string        `json:"subscriptionId"`
	SubscriptionExpiration string        `json:"subscriptionExpirationDateTime"`
	ChangeType             string        `json:"changeType,omitempty"`
	Resource               string        `json:"resource,omitempty"`
	ResourceData           *resourceData `json:"resourceData,omitempty"`
	LifecycleEvent         string        `json:"lifecycleEvent,omitempty"`
	ClientState            *string       `json:"clientState"`
	TenantID               string        `json:"tenantId"`
}

// resourceData is a basic notification's reference to the changed object.
type resourceData struct {
	ODataType      string `json:"@odata.type"`
	ODataID        string `json:"@odata.id"`
	ID             string `json:"id"`
	OrganizationID string `json:"organizationId"`
}

// delivery is a notification waiting in a URL's queue.
type delivery struct {
	sub       string // subscription id
	tenant    string
	due       time.Time // model time
	attempt   int       // failed POSTs so far
	lifecycle bool
	value     *notification
}

// queue holds one receiver URL's deliveries, by due time (FIFO among
// equals).
type queue struct {
	url   string
	items []*delivery
	wake  chan struct{}
}

// notifyStats counts a tenant's change notifications.
type notifyStats struct{ sent, delivered, dropped int64 }

// notifier owns the subscriptions and their deliveries.
type notifier struct {
	clock  clock
	opts   Options
	client *http.Client
	ctx    context.Context // cancelled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	subs   []*subscription // creation order: deliveries are reproducible
	queues map[string]*queue
	stats  map[string]*notifyStats // by tenant id
	rnd    *rand.Rand
}

func (o Options) withNotifyDefaults() Options {
	if o.ValidationTimeout <= 0 {
		o.ValidationTimeout = 10 * time.Second
	}
	if o.NotifyTimeout <= 0 {
		o.NotifyTimeout = 3 * time.Second
	}
	if o.NotifyRetries == 0 {
		o.NotifyRetries = 5
	}
	if o.NotifyRetryDelay <= 0 {
		o.NotifyRetryDelay = 10 * time.Second
	}
	if o.SubscriptionQuota <= 0 {
		o.SubscriptionQuota = 100
	}
	return o
}

func newNotifier(c clock, opts Options) *notifier {
	n := &notifier{clock: c, opts: opts, client: opts.NotifyClient, queues: map[string]*queue{}, stats: map[string]*notifyStats{},
		rnd: rand.New(rand.NewPCG(uint64(opts.Seed), 0x6e6f74696679))}
	if n.client == nil {
		n.client = &http.Client{Timeout: 10 * time.Second}
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	return n
}

// close stops every delivery goroutine and waits for them; later changes
// are not notified.
func (n *notifier) close() {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	n.cancel()
	n.wg.Wait()
}

// Now is the simulator's model time: the clock of throttling, token and
// subscription lifetimes and notification latency, TimeScale times faster
// than real time.
func (s *Server) Now() time.Time { return s.clock.now() }

// hook is a tenant's onChange.
func (n *notifier) hook(tenantID string) func(kind, id string, purged bool) {
	return func(kind, id string, purged bool) { n.changed(tenantID, kind, id, purged) }
}

// changed queues a notification of a change for each matching live
// subscription: "deleted" for a permanent delete, else "updated" (Graph
// reports creation and soft deletion of users and groups as updates).
func (n *notifier) changed(tenantID, kind, id string, purged bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || len(n.subs) == 0 {
		return
	}
	now := n.clock.now()
	n.sweep(now)
	changeType := "updated"
	if purged {
		changeType = "deleted"
	}
	for _, sub := range n.subs {
		if sub.tenantID != tenantID || sub.reauthPending || !sub.matches(kind, id, changeType) {
			continue
		}
		if n.chance(n.opts.NotifyDropRate) {
			n.statsOf(tenantID).dropped++
			continue
		}
		d := &delivery{sub: sub.id, tenant: tenantID, due: now.Add(n.opts.NotifyLatency), value: sub.changeNotification(kind, id, changeType)}
		n.enqueue(sub.notificationURL, d)
		if n.chance(n.opts.NotifyDuplicateRate) {
			dup := *d
			dup.due = d.due.Add(duplicateDelay)
			n.enqueue(sub.notificationURL, &dup)
		}
	}
}

// lifecycle queues a lifecycle notification for sub. n.mu is held.
func (n *notifier) lifecycle(sub *subscription, event string) {
	if n.closed || sub.lifecycleURL == "" {
		return
	}
	v := &notification{SubscriptionID: sub.id, SubscriptionExpiration: graphTime(sub.expires), LifecycleEvent: event,
		ClientState: sub.clientStateOrNil(), TenantID: sub.tenantID}
	n.enqueue(sub.lifecycleURL, &delivery{sub: sub.id, tenant: sub.tenantID, due: n.clock.now(), lifecycle: true, value: v})
}

// chance draws whether an event of the given rate happens. n.mu is held.
func (n *notifier) chance(rate float64) bool { return rate > 0 && n.rnd.Float64() < rate }

func (n *notifier) statsOf(tenantID string) *notifyStats {
	st := n.stats[tenantID]
	if st == nil {
		st = &notifyStats{}
		n.stats[tenantID] = st
	}
	return st
}

// enqueue adds d to its URL's queue, starting the queue's goroutine the
// first time. n.mu is held.
func (n *notifier) enqueue(url string, d *delivery) {
	q := n.queues[url]
	if q == nil {
		q = &queue{url: url, wake: make(chan struct{}, 1)}
		n.queues[url] = q
		n.wg.Add(1)
		go n.run(q)
	}
	i := sort.Search(len(q.items), func(i int) bool { return q.items[i].due.After(d.due) })
	q.items = append(q.items, nil)
	copy(q.items[i+1:], q.items[i:])
	q.items[i] = d
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// run delivers one URL's queue until the notifier closes.
func (n *notifier) run(q *queue) {
	defer n.wg.Done()
	for {
		wait, queued := n.untilDue(q)
		switch {
		case !queued:
			if !n.sleep(q, -1) {
				return
			}
		case wait > 0:
			if !n.sleep(q, max(n.clock.real(wait), minTimer)) {
				return
			}
		default:
			// Due: let the notifications of the same burst join the POST.
			if !n.sleep(nil, batchWindow) {
				return
			}
			if batch := n.take(q); len(batch) > 0 {
				n.send(q.url, batch)
			}
		}
	}
}

// sleep waits d of real time (forever when negative) or until q is woken;
// false when the notifier closed.
func (n *notifier) sleep(q *queue, d time.Duration) bool {
	var wake chan struct{}
	if q != nil {
		wake = q.wake
	}
	var timer <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-n.ctx.Done():
		return false
	case <-wake:
	case <-timer:
	}
	return true
}

// untilDue is the model time until q's first delivery is due; false when q
// is empty.
func (n *notifier) untilDue(q *queue) (time.Duration, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(q.items) == 0 {
		return 0, false
	}
	return q.items[0].due.Sub(n.clock.now()), true
}

// take removes the due deliveries at the head of q, of one kind (change or
// lifecycle), up to a batch. Change notifications whose subscription has
// since gone, expired or lost its authorization are dropped.
func (n *notifier) take(q *queue) []*delivery {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.clock.now()
	n.sweep(now)
	var batch []*delivery
	i := 0
	for ; i < len(q.items) && len(batch) < maxBatch; i++ {
		d := q.items[i]
		if d.due.After(now) || len(batch) > 0 && d.lifecycle != batch[0].lifecycle {
			break
		}
		sub := n.find(d.sub)
		switch {
		case d.lifecycle && sub != nil:
			batch = append(batch, d)
		case d.lifecycle:
		case sub == nil || sub.reauthPending:
			n.statsOf(d.tenant).dropped++
		default:
			batch = append(batch, d)
			n.statsOf(d.tenant).sent++
		}
	}
	q.items = q.items[i:]
	return batch
}

// send POSTs a batch and settles it: counted delivered on a 2xx, else
// queued again after a backoff or, past the retries, dropped.
func (n *notifier) send(url string, batch []*delivery) {
	ok := n.post(url, batch)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	now := n.clock.now()
	for _, d := range batch {
		switch {
		case ok && !d.lifecycle:
			n.statsOf(d.tenant).delivered++
		case ok:
		case d.attempt >= n.opts.NotifyRetries:
			if !d.lifecycle {
				n.statsOf(d.tenant).dropped++
			}
		default:
			d.attempt++
			d.due = now.Add(n.opts.NotifyRetryDelay << min(d.attempt-1, 20))
			n.enqueue(url, d)
		}
	}
}

// post makes one POST of notifications; true when answered with a 2xx in
// time.
func (n *notifier) post(url string, batch []*delivery) bool {
	values := make([]*notification, len(batch))
	for i, d := range batch {
		values[i] = d.value
	}
	body, err := json.Marshal(map[string]any{"value": values})
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.opts.NotifyTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	resp, err := n.client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}

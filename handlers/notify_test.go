package handlers_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

// notifyEnv is an env whose simulator notifies a real receiver (over TLS)
// that publishes triggers on the env's JetStream, and whose workers keep
// the instances' subscriptions.
type notifyEnv struct {
	*env
	recv *notify.Receiver
	late *lateHandler
}

var notifyMaster = []byte("0123456789abcdef0123456789abcdef-test-master")

type lateHandler struct{ h atomic.Pointer[http.Handler] }

func (l *lateHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := l.h.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	http.Error(w, "not ready", http.StatusServiceUnavailable)
}

func newNotifyEnv(t *testing.T, o graphsim.Options, cfg handlers.NotifyConfig) *notifyEnv {
	t.Helper()
	late := &lateHandler{}
	hooks := httptest.NewTLSServer(late)
	t.Cleanup(hooks.Close)
	o.NotifyClient = hooks.Client()
	e := newEnv(t, o)
	recv, err := notify.New(notify.Config{Master: notifyMaster, JetStream: e.js, Spacing: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(recv.Close)
	var h http.Handler = recv
	late.h.Store(&h)
	cfg.BaseURL, cfg.PoolKey = hooks.URL, notify.PoolKey(notifyMaster, "default")
	e.notify = cfg
	return &notifyEnv{env: e, recv: recv, late: late}
}

func (e *notifyEnv) subscriptions(tenant int) []graphsim.SubscriptionInfo {
	var subs []graphsim.SubscriptionInfo
	_ = e.sim.Mutate(e.sim.Credentials()[tenant].TenantID, func(a *graphsim.Admin) error { subs = a.Subscriptions(); return nil })
	return subs
}

func (e *notifyEnv) meta(instance string) handlers.SyncMeta {
	m, err := handlers.ReadSyncMeta(context.Background(), e.store.For("default", instance))
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

func (e *notifyEnv) reportsBy(instance, trigger string) []jobs.SyncReport {
	var out []jobs.SyncReport
	for _, r := range e.reports(instance) {
		if r.Trigger == trigger {
			out = append(out, r)
		}
	}
	return out
}

// eventually is workertest.Eventually that, on a timeout, says what the
// receiver and the sync reports saw.
func (e *notifyEnv) eventually(d time.Duration, what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			for _, r := range e.reports("acme") {
				e.t.Logf("report %s trigger %s outcome %s mode %s counts %v error %+v", r.JobID, r.Trigger, r.Outcome, r.Mode, r.Counts, r.Error)
			}
			e.t.Fatalf("timed out after %s waiting for %s; receiver %+v", d, what, e.recv.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// idle reports whether the pool has no job waiting or in flight and the
// receiver no trigger pending.
func (e *notifyEnv) idle() bool {
	c, err := e.js.Consumer(context.Background(), "M365_JOBS", "m365_pool_default")
	if err != nil {
		return false
	}
	info, err := c.Info(context.Background())
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && e.recv.Stats().Pending == 0
}

func (e *notifyEnv) admin(tenant int, f func(a *graphsim.Admin)) {
	if err := e.sim.Mutate(e.sim.Credentials()[tenant].TenantID, func(a *graphsim.Admin) error { f(a); return nil }); err != nil {
		e.t.Fatal(err)
	}
}

// A change made in the tenant reaches the consumer's view through a
// notification, long before the hourly poll; a burst of 500 notifications
// makes at most two rounds.
func TestChangeNotificationTriggersARound(t *testing.T) {
	e := newNotifyEnv(t, graphsim.Options{Tenants: 1, Users: 30, Groups: 3, Seed: 7}, handlers.NotifyConfig{})
	e.addInstance("acme", 0, time.Hour)
	e.startWorker(worker.Config{})
	e.syncNow("acme", true)
	subs := e.subscriptions(0)
	if len(subs) != 2 || !e.meta("acme").Notify.Healthy(time.Now()) {
		t.Fatalf("after the first round: subscriptions %+v, state %+v", subs, e.meta("acme").Notify)
	}
	for _, s := range subs {
		if s.ClientState != notify.ClientState(e.notify.PoolKey, "acme") || s.ChangeType != "updated,deleted" {
			t.Errorf("subscription %+v", s)
		}
	}

	var id string
	e.admin(0, func(a *graphsim.Admin) { id = a.CreateUser("fresh.user", "Fresh User").ID })
	// A round publishes its asset deltas before its report, so the user can
	// be in the view a moment before the report that brought it: wait for
	// both, then check that no round but the first and the notification's ran.
	workertest.Eventually(t, 60*time.Second, "the new user in the consumer's view", func() bool { _, ok := e.rebuild("acme").users[id]; return ok })
	workertest.Eventually(t, 60*time.Second, "a notification-triggered round's report", func() bool { return len(e.reportsBy("acme", jobs.TriggerNotification)) > 0 })
	for _, r := range e.reports("acme")[1:] {
		if r.Trigger != jobs.TriggerNotification {
			t.Fatalf("a round triggered by %q ran besides the notification's: %+v", r.Trigger, r)
		}
	}

	before := len(e.reportsBy("acme", jobs.TriggerNotification))
	received := e.recv.Stats().Received
	e.admin(0, func(a *graphsim.Admin) {
		u := a.User(id)
		for i := range 500 {
			a.UpdateUser(u, func(u *graphsim.User) { u.JobTitle = ptr(fmt.Sprintf("title-%d", i)) })
		}
	})
	workertest.Eventually(t, 60*time.Second, "500 notifications received", func() bool { return e.recv.Stats().Received-received >= 500 })
	e.eventually(60*time.Second, "the last title in the consumer's view", func() bool {
		u, ok := e.rebuild("acme").users[id]
		return ok && u.JobTitle != nil && *u.JobTitle == "title-499"
	})
	workertest.Eventually(t, 60*time.Second, "the pool to be idle", e.idle)
	if n := len(e.reportsBy("acme", jobs.TriggerNotification)) - before; n < 1 || n > 2 {
		t.Errorf("500 notifications made %d rounds, want 1 or 2 (receiver %+v)", n, e.recv.Stats())
	}
}

// A notification Graph never delivers is caught by the backstop round,
// which also casts doubt on the subscriptions (the instance is polled at its
// normal interval again); ticks before the backstop is due are closed
// without a Graph request.
func TestDroppedNotificationCaughtByTheBackstop(t *testing.T) {
	e := newNotifyEnv(t, graphsim.Options{Tenants: 1, Users: 20, Groups: 2, Seed: 8, NotifyDropRate: 1}, handlers.NotifyConfig{Backstop: 3 * time.Second})
	e.addInstance("acme", 0, time.Hour)
	e.startWorker(worker.Config{})
	e.syncNow("acme", true)
	if !e.meta("acme").Notify.Healthy(time.Now()) {
		t.Fatalf("subscriptions: %+v", e.meta("acme").Notify)
	}
	// Ticks every second from now on.
	if err := worker.NewSchedules(e.js, e.srv.Topology).Set(context.Background(), worker.Instance{ID: "acme", Pool: "default", SyncInterval: worker.Duration(time.Second)}); err != nil {
		t.Fatal(err)
	}
	var id string
	e.admin(0, func(a *graphsim.Admin) { id = a.CreateUser("unannounced", "Unannounced").ID })
	workertest.Eventually(t, 60*time.Second, "the user, by the backstop round", func() bool { _, ok := e.rebuild("acme").users[id]; return ok })
	// The round's deltas come before its report and its state: wait for the
	// doubt it casts rather than read it the moment the user shows.
	workertest.Eventually(t, 60*time.Second, "the backstop round's doubt on the subscriptions", func() bool {
		m := e.meta("acme")
		return m.Notify.Doubt != "" && !m.Notify.Healthy(time.Now())
	})
	if n := len(e.reportsBy("acme", jobs.TriggerNotification)); n != 0 {
		t.Errorf("%d notification rounds with every notification dropped", n)
	}
	skipped := 0
	for _, r := range e.reportsBy("acme", jobs.TriggerSchedule) {
		if r.Outcome == jobs.OutcomeSkipped && r.Error != nil && r.Error.Code == handlers.CodeBackstopNotDue && r.GraphRequests == 0 {
			skipped++
		}
	}
	if skipped == 0 {
		t.Error("no tick was closed as not due while notifications were healthy")
	}
}

// Subscriptions are renewed before they run out, made again when Graph has
// forgotten them, and deleted with their instance.
func TestSubscriptionsRenewedAndRecreated(t *testing.T) {
	// RenewBefore longer than a subscription lives: every round renews.
	e := newNotifyEnv(t, graphsim.Options{Tenants: 2, Users: 10, Groups: 2, Seed: 9}, handlers.NotifyConfig{RenewBefore: 60 * 24 * time.Hour})
	e.addInstance("acme", 0, time.Hour)
	e.startWorker(worker.Config{})
	e.syncNow("acme", true)
	first := e.meta("acme").Notify
	e.syncNow("acme", false)
	renewed := e.meta("acme").Notify
	if renewed.Users.ID != first.Users.ID || !renewed.Users.RenewedAt.After(first.Users.RenewedAt) {
		t.Errorf("not renewed: %+v then %+v", first.Users, renewed.Users)
	}
	// A second instance on another tenant: removing it deletes its
	// subscriptions and leaves acme's.
	e.addInstance("globex", 1, time.Hour)
	e.syncNow("globex", true)
	if len(e.subscriptions(1)) != 2 {
		t.Fatalf("globex's subscriptions: %+v", e.subscriptions(1))
	}
	store, _ := worker.OpenInstances(context.Background(), e.js, e.srv.Topology)
	if err := store.Delete(context.Background(), "globex"); err != nil {
		t.Fatal(err)
	}
	workertest.Eventually(t, 30*time.Second, "the removed instance's subscriptions deleted", func() bool { return len(e.subscriptions(1)) == 0 })
	if len(e.subscriptions(0)) != 2 {
		t.Errorf("acme's subscriptions after globex's removal: %+v", e.subscriptions(0))
	}

	e.admin(0, func(a *graphsim.Admin) { a.ForgetSubscriptions() })
	e.syncNow("acme", false)
	again := e.meta("acme").Notify
	subs := e.subscriptions(0)
	if !again.Healthy(time.Now()) || again.Users.ID == first.Users.ID || again.Groups.ID == first.Groups.ID || len(subs) != 2 {
		t.Errorf("after Graph forgot them: %+v, Graph has %+v", again, subs)
	}
}

// Graph's reauthorizationRequired stops a subscription's notifications; the
// lifecycle event triggers a round, which reauthorizes it (by renewing), and
// notifications flow again.
func TestReauthorizationRequiredIsAnswered(t *testing.T) {
	e := newNotifyEnv(t, graphsim.Options{Tenants: 1, Users: 10, Groups: 2, Seed: 10}, handlers.NotifyConfig{Reauthorize: time.Millisecond})
	e.addInstance("acme", 0, time.Hour)
	e.startWorker(worker.Config{})
	e.syncNow("acme", true)
	users := e.meta("acme").Notify.Users.ID
	e.admin(0, func(a *graphsim.Admin) {
		if err := a.RequireReauthorization(users); err != nil {
			t.Fatal(err)
		}
	})
	workertest.Eventually(t, 60*time.Second, "the lifecycle event's round to reauthorize", func() bool {
		for _, s := range e.subscriptions(0) {
			if s.ID == users {
				return !s.ReauthorizationRequired
			}
		}
		return false
	})
	if e.recv.Stats().Lifecycle == 0 {
		t.Error("no lifecycle notification reached the receiver")
	}
	var id string
	e.admin(0, func(a *graphsim.Admin) { id = a.CreateUser("after.reauth", "After").ID })
	workertest.Eventually(t, 60*time.Second, "a user created after the reauthorization, by notification", func() bool { _, ok := e.rebuild("acme").users[id]; return ok })
}

// serve puts a new receiver in front of Graph's notifications.
func (e *notifyEnv) serve(cfg notify.Config) *notify.Receiver {
	e.t.Helper()
	cfg.JetStream, cfg.Spacing = e.js, 300*time.Millisecond
	recv, err := notify.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(recv.Close)
	var h http.Handler = recv
	e.late.h.Store(&h)
	e.recv = recv
	return recv
}

// Master-key rotation end to end: the receiver accepts the old and the new
// master key, the workers given the new pool key move the instance's
// subscriptions to the new clientState (new ones made first, the old ones
// deleted), the old key is dropped, and no notification is refused along
// the way.
func TestMasterKeyRotation(t *testing.T) {
	e := newNotifyEnv(t, graphsim.Options{Tenants: 1, Users: 10, Groups: 2, Seed: 11}, handlers.NotifyConfig{})
	oldMaster := []byte("0123456789abcdef0123456789abcdef-test-master")
	newMaster := []byte("fedcba9876543210fedcba9876543210-the-new-one")
	e.addInstance("acme", 0, time.Hour)
	e.startWorker(worker.Config{})
	stopOld := e.stops[len(e.stops)-1]
	e.syncNow("acme", true)
	receivers := []*notify.Receiver{e.recv}
	var id string
	change := func(name string) {
		t.Helper()
		e.admin(0, func(a *graphsim.Admin) { id = a.CreateUser(name, name).ID })
		workertest.Eventually(t, 60*time.Second, name+" in the consumer's view", func() bool { _, ok := e.rebuild("acme").users[id]; return ok })
	}
	clientStates := func() map[string]int {
		out := map[string]int{}
		for _, s := range e.subscriptions(0) {
			out[s.ClientState]++
		}
		return out
	}
	oldCS, newCS := notify.ClientState(notify.PoolKey(oldMaster, "default"), "acme"), notify.ClientState(notify.PoolKey(newMaster, "default"), "acme")

	// 1. The receiver takes both keys; the subscriptions still carry the old.
	receivers = append(receivers, e.serve(notify.Config{Master: newMaster, PreviousMasters: [][]byte{oldMaster}}))
	change("during.rotation")
	if e.recv.Stats().PreviousKey == 0 {
		t.Error("no notification counted under the previous key")
	}
	// 2. The workers get the new pool key; their next round moves the
	// subscriptions.
	stopOld()
	e.notify.PoolKey = notify.PoolKey(newMaster, "default")
	e.startWorker(worker.Config{})
	e.syncNow("acme", false)
	if cs := clientStates(); cs[newCS] != 2 || cs[oldCS] != 0 {
		t.Fatalf("after the round with the new key: %d subscriptions under the old clientState, %d under the new, want 0 and 2", cs[oldCS], cs[newCS])
	}
	if m := e.meta("acme").Notify; !m.Healthy(time.Now()) || m.Users.KeyID != notify.KeyID(e.notify.PoolKey) || m.Groups.KeyID != m.Users.KeyID {
		t.Errorf("notify state after the move: %+v %+v %+v", m, m.Users, m.Groups)
	}
	// 3. The old key is dropped.
	receivers = append(receivers, e.serve(notify.Config{Master: newMaster}))
	change("after.rotation")
	for i, r := range receivers {
		if s := r.Stats(); s.Refused != 0 || s.Requests["forbidden"] != 0 {
			t.Errorf("receiver %d refused notifications: %+v", i, s)
		}
	}
	var dropped int64
	e.admin(0, func(a *graphsim.Admin) { dropped = a.NotificationsDropped() })
	if dropped != 0 {
		t.Errorf("Graph dropped %d notifications", dropped)
	}
}

// A notification's trace reaches the round it causes: the simulator's
// notification is the receiver's server span, the trigger's publish its
// child, and the round, a trace of its own (one trigger stands for many
// notifications), links to the publish's span through the traceparent the
// trigger carries.
func TestNotificationTraceLinksToItsRound(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	e := newNotifyEnv(t, graphsim.Options{Tenants: 1, Users: 20, Groups: 2, Seed: 9}, handlers.NotifyConfig{})
	recv, err := notify.New(notify.Config{Master: notifyMaster, JetStream: e.js, Spacing: 300 * time.Millisecond, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(recv.Close)
	var h http.Handler = recv
	e.late.h.Store(&h)
	e.recv = recv
	e.addInstance("acme", 0, time.Hour)
	e.startWorker(worker.Config{TracerProvider: tp})
	e.syncNow("acme", true)
	e.admin(0, func(a *graphsim.Admin) { a.CreateUser("traced.user", "Traced User") })

	var round, send, server tracetest.SpanStub
	workertest.Eventually(t, 60*time.Second, "a round triggered by the notification, linked to the receiver's spans", func() bool {
		ss := collected(exp)
		for _, s := range ss {
			if s.SpanKind != trace.SpanKindConsumer || attr(s, "m365.trigger") != jobs.TriggerNotification || attr(s, "m365.outcome") != "succeeded" || len(s.Links) != 1 {
				continue
			}
			round, send = s, ss[s.Links[0].SpanContext.SpanID()]
			server = ss[send.Parent.SpanID()]
			return true
		}
		return false
	})
	if round.Parent.IsValid() || round.SpanContext.TraceID() == send.SpanContext.TraceID() {
		t.Errorf("the round is not a trace of its own: parent %v", round.Parent)
	}
	if send.Name != "send m365.jobs.default.{instance}.notified" || send.SpanKind != trace.SpanKindProducer || attr(send, "messaging.destination.name") != "m365.jobs.default.acme.notified" {
		t.Fatalf("the round links to %q (%v), not the trigger's publish", send.Name, send.SpanKind)
	}
	if server.SpanKind != trace.SpanKindServer || server.Name != "POST /{pool}/{instance}" || attr(server, "http.response.status_code") != "202" ||
		attr(server, "m365.instance") != "acme" || server.SpanContext.TraceID() != send.SpanContext.TraceID() {
		t.Fatalf("the publish's parent is %q (%v, %v), not the notification's server span", server.Name, server.SpanKind, server.Attributes)
	}
}

// Package workertest starts real in-process JetStream servers for tests and
// reads what workers published, the way httptest serves HTTP.
package workertest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// Server is an in-process JetStream server with the m365 topology set up.
type Server struct {
	*server.Server
	Topology worker.Topology
	URL      string
}

// Start starts a JetStream server on a free loopback port with its store in
// a temporary directory, runs worker.Setup, and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := worker.StartEmbedded(worker.EmbeddedOptions{StoreDir: t.TempDir(), Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	srv := &Server{Server: s, URL: s.ClientURL()}
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := worker.Setup(ctx, js, srv.Topology); err != nil {
		t.Fatal(err)
	}
	return srv
}

// Connect opens a client connection closed when the test ends.
func (s *Server) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(s.URL, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// Lossy returns a JetStream context on nc whose requests go through a
// relay that loses those drop picks, to show a fault path: rest is the
// request's subject after the relay's prefix ("STREAM.INFO.…" for an API
// request, "$KV.<bucket>.<key>" for a key-value write). The others go on
// to the server, which answers the client.
func Lossy(t testing.TB, nc *nats.Conn, drop func(rest string) bool) jetstream.JetStream {
	t.Helper()
	const prefix = "lossy.API."
	if _, err := nc.Subscribe(prefix+">", func(m *nats.Msg) {
		rest := m.Subject[len(prefix):]
		if drop(rest) {
			return
		}
		to := "$JS.API." + rest
		if len(rest) > 4 && rest[:4] == "$KV." {
			to = rest
		}
		_ = nc.PublishMsg(&nats.Msg{Subject: to, Reply: m.Reply, Data: m.Data, Header: m.Header})
	}); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.NewWithAPIPrefix(nc, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// PublishJob publishes a job envelope the way Tevyra does: on its subject,
// without Nats-Msg-Id (the job ledger deduplicates, per instance).
func PublishJob(t testing.TB, js jetstream.JetStream, pool string, j *jobs.Job) *jetstream.PubAck {
	t.Helper()
	if j.SchemaVersion == 0 {
		j.SchemaVersion = jobs.SchemaVersion
	}
	b, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish(context.Background(), jobs.Subjects{}.JobSubject(pool, j), b)
	if err != nil {
		t.Fatal(err)
	}
	return ack
}

// Messages returns every message stored on subject (a filter) in stream.
func Messages(t testing.TB, js jetstream.JetStream, stream, subject string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, n := range info.State.Subjects {
		total += n
	}
	if total == 0 {
		return nil
	}
	c, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{FilterSubjects: []string{subject}, AckPolicy: jetstream.AckNonePolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy, InactiveThreshold: time.Minute, MemoryStorage: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.DeleteConsumer(context.Background(), c.CachedInfo().Name) }()
	var out []jetstream.Msg
	for uint64(len(out)) < total {
		// A bounded batch: large messages (asset batches of up to 512
		// KiB) must not overrun the client's pending limits.
		batch, err := c.Fetch(min(int(total)-len(out), 64), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, m)
			n++
		}
		if n == 0 {
			t.Fatalf("read %d of %d messages on %s", len(out), total, subject)
		}
	}
	return out
}

// Decode unmarshals every message into a T.
func Decode[T any](t testing.TB, msgs []jetstream.Msg) []T {
	t.Helper()
	out := make([]T, len(msgs))
	for i, m := range msgs {
		if err := json.Unmarshal(m.Data(), &out[i]); err != nil {
			t.Fatalf("decode %s: %v", m.Subject(), err)
		}
	}
	return out
}

// Eventually polls cond until it is true or the deadline passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

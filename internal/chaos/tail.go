package chaos

import (
	"context"
	"errors"
	"github.com/google/uuid"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// tailMsg is one stored message.
type tailMsg struct {
	Seq     uint64
	Subject string
	Data    []byte
}

// tail reads a stream's messages matching a filter, in stream order, from
// the first on, across server restarts (its reader is recreated from the
// next sequence whenever it fails).
type tail struct {
	stream, filter string
	mu             sync.Mutex
	msgs           []tailMsg
}

func startTail(ctx context.Context, js jetstream.JetStream, stream, filter string, on func(tailMsg)) *tail {
	t := &tail{stream: stream, filter: filter}
	go t.run(ctx, js, on)
	return t
}

func (t *tail) run(ctx context.Context, js jetstream.JetStream, on func(tailMsg)) {
	next := uint64(1)
	for ctx.Err() == nil {
		c, err := js.OrderedConsumer(ctx, t.stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{t.filter},
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: next})
		if err != nil {
			sleepCtx(ctx, 300*time.Millisecond)
			continue
		}
		for ctx.Err() == nil {
			batch, err := c.Fetch(500, jetstream.FetchMaxWait(time.Second))
			if err != nil {
				break
			}
			for m := range batch.Messages() {
				md, err := m.Metadata()
				if err != nil || md.Sequence.Stream < next {
					continue
				}
				next = md.Sequence.Stream + 1
				tm := tailMsg{Seq: md.Sequence.Stream, Subject: m.Subject(), Data: append([]byte(nil), m.Data()...)}
				t.mu.Lock()
				t.msgs = append(t.msgs, tm)
				t.mu.Unlock()
				if on != nil {
					on(tm)
				}
			}
			if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
				break
			}
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

func (t *tail) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.msgs)
}

// all returns the messages read so far, in stream order.
func (t *tail) all() []tailMsg {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]tailMsg(nil), t.msgs...)
}

// storedCount is the number of messages the stream holds on subjects
// matching filter.
func storedCount(ctx context.Context, js jetstream.JetStream, stream, filter string) (int, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := js.Stream(cctx, stream)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(cctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, c := range info.State.Subjects {
		n += int(c)
	}
	return n, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

func newGet(ctx context.Context, u, token string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("client-request-id", uuid.NewString())
	return req, nil
}

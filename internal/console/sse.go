package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// broker sends the watcher's changes to every open page, at most once a
// second: one watcher feeds every viewer (no JetStream request per viewer).
type broker struct {
	w    *watcher
	mu   sync.Mutex
	subs map[chan []byte]struct{}
}

func newBroker(w *watcher) *broker { return &broker{w: w, subs: map[chan []byte]struct{}{}} }

// summary is what a live update carries.
type summary struct {
	Version   uint64 `json:"version"`
	Instances int    `json:"instances"`
	Healthy   int    `json:"healthy"`
	Failures  int    `json:"failures"`
	Workers   int    `json:"workers"`
	Backlog   uint64 `json:"backlog"`
	InFlight  int    `json:"in_flight"`
}

func (b *broker) summary() summary {
	w := b.w
	w.mu.RLock()
	defer w.mu.RUnlock()
	s := summary{Version: w.version, Instances: len(w.instances), Failures: len(w.failures)}
	for _, v := range w.instances {
		if v.Healthy() {
			s.Healthy++
		}
	}
	for _, p := range w.pools {
		s.Workers += p.Live
		s.Backlog += p.Backlog
		s.InFlight += p.InFlight
	}
	return s
}

func (b *broker) run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.w.changed:
		}
		data, _ := json.Marshal(b.summary())
		b.mu.Lock()
		for c := range b.subs {
			select {
			case c <- data:
			default: // a slow page misses this one; the next carries the state
			}
		}
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// events is the server-sent events stream of a page.
func (s *Server) events(w http.ResponseWriter, r *http.Request, ss *session) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a live stream outlasts the server's timeouts
	_ = rc.SetReadDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	c := make(chan []byte, 1)
	s.live.mu.Lock()
	s.live.subs[c] = struct{}{}
	s.live.mu.Unlock()
	defer func() {
		s.live.mu.Lock()
		delete(s.live.subs, c)
		s.live.mu.Unlock()
	}()
	first, _ := json.Marshal(s.live.summary())
	fmt.Fprintf(w, "retry: 3000\nevent: update\ndata: %s\n\n", first)
	_ = rc.Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case d := <-c:
			if s.sess.get(r) == nil {
				return // signed out
			}
			if _, err := fmt.Fprintf(w, "event: update\ndata: %s\n\n", d); err != nil {
				return
			}
			_ = rc.Flush()
		}
	}
}

package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/worker"
)

// SyncProgress is a running round's progress, kept in the state bucket
// under progress.<instance> while the round runs (written every 2 s) so
// that `m365-worker status`, the `run` status line and any operator tool can
// show it. A record not updated for a minute belongs to a round whose
// worker died.
type SyncProgress struct {
	Instance  string        `json:"instance"`
	SyncID    string        `json:"sync_id"`
	Mode      string        `json:"mode"`
	Worker    string        `json:"worker,omitempty"`
	StartedAt time.Time     `json:"started_at"`
	UpdatedAt time.Time     `json:"updated_at"`
	Users     ProgressCount `json:"users"`
	Groups    ProgressCount `json:"groups"`
	// PerSecond is objects read per second since the round started.
	PerSecond int `json:"per_second"`
}

// ProgressCount is what one kind of object read so far.
type ProgressCount struct {
	Pages   int64 `json:"pages"`
	Objects int64 `json:"objects"`
}

// Stale reports whether the round stopped reporting (its worker died).
func (p SyncProgress) Stale(now time.Time) bool { return now.Sub(p.UpdatedAt) > time.Minute }

func progressKey(instance string) string { return "progress." + instance }

// ReadSyncProgress returns the running round of each instance that has one
// (stale records included: see Stale).
func ReadSyncProgress(ctx context.Context, js jetstream.JetStream, t worker.Topology) (map[string]SyncProgress, error) {
	kv, err := js.KeyValue(ctx, t.StateBucket())
	if err != nil {
		return nil, err
	}
	lister, err := kv.ListKeysFiltered(ctx, "progress.*")
	if err != nil {
		return nil, err
	}
	out := map[string]SyncProgress{}
	for k := range lister.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var p SyncProgress
		if json.Unmarshal(e.Value(), &p) == nil {
			out[p.Instance] = p
		}
	}
	return out, nil
}

// progress counts a round's pages and objects and publishes them.
type progress struct {
	users, groups struct{ pages, objects atomic.Int64 }
	stop          chan struct{}
	done          sync.WaitGroup
}

// startProgress writes the round's progress every 2 s until the returned
// func is called, which deletes it.
func (r *round) startProgress() func() {
	p := &progress{stop: make(chan struct{})}
	r.prog = p
	rec := SyncProgress{Instance: r.instance, SyncID: r.syncID, Mode: r.mode, Worker: r.job.Worker, StartedAt: time.Now().UTC()}
	write := func() {
		rec.UpdatedAt = time.Now().UTC()
		rec.Users = ProgressCount{Pages: p.users.pages.Load(), Objects: p.users.objects.Load()}
		rec.Groups = ProgressCount{Pages: p.groups.pages.Load(), Objects: p.groups.objects.Load()}
		if el := rec.UpdatedAt.Sub(rec.StartedAt).Seconds(); el > 0 {
			rec.PerSecond = int(float64(rec.Users.Objects+rec.Groups.Objects) / el)
		}
		b, _ := json.Marshal(rec)
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), 5*time.Second)
		defer cancel()
		if _, err := r.s.kv.Put(ctx, progressKey(r.instance), b); err != nil {
			r.log.Debug("sync: cannot record progress", "error", err)
		}
	}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		write()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				write()
			}
		}
	}()
	return func() {
		close(p.stop)
		p.done.Wait()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), 5*time.Second)
		defer cancel()
		_ = r.s.kv.Delete(ctx, progressKey(r.instance))
	}
}

package handlers

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tevyra/m365-worker/internal/state"
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

// ReadSyncProgress returns the running round of each instance that has one
// (stale records included: see Stale).
func ReadSyncProgress(ctx context.Context, st *state.Store) (map[string]SyncProgress, error) {
	out := map[string]SyncProgress{}
	err := st.EachProgress(ctx, func(_, _ string, raw []byte) {
		var p SyncProgress
		if json.Unmarshal(raw, &p) == nil {
			out[p.Instance] = p
		}
	})
	return out, err
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
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), 5*time.Second)
		defer cancel()
		if err := r.state.PutProgress(ctx, rec); err != nil {
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
		_ = r.state.DeleteProgress(ctx)
	}
}

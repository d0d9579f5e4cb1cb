package state

import (
	"context"
	"sync"
	"time"
)

// LiveWorkerTTL is how long a worker counts as live after it last announced
// itself.
const LiveWorkerTTL = 15 * time.Second

func workerKey(pool, id string) string { return kindWorker + "." + pool + "." + id }

// Announce registers a worker as live (a key with a TTL, refreshed every
// LiveWorkerTTL/3) until the returned func is called, which removes it. id
// must be one key token.
func (s *Store) Announce(pool, id string) func() {
	key := workerKey(pool, id)
	stop := make(chan struct{})
	var once sync.Once
	put := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = s.putTTL(ctx, key, []byte(time.Now().UTC().Format(time.RFC3339)), LiveWorkerTTL, 0)
	}
	put()
	go func() {
		t := time.NewTicker(LiveWorkerTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				put()
			}
		}
	}()
	return func() {
		once.Do(func() {
			close(stop)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = s.kv.Purge(ctx, key)
		})
	}
}

// LiveWorkers counts the workers of a pool that announced themselves within
// LiveWorkerTTL.
func (s *Store) LiveWorkers(ctx context.Context, pool string) (int, error) {
	keys, err := s.listKeys(ctx, workerKey(pool, "*"))
	return len(keys), err
}

package state

import (
	"context"
	"encoding/json"
	"time"

	"github.com/tevyra/m365-worker/internal/retry"
)

// LastTick is what the state keeps of the last scheduled tick a worker
// closed for an instance: its stream sequence and when the schedule said it
// would fire next (the tick's Nats-Schedule-Next).
type LastTick struct {
	Seq  uint64    `json:"seq"`
	Next time.Time `json:"next"`
}

func (sc *Scope) tickKey() string { return sc.key(kindTick) }

// LastTick returns the instance's last closed tick (ok false if none).
func (sc *Scope) LastTick(ctx context.Context) (LastTick, bool, error) {
	var t LastTick
	ok, err := sc.s.getJSON(ctx, sc.tickKey(), &t)
	return t, ok, err
}

// AdvanceTick records t as the instance's last closed tick unless the
// stored one is t or a later one (a redelivery, or another worker's later
// tick), with a compare-and-set.
func (sc *Scope) AdvanceTick(ctx context.Context, t LastTick) error {
	key := sc.tickKey()
	val, _ := json.Marshal(t)
	return retry.Do(ctx, retry.Quick, func() error {
		b, rev, found, err := sc.s.get(ctx, key)
		if err != nil {
			return err
		}
		var prev LastTick
		if found && json.Unmarshal(b, &prev) == nil && prev.Seq >= t.Seq {
			return nil
		}
		return sc.s.putIf(ctx, key, val, rev, found) // a concurrent write: read again
	})
}

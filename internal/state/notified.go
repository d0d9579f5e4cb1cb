package state

import (
	"context"
	"time"
)

// kindNotified keeps when a notification trigger last started a round of
// an instance, so that such rounds are spaced across the pool's workers.
const kindNotified = "notified"

type notifiedRound struct {
	At time.Time `json:"at"`
}

func (sc *Scope) notifiedKey() string { return sc.key(kindNotified) }

// NotifiedRound returns when a notification trigger last started a round
// of the instance (zero if never).
func (sc *Scope) NotifiedRound(ctx context.Context) (time.Time, error) {
	var v notifiedRound
	_, err := sc.s.getJSON(ctx, sc.notifiedKey(), &v)
	return v.At, err
}

// PutNotifiedRound records that a notification trigger started a round of
// the instance at t. The caller holds the instance's exclusive lock.
func (sc *Scope) PutNotifiedRound(ctx context.Context, t time.Time) error {
	return sc.s.putJSON(ctx, sc.notifiedKey(), notifiedRound{At: t.UTC()})
}

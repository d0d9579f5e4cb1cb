package state

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/retry"
	"github.com/tevyra/m365-worker/publisher"
)

// LedgerEntry records that a job's final result is stored.
type LedgerEntry struct {
	Status   string    `json:"status"`
	Worker   string    `json:"worker"`
	Finished time.Time `json:"finished_at"`
}

func (sc *Scope) ledgerKey(jobID string) string { return sc.key(kindLedger, token(jobID)) }

// Done reports whether the job's final result is stored.
func (sc *Scope) Done(ctx context.Context, jobID string) (bool, error) {
	_, _, ok, err := sc.s.get(ctx, sc.ledgerKey(jobID))
	return ok, err
}

// MarkDone records the job as done (the first record wins). A write the
// server leaves unanswered (a restart, an election) is asked again as a
// publication is (retry.Publish): a job whose result is stored and whose
// ledger entry is not holds up every later job of its target. A resent
// write that finds the entry stored by its first try is done.
func (sc *Scope) MarkDone(ctx context.Context, jobID string, e LedgerEntry) error {
	b, _ := json.Marshal(e)
	return retry.Do(ctx, retry.Publish, func() error {
		tctx, cancel := context.WithTimeout(ctx, writeTry)
		defer cancel()
		_, err := sc.s.createTTL(tctx, sc.ledgerKey(jobID), b, sc.s.ttl)
		switch {
		case err == nil || errors.Is(err, jetstream.ErrKeyExists):
			return nil
		case ctx.Err() == nil && publisher.Transient(err):
			return err
		}
		return retry.Permanent(err)
	})
}

// writeTry bounds one try of a write that is asked again (the publisher's
// own tries are as long).
const writeTry = 10 * time.Second

// WaitDone waits until the job is recorded as done, until the deadline or
// until wake closes; it reports whether the job got done.
func (sc *Scope) WaitDone(ctx context.Context, jobID string, until time.Time, wake <-chan struct{}) bool {
	return sc.s.waitFor(ctx, sc.ledgerKey(jobID), true, until, wake)
}

func (sc *Scope) snoozeKey(jobID string) string { return sc.key(kindSnooze, token(jobID)) }

// Snoozes returns how many deliveries of the job used no attempt.
func (sc *Scope) Snoozes(ctx context.Context, jobID string) (int, error) {
	n, _, err := sc.snoozes(ctx, jobID)
	return n, err
}

func (sc *Scope) snoozes(ctx context.Context, jobID string) (int, uint64, error) {
	b, rev, ok, err := sc.s.get(ctx, sc.snoozeKey(jobID))
	if err != nil || !ok {
		return 0, 0, err
	}
	n, _ := strconv.Atoi(string(b))
	return n, rev, nil
}

// AddSnooze records one more delivery of the job that used no attempt.
func (sc *Scope) AddSnooze(ctx context.Context, jobID string) error {
	key := sc.snoozeKey(jobID)
	return retry.Do(ctx, retry.Quick, func() error {
		n, rev, err := sc.snoozes(ctx, jobID)
		if err != nil {
			return err
		}
		val := []byte(strconv.Itoa(n + 1))
		if rev == 0 {
			_, err = sc.s.createTTL(ctx, key, val, sc.s.ttl)
		} else {
			_, err = sc.s.putTTL(ctx, key, val, sc.s.ttl, rev)
		}
		return err // a concurrent update: read again
	})
}

func (sc *Scope) effectKey(jobID string) string { return sc.key(kindEffect, token(jobID)) }

// Effect reads what an earlier delivery of the job recorded into v; ok is
// false when nothing was recorded.
func (sc *Scope) Effect(ctx context.Context, jobID string, v any) (bool, error) {
	return sc.s.getJSON(ctx, sc.effectKey(jobID), v)
}

// PutEffect records what the job did or is about to do, for its
// redeliveries. It lives as long as the job's ledger entry.
func (sc *Scope) PutEffect(ctx context.Context, jobID string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = sc.s.putTTL(ctx, sc.effectKey(jobID), b, sc.s.ttl, 0)
	return err
}

// FirstMiss returns when the job first found an object it names missing
// (recording now if it never did): Graph's replication grace runs from
// then, not from the job's publication, so a job that waited long for its
// turn (behind a backlog, or an earlier job of its target) still gets it.
func (sc *Scope) FirstMiss(ctx context.Context, jobID string) (time.Time, error) {
	key := sc.key(kindMiss, token(jobID))
	now := time.Now().UTC()
	b, _ := now.MarshalText()
	if _, err := sc.s.createTTL(ctx, key, b, sc.s.ttl); err == nil {
		return now, nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return now, err
	}
	old, _, ok, err := sc.s.get(ctx, key)
	if err != nil || !ok {
		return now, err
	}
	var t time.Time
	if err := t.UnmarshalText(old); err != nil {
		return now, nil
	}
	return t, nil
}

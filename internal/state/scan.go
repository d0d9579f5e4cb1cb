package state

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Scan batches: how many keys a scan holds at once, ids only or with their
// values. A user's state is some 100 bytes; a group's holds up to
// jobs.MaxInlineMembers member ids (some 200 kB), so its batch is smaller.
const (
	scanIDs         = 1000
	scanStates      = 500
	scanGroupStates = 25
)

// scanWait bounds the wait for one batch of a scan.
const scanWait = 30 * time.Second

// errScanInterrupted: the scan's consumer was reset (a gap or lost
// heartbeats); what it delivered after the reset need not be each key's
// last value, so the caller scans again.
var errScanInterrupted = errors.New("state: the scan was interrupted")

// scan calls f with the last value of every key matching filter (one
// subject filter of the bucket's keys), as stored when the scan began, one
// batch at a time: a KV watcher lets the server push up to 32 MB ahead of
// the client, which for a 300,000-user tenant's states is most of them in
// the worker's memory at once. It holds batch keys at a time; metaOnly
// leaves the values out. Deleted and
// purged keys are skipped.
//
// It reads through an ordered pull consumer on the bucket's stream (see
// docs/security.md for the permissions), and retries from the start when
// the consumer is reset.
func (s *Store) scan(ctx context.Context, filter string, metaOnly bool, batch int, f func(key string, val []byte)) error {
	for attempt := 1; ; attempt++ {
		err := s.scanOnce(ctx, filter, metaOnly, batch, f)
		if !errors.Is(err, errScanInterrupted) || attempt == 3 {
			return err
		}
	}
}

func (s *Store) scanOnce(ctx context.Context, filter string, metaOnly bool, batch int, f func(key string, val []byte)) error {
	stream := "KV_" + s.bucket
	prefix := "$KV." + s.bucket + "."
	// Values stored after the scan began are not part of it (a key
	// written meanwhile would otherwise be seen twice).
	st, err := s.kv.Status(ctx)
	if err != nil {
		return err
	}
	info, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return fmt.Errorf("state: unexpected bucket status %T", st)
	}
	last := info.StreamInfo().State.LastSeq
	cons, err := s.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{prefix + filter}, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
		HeadersOnly: metaOnly, InactiveThreshold: time.Minute, MaxResetAttempts: 1})
	if err != nil {
		return err
	}
	name := cons.CachedInfo().Name
	defer func() { _ = s.js.DeleteConsumer(context.WithoutCancel(ctx), stream, cons.CachedInfo().Name) }()
	left := cons.CachedInfo().NumPending
	if left == 0 {
		return nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(batch))
	if err != nil {
		return err
	}
	defer it.Stop()
	for left > 0 {
		wait, cancel := context.WithTimeout(ctx, scanWait)
		m, err := it.Next(jetstream.NextContext(wait))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("state: scanning %s with %d to go: %w", filter, left, err)
		}
		if cons.CachedInfo().Name != name {
			return errScanInterrupted
		}
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		if md.Sequence.Stream > last {
			return nil // every key stored when the scan began is read
		}
		left = md.NumPending
		if op := m.Headers().Get("KV-Operation"); op == "DEL" || op == "PURGE" {
			continue
		}
		f(strings.TrimPrefix(m.Subject(), prefix), m.Data())
	}
	return nil
}

package state

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/retry"
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

// scanInactive is how soon the server drops a scan's consumer left behind
// (its worker gone, or the delete lost).
const scanInactive = 30 * time.Second

// errScanGap: a scan's batch skipped a message (the client dropped it); the
// caller scans again.
var errScanGap = errors.New("state: a scan lost a message")

// scan calls f with the last value of every key matching filter (one
// subject filter of the bucket's keys), as stored when the scan began, one
// batch at a time: a KV watcher lets the server push up to 32 MB ahead of
// the client, which for a 300,000-user tenant's states is most of them in
// the worker's memory at once. It holds batch keys at a time; metaOnly
// leaves the values out. Deleted and purged keys are skipped.
//
// It reads through an ephemeral pull consumer on the bucket's stream (see
// docs/security.md for the permissions), asking for exactly what is left,
// so that no request waits on it once the scan has what it needs. Not an
// ordered consumer: when one misses a heartbeat (a busy server) it starts
// again from a stream sequence, and the server then looks through every
// message stored after it for the filter, which on a bucket of a million
// keys was most of the server's CPU in bench tenants.
func (s *Store) scan(ctx context.Context, filter string, metaOnly bool, batch int, f func(key string, val []byte)) error {
	for attempt := 1; ; attempt++ {
		err := s.scanOnce(ctx, filter, metaOnly, batch, f)
		if !errors.Is(err, errScanGap) || attempt == 3 {
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
	cons, err := s.js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{Name: scanName(),
		FilterSubject: prefix + filter, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy, AckPolicy: jetstream.AckNonePolicy,
		HeadersOnly: metaOnly, InactiveThreshold: scanInactive, MemoryStorage: true, Replicas: 1})
	if err != nil {
		return err
	}
	defer s.dropConsumer(ctx, stream, cons.CachedInfo().Name)
	left, delivered := cons.CachedInfo().NumPending, uint64(0)
	for left > 0 {
		b, err := cons.Fetch(int(min(left, uint64(batch))), jetstream.FetchMaxWait(scanWait))
		if err != nil {
			return err
		}
		n := 0
		for m := range b.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			if delivered++; md.Sequence.Consumer != delivered {
				return errScanGap
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
		if err := b.Error(); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("state: scanning %s: nothing within %s with %d to go", filter, scanWait, left)
		}
	}
	return ctx.Err()
}

// scanName is a scan consumer's name: random, told only to its worker.
func scanName() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "scan_" + hex.EncodeToString(b)
}

// dropConsumer deletes a scan's consumer, retrying a busy server for a
// while (scanInactive is the backstop).
func (s *Store) dropConsumer(ctx context.Context, stream, name string) {
	ctx = context.WithoutCancel(ctx)
	_ = retry.Do(ctx, retry.Quick, func() error {
		err := s.js.DeleteConsumer(ctx, stream, name)
		if err == nil || errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil
		}
		return err
	})
}

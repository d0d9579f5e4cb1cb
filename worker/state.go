package worker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// state wraps the state bucket: the job ledger, throttling give-backs, sync
// locks and the live-worker registry. Keys that must expire are written with
// a per-message TTL (the bucket has LimitMarkerTTL set).
type state struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	bucket string
}

func openState(ctx context.Context, js jetstream.JetStream, t Topology) (*state, error) {
	kv, err := js.KeyValue(ctx, t.StateBucket())
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w (a worker creates the streams and buckets when it starts: start m365-worker worker or run against this NATS first)", t.StateBucket(), err)
	}
	return &state{js: js, kv: kv, bucket: t.StateBucket()}, nil
}

// KVSubject is the subject a write to key of bucket is published on, as
// nats.go's KV does it: "$KV.<bucket>.<key>", behind the JetStream API
// prefix when js addresses another domain (a worker on a leaf node reaches
// the hub's buckets that way).
func KVSubject(js jetstream.JetStream, bucket, key string) string {
	subj := "$KV." + bucket + "." + key
	o := js.Options()
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API." + subj
	case o.APIPrefix != "" && o.APIPrefix != jetstream.DefaultAPIPrefix:
		return strings.TrimSuffix(o.APIPrefix, ".") + "." + subj
	}
	return subj
}

// jobKey encodes a job id (any printable string) as a KV key token.
func jobKey(jobID string) string { return base64.RawURLEncoding.EncodeToString([]byte(jobID)) }

// putTTL writes key with an expiry. If rev is not zero the write only
// succeeds when rev is still the key's last revision.
func (s *state) putTTL(ctx context.Context, key string, val []byte, ttl time.Duration, rev uint64) (uint64, error) {
	m := nats.NewMsg(KVSubject(s.js, s.bucket, key))
	m.Data = val
	opts := []jetstream.PublishOpt{jetstream.WithMsgTTL(ttl)}
	if rev != 0 {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(rev))
	}
	ack, err := s.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// ledgerEntry records that a job's final result is stored.
type ledgerEntry struct {
	Status   string    `json:"status"`
	Worker   string    `json:"worker"`
	Finished time.Time `json:"finished_at"`
}

func ledgerKey(jobID string) string { return "done." + jobKey(jobID) }

// done reports whether the job's final result was already stored.
func (s *state) done(ctx context.Context, jobID string) (bool, error) {
	_, err := s.kv.Get(ctx, ledgerKey(jobID))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return false, nil
	}
	return false, err
}

func (s *state) markDone(ctx context.Context, jobID string, e ledgerEntry, ttl time.Duration) error {
	b, _ := json.Marshal(e)
	_, err := s.kv.Create(ctx, ledgerKey(jobID), b, jetstream.KeyTTL(ttl))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return err
	}
	return nil
}

func snoozeKey(jobID string) string { return "snoozed." + jobKey(jobID) }

// snoozes returns how many deliveries of the job did not use an attempt.
func (s *state) snoozes(ctx context.Context, jobID string) (int, uint64, error) {
	e, err := s.kv.Get(ctx, snoozeKey(jobID))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return 0, 0, nil
	case err != nil:
		return 0, 0, err
	}
	n, _ := strconv.Atoi(string(e.Value()))
	return n, e.Revision(), nil
}

// addSnooze records one more delivery that does not use an attempt.
func (s *state) addSnooze(ctx context.Context, jobID string, ttl time.Duration) error {
	for i := 0; i < 5; i++ {
		n, rev, err := s.snoozes(ctx, jobID)
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, snoozeKey(jobID), []byte(strconv.Itoa(n+1)), jetstream.KeyTTL(ttl))
		} else {
			_, err = s.putTTL(ctx, snoozeKey(jobID), []byte(strconv.Itoa(n+1)), ttl, rev)
		}
		if err == nil {
			return nil
		}
	}
	return errors.New("record give-back: too many concurrent updates")
}

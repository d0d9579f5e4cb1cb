package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/tevyra/m365-worker/internal/retry"
	"github.com/tevyra/m365-worker/jobs"
)

// NewJobID returns a fresh job id.
func NewJobID() string { return "job-" + nuid.Next() }

// Submit publishes a job the way Tevyra does (on its subject in the pool,
// without Nats-Msg-Id: the job ledger deduplicates per instance), after
// checking it against the contract.
func Submit(ctx context.Context, js jetstream.JetStream, subjects jobs.Subjects, pool string, j *jobs.Job) (*jetstream.PubAck, error) {
	if j.SchemaVersion == 0 {
		j.SchemaVersion = jobs.SchemaVersion
	}
	if j.ID == "" {
		j.ID = NewJobID()
	}
	b, err := json.Marshal(j)
	if err != nil {
		return nil, err
	}
	if _, _, err := jobs.ParseJob(b); err != nil {
		return nil, err
	}
	return js.Publish(ctx, subjects.JobSubject(pool, j), b)
}

// apiAttemptTimeout bounds one JetStream API request of a wait that retries
// (nats.go's own default).
const apiAttemptTimeout = 5 * time.Second

// WaitResult waits for the result of a job: an action result, or for sync
// jobs the sync report (returned as an ActionResult with the report as
// output). It also finds results stored before the call.
func WaitResult(ctx context.Context, js jetstream.JetStream, t Topology, instance, action, jobID string) (*jobs.ActionResult, error) {
	t = t.withDefaults()
	kind := jobs.ResultActions
	if action == jobs.ActionSync {
		kind = jobs.ResultSyncs
	}
	subject := t.Subjects.Results(instance, kind)
	// Opening the reader is retried until ctx ends: during a NATS node's
	// failover the API briefly answers "no responders" or not at all. Each
	// attempt has its own timeout: nats.go waits for an answer until its
	// context's deadline, so one request nobody answers would otherwise
	// take the caller's whole wait.
	var cons jetstream.Consumer
	err := retry.Do(ctx, retry.UntilCancelled, func() error {
		actx, cancel := context.WithTimeout(ctx, apiAttemptTimeout)
		defer cancel()
		st, err := js.Stream(actx, t.ResultsStream())
		if err == nil {
			cons, err = st.OrderedConsumer(actx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}, DeliverPolicy: jetstream.DeliverAllPolicy})
		}
		if err != nil && !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return retry.Permanent(err)
		}
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no result for job %s: %w (last error: %v)", jobID, ctx.Err(), err)
		}
		return nil, err
	}
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("no result for job %s: %w", jobID, ctx.Err())
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("no result for job %s: %w", jobID, ctx.Err())
			}
			return nil, err
		}
		if kind == jobs.ResultSyncs {
			var rep jobs.SyncReport
			if json.Unmarshal(msg.Data(), &rep) == nil && rep.JobID == jobID {
				res := &jobs.ActionResult{SchemaVersion: 1, JobID: rep.JobID, Instance: rep.Instance, Action: jobs.ActionSync, Status: jobs.StatusSucceeded,
					StartedAt: rep.StartedAt, FinishedAt: rep.FinishedAt, Error: rep.Error, Output: msg.Data()}
				if rep.Outcome != jobs.OutcomeSucceeded {
					res.Status = jobs.StatusFailed
				}
				return res, nil
			}
			continue
		}
		var res jobs.ActionResult
		if json.Unmarshal(msg.Data(), &res) == nil && res.JobID == jobID {
			return &res, nil
		}
	}
}

// FailureFilter selects failure records.
type FailureFilter struct {
	Instance, Action, Code string
	Since                  time.Time
}

func (f FailureFilter) match(r *jobs.FailureRecord) bool {
	return (f.Instance == "" || r.Instance == f.Instance) && (f.Action == "" || r.Action == jobs.FullAction(f.Action)) &&
		(f.Code == "" || r.Error.Code == f.Code) && (f.Since.IsZero() || !r.FailedAt.Before(f.Since))
}

// Failures lists failure records, oldest first.
func Failures(ctx context.Context, js jetstream.JetStream, t Topology, f FailureFilter) ([]jobs.FailureRecord, error) {
	t = t.withDefaults()
	st, err := js.Stream(ctx, t.FailuresStream())
	if err != nil {
		return nil, err
	}
	subject := t.Subjects.FailuresAll()
	if f.Instance != "" {
		subject = t.Subjects.Failures(f.Instance)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return nil, err
	}
	var total uint64
	for _, n := range info.State.Subjects {
		total += n
	}
	var out []jobs.FailureRecord
	if total == 0 {
		return out, nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		return nil, err
	}
	for read := uint64(0); read < total; read++ {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			return nil, fmt.Errorf("read failure records: %w", err)
		}
		var r jobs.FailureRecord
		if json.Unmarshal(msg.Data(), &r) == nil && f.match(&r) {
			out = append(out, r)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].FailedAt.Before(out[j].FailedAt) })
	return out, nil
}

// OriginalJob reads a failed job's message back from the jobs stream.
func OriginalJob(ctx context.Context, js jetstream.JetStream, t Topology, r *jobs.FailureRecord) (*jetstream.RawStreamMsg, error) {
	t = t.withDefaults()
	name := t.JobsStream()
	if r.Stream != "" {
		name = r.Stream // a site pool's own jobs stream
	}
	st, err := js.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	m, err := st.GetMsg(ctx, r.StreamSeq)
	if err != nil {
		return nil, fmt.Errorf("job %s (sequence %d) is no longer in %s (jobs are kept %s): %w", r.JobID, r.StreamSeq, name, t.JobsMaxAge, err)
	}
	return m, nil
}

// Replay republishes a failed job with a new job id and a header naming the
// job it replays; the replay gets its own result. It returns the new id.
func Replay(ctx context.Context, js jetstream.JetStream, t Topology, r *jobs.FailureRecord) (string, error) {
	orig, err := OriginalJob(ctx, js, t, r)
	if err != nil {
		return "", err
	}
	var env map[string]json.RawMessage
	if err := json.Unmarshal(orig.Data, &env); err != nil || env == nil {
		return "", fmt.Errorf("job %s is not a JSON object and cannot be replayed: fix it at its source and publish it again", r.JobID)
	}
	base := strings.SplitN(r.JobID, "~replay-", 2)[0]
	newID := base + "~replay-" + nuid.Next()[16:]
	env["id"], _ = json.Marshal(newID)
	data, _ := json.Marshal(env)
	m := nats.NewMsg(orig.Subject)
	m.Data = data
	m.Header.Set(HeaderReplayOf, r.JobID)
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return "", fmt.Errorf("replay %s: %w", r.JobID, err)
	}
	return newID, nil
}

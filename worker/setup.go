package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/retry"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
)

// Topology names the streams and buckets of one deployment (one prefix).
type Topology struct {
	Subjects jobs.Subjects
	// Replicas for every stream and bucket: 1 for a single server, 3 in a
	// cluster. Default 1.
	Replicas int
	// JobsMaxAge is how long jobs stay in the jobs stream (for replay).
	// Default 7 days.
	JobsMaxAge time.Duration
	// ResultsMaxAge is how long results stay. Default 14 days.
	ResultsMaxAge time.Duration
	// FailuresMaxAge is how long failure records stay. Default 90 days.
	FailuresMaxAge time.Duration
	// SitePools are pools whose jobs are also kept in a stream of their own
	// (PoolJobsStream), sourced from the jobs stream with the pool's
	// filter, where their consumer lives. A customer site's workers are
	// given that stream only: reading jobs back for per-target order
	// (STREAM.MSG.GET, whose filter is in the body) then reaches only their
	// pool's jobs (docs/security.md).
	SitePools []string
}

func (t Topology) withDefaults() Topology {
	if t.Replicas <= 0 {
		t.Replicas = 1
	}
	if t.JobsMaxAge <= 0 {
		t.JobsMaxAge = 7 * 24 * time.Hour
	}
	if t.ResultsMaxAge <= 0 {
		t.ResultsMaxAge = 14 * 24 * time.Hour
	}
	if t.FailuresMaxAge <= 0 {
		t.FailuresMaxAge = 90 * 24 * time.Hour
	}
	return t
}

func (t Topology) prefix() string {
	if t.Subjects.Prefix == "" {
		return jobs.DefaultPrefix
	}
	return t.Subjects.Prefix
}

// Names of the streams and buckets for the default prefix; other prefixes
// use their upper-cased prefix (streams) or the prefix (buckets).
func (t Topology) JobsStream() string     { return strings.ToUpper(t.prefix()) + "_JOBS" }
func (t Topology) ResultsStream() string  { return strings.ToUpper(t.prefix()) + "_RESULTS" }
func (t Topology) FailuresStream() string { return strings.ToUpper(t.prefix()) + "_FAILURES" }

// PoolJobsStream is the stream a pool's consumer is on: the pool's own for a
// site pool, else the jobs stream.
func (t Topology) PoolJobsStream(pool string) string {
	if slices.Contains(t.SitePools, pool) {
		return t.SiteJobsStream(pool)
	}
	return t.JobsStream()
}

// SiteJobsStream is the name of a site pool's own jobs stream.
func (t Topology) SiteJobsStream(pool string) string { return t.JobsStream() + "_" + pool }

func (t Topology) InstancesBucket() string {
	return t.prefix() + "_instances"
}
func (t Topology) StateBucket() string { return t.prefix() + "_state" }

// ConsumerName is the durable consumer a pool's workers share (what KEDA
// watches for lag).
func (t Topology) ConsumerName(pool string) string { return consumerName(t.prefix(), pool) }

// ResultsDuplicateWindow is the results stream's dedup window. It covers a
// worker that dies between publishing a result and recording the job as done,
// whose job is redelivered one ack wait later.
const ResultsDuplicateWindow = 30 * time.Minute

// JobsDuplicateWindow is the jobs stream's dedup window: the least the
// server allows. Jobs are published without Nats-Msg-Id and deduplicated by
// the job ledger, per instance (docs/contract.md): the stream's window is
// one for all instances, so a publisher allowed on one instance's subjects
// could pre-claim another instance's job id inside it, and two instances'
// jobs with the same id would collide.
const JobsDuplicateWindow = 100 * time.Millisecond

// SetupOptions tune SetupWith. Zero values take the defaults.
type SetupOptions struct {
	// Pools whose durable consumers are created or updated. Default
	// "default".
	Pools []string
	// AckWait and MaxDeliver of the pool consumers. Defaults 60s and 1000.
	AckWait    time.Duration
	MaxDeliver int
	// SitePools get a jobs stream of their own (Topology.SitePools); they
	// are set up as pools too.
	SitePools []string
	// LowerReplicas lets an existing stream or bucket go to fewer replicas
	// than it has. Without it the higher count is kept: a setup run with
	// the default (1) never shrinks a cluster's R3 streams.
	LowerReplicas bool
}

// Setup is SetupWith with the default options.
func Setup(ctx context.Context, js jetstream.JetStream, t Topology) error {
	return SetupWith(ctx, js, t, SetupOptions{})
}

// SetupWith creates or updates the streams, the buckets and the pool
// consumers: the operator's step (m365-worker setup, or run, which is
// operator and worker in one), never a pool worker's. It is idempotent and
// safe to run many at once and on upgrade: a concurrent creation is
// absorbed, and an existing stream is updated in place to this
// configuration.
func SetupWith(ctx context.Context, js jetstream.JetStream, t Topology, o SetupOptions) error {
	t = t.withDefaults()
	t.SitePools = append(slices.Clone(t.SitePools), o.SitePools...)
	s := t.Subjects
	streams := []jetstream.StreamConfig{
		{
			Name:              t.JobsStream(),
			Description:       "m365-worker jobs and per-instance sync schedules",
			Subjects:          []string{s.JobsAll(), s.SchedulesAll()},
			Retention:         jetstream.LimitsPolicy,
			MaxAge:            t.JobsMaxAge,
			Duplicates:        JobsDuplicateWindow,
			Storage:           jetstream.FileStorage,
			Replicas:          t.Replicas,
			AllowMsgTTL:       true,
			AllowMsgSchedules: true,
			AllowRollup:       true,
		},
		{
			Name:        t.ResultsStream(),
			Description: "m365-worker results: asset deltas, indicators, action results, sync reports",
			Subjects:    []string{s.ResultsAll()},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      t.ResultsMaxAge,
			Duplicates:  ResultsDuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
		},
		{
			Name:        t.FailuresStream(),
			Description: "m365-worker failure records: one per job that will not be retried",
			Subjects:    []string{s.FailuresAll()},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      t.FailuresMaxAge,
			Duplicates:  ResultsDuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
		},
	}
	for _, pool := range o.SitePools {
		streams = append(streams, siteStreamConfig(t, pool))
	}
	for _, cfg := range streams {
		cfg.Replicas = keepReplicas(ctx, js, cfg.Name, cfg.Replicas, o.LowerReplicas)
		if err := retryConflict(ctx, func() error {
			_, err := js.CreateOrUpdateStream(ctx, cfg)
			return err
		}); err != nil {
			return fmt.Errorf("set up stream %s: %w", cfg.Name, err)
		}
	}
	// The instances bucket keeps no history: a record holds sealed secrets,
	// and a rotated one must leave no copy behind.
	kvs := []jetstream.KeyValueConfig{
		{Bucket: t.InstancesBucket(), Description: "m365-worker instance configuration (secrets sealed)", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas},
		{Bucket: t.StateBucket(), Description: "m365-worker state: delta links, asset state, locks, job ledger, live workers", History: state.History, Storage: jetstream.FileStorage, Replicas: t.Replicas, LimitMarkerTTL: time.Second},
	}
	for _, cfg := range kvs {
		cfg.Replicas = keepReplicas(ctx, js, "KV_"+cfg.Bucket, cfg.Replicas, o.LowerReplicas)
		if err := retryConflict(ctx, func() error {
			_, err := js.CreateOrUpdateKeyValue(ctx, cfg)
			return err
		}); err != nil {
			return fmt.Errorf("set up bucket %s: %w", cfg.Bucket, err)
		}
	}
	if err := migrateLegacy(ctx, js, t); err != nil {
		return err
	}
	pools := o.Pools
	if len(pools) == 0 && len(o.SitePools) == 0 {
		pools = []string{jobs.DefaultPool}
	}
	for _, pool := range append(slices.Clone(pools), o.SitePools...) {
		if _, err := PoolConsumer(ctx, js, t, pool, o.AckWait, o.MaxDeliver); err != nil {
			return err
		}
	}
	return nil
}

// siteStreamConfig is a site pool's own jobs stream: no subjects of its own,
// sourced from the jobs stream with the pool's filter. Scheduled ticks carry
// a TTL and roll each other up there too.
func siteStreamConfig(t Topology, pool string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        t.SiteJobsStream(pool),
		Description: "m365-worker jobs of site pool " + pool + " (sourced from " + t.JobsStream() + ")",
		Sources:     []*jetstream.StreamSource{{Name: t.JobsStream(), FilterSubject: t.Subjects.PoolJobs(pool)}},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      t.JobsMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		AllowMsgTTL: true,
		AllowRollup: true,
	}
}

// keepReplicas is the replica count to set up a stream with: want, or the
// stream's current count when that is higher and lowering is not allowed.
func keepReplicas(ctx context.Context, js jetstream.JetStream, stream string, want int, lower bool) int {
	st, err := js.Stream(ctx, stream)
	if err != nil || lower {
		return want
	}
	return max(want, st.CachedInfo().Config.Replicas)
}

// Check reports, in one error, everything a pool's workers need that is
// missing (streams, buckets, the pool's consumer) and the operator's step
// that creates it. Workers run it instead of setting anything up.
func Check(ctx context.Context, js jetstream.JetStream, t Topology, pool string) error {
	t = t.withDefaults()
	var missing []string
	for _, s := range []string{t.PoolJobsStream(pool), t.ResultsStream(), t.FailuresStream(), "KV_" + t.InstancesBucket(), "KV_" + t.StateBucket()} {
		if _, err := js.Stream(ctx, s); errors.Is(err, jetstream.ErrStreamNotFound) {
			missing = append(missing, "stream "+s)
		} else if err != nil {
			return fmt.Errorf("check stream %s: %w", s, err)
		}
	}
	if len(missing) == 0 {
		if _, err := js.Consumer(ctx, t.PoolJobsStream(pool), t.ConsumerName(pool)); errors.Is(err, jetstream.ErrConsumerNotFound) {
			missing = append(missing, "consumer "+t.ConsumerName(pool)+" on "+t.PoolJobsStream(pool))
		} else if err != nil {
			return fmt.Errorf("check consumer %s: %w", t.ConsumerName(pool), err)
		}
	}
	if len(missing) > 0 {
		flag := "--pools"
		if slices.Contains(t.SitePools, pool) {
			flag = "--site-pools"
		}
		return fmt.Errorf("%w: %s; the operator creates them: m365-worker setup --nats <url> %s %s", ErrNotSetUp, strings.Join(missing, ", "), flag, pool)
	}
	return nil
}

// ErrNotSetUp means streams, buckets or a pool consumer a worker needs do
// not exist.
var ErrNotSetUp = errors.New("not set up")

// retryConflict retries an idempotent setup call that lost a race with
// another worker doing the same (the server answers with an API error).
func retryConflict(ctx context.Context, f func() error) error {
	return retry.Do(ctx, retry.Setup, func() error {
		err := f()
		var apiErr *jetstream.APIError
		if err != nil && !errors.As(err, &apiErr) && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return retry.Permanent(err)
		}
		return err
	})
}

// PoolMaxAckPending is the pool consumer's MaxAckPending: the jobs
// delivered and not yet settled, across the pool's workers. A job given
// back with a delay (past its instance's share, or throttled) still counts
// until it is delivered again, so the cap is far above what the workers
// hold (at most 1,000 each): one tenant's burst of thousands of actions,
// mostly given back, must not stop deliveries to every other tenant.
const PoolMaxAckPending = 20000

// PoolConsumer creates or updates the durable pull consumer a pool's
// workers share, filtered to m365.jobs.<pool>.>, on the pool's jobs stream
// (PoolJobsStream).
func PoolConsumer(ctx context.Context, js jetstream.JetStream, t Topology, pool string, ackWait time.Duration, maxDeliver int) (jetstream.Consumer, error) {
	t = t.withDefaults()
	if maxDeliver <= 0 {
		maxDeliver = 1000
	}
	if ackWait <= 0 {
		ackWait = 60 * time.Second
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       consumerName(t.prefix(), pool),
		Description:   "m365-worker pool " + pool,
		FilterSubject: t.Subjects.PoolJobs(pool),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		// Attempts are counted by the worker (throttled waits must not use
		// them up); this is only a backstop against a job that kills every
		// worker that touches it.
		MaxDeliver:    maxDeliver,
		MaxAckPending: PoolMaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		Replicas:      t.Replicas,
	}
	var cons jetstream.Consumer
	err := retryConflict(ctx, func() error {
		c, err := js.CreateOrUpdateConsumer(ctx, t.PoolJobsStream(pool), cfg)
		cons = c
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("set up consumer %s: %w", cfg.Durable, err)
	}
	return cons, nil
}

// WithSitePools returns t with the pools among pools that have a jobs stream
// of their own (set up with SetupOptions.SitePools) added to SitePools: how
// the operator's tools find where a pool's consumer is.
func WithSitePools(ctx context.Context, js jetstream.JetStream, t Topology, pools ...string) Topology {
	t.SitePools = slices.Clone(t.SitePools)
	for _, p := range pools {
		if slices.Contains(t.SitePools, p) {
			continue
		}
		if _, err := js.Stream(ctx, t.SiteJobsStream(p)); err == nil {
			t.SitePools = append(t.SitePools, p)
		}
	}
	return t
}

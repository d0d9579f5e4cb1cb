package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
)

// Clouds an instance can live in.
const (
	CloudGlobal   = "global"
	CloudUSGov    = "usgov"
	CloudUSGovDoD = "usgov-dod"
	CloudChina    = "china"
)

// DefaultSyncInterval is an instance's sync interval unless set.
const DefaultSyncInterval = 5 * time.Minute

// Duration is a time.Duration that reads and writes JSON as "5m0s".
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"5m\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Instance is one configured tenant: what the m365_instances bucket holds
// under <pool>.<id>, so that a pool's workers can be granted exactly their
// pool's records. Secrets are sealed to the pool's public key; the bucket
// keeps only the latest revision of a record, so a replaced secret is gone.
type Instance struct {
	// ID is Tevyra's module-instance id.
	ID string `json:"id"`
	// Pool is the worker pool that serves the instance. Default "default".
	Pool string `json:"pool"`
	// TenantID is the Entra tenant (GUID or verified domain).
	TenantID string `json:"tenant_id"`
	// ClientID is the app registration's application (client) id.
	ClientID string `json:"client_id"`
	// ClientSecret, sealed; or CertificateKey with Certificate.
	ClientSecret *jobs.SealedSecret `json:"client_secret,omitempty"`
	// Certificate is the app's certificate (PEM, public).
	Certificate string `json:"certificate,omitempty"`
	// CertificateKey is the certificate's private key (PEM), sealed.
	CertificateKey *jobs.SealedSecret `json:"certificate_key,omitempty"`
	// FederatedCredential: no secret at all; the app registration trusts
	// the pool's own identity (workload identity federation), and the
	// pool's federated token is the client assertion.
	FederatedCredential bool `json:"federated_credential,omitempty"`
	// ClientSecretExpiresAt is the client secret's expiry as the Azure
	// portal showed it when the secret was made (optional; with
	// Application.Read.All granted the worker reads it from Graph).
	ClientSecretExpiresAt *time.Time `json:"client_secret_expires_at,omitempty"`
	// Cloud is global (default), usgov, usgov-dod or china.
	Cloud string `json:"cloud,omitempty"`
	// Authority and GraphRoot override the cloud's endpoints (a simulator).
	Authority string `json:"authority,omitempty"`
	GraphRoot string `json:"graph_root,omitempty"`
	// CAPEM adds trusted roots for Authority and GraphRoot (a simulator).
	CAPEM string `json:"ca_pem,omitempty"`
	// HTTPProxy sends this instance's Graph traffic through a forward
	// proxy (HTTP CONNECT). It never holds credentials: those are in
	// ProxyCredentials.
	HTTPProxy string `json:"http_proxy,omitempty"`
	// ProxyCredentials is the proxy's "user:password", sealed for the
	// instance's http_proxy field.
	ProxyCredentials *jobs.SealedSecret `json:"http_proxy_credentials,omitempty"`
	// SyncInterval between scheduled syncs. Default 5m.
	SyncInterval Duration `json:"sync_interval,omitempty"`
	// UpdatedAt is set by Put.
	UpdatedAt time.Time `json:"updated_at"`
}

var domainRE = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$`)

// WithDefaults fills the defaults in.
func (in Instance) WithDefaults() Instance {
	if in.Pool == "" {
		in.Pool = jobs.DefaultPool
	}
	if in.Cloud == "" {
		in.Cloud = CloudGlobal
	}
	if in.SyncInterval == 0 {
		in.SyncInterval = Duration(DefaultSyncInterval)
	}
	return in
}

// Validate reports every problem of the configuration.
func (in Instance) Validate() error {
	var ve jobs.ValidationError
	if !jobs.ValidToken(in.ID) {
		ve.Add("id", "must be 1 to 64 letters, digits, '-' or '_'")
	}
	if !jobs.ValidToken(in.Pool) {
		ve.Add("pool", "must be 1 to 64 letters, digits, '-' or '_'")
	}
	if !jobs.IsGUID(in.TenantID) && !domainRE.MatchString(in.TenantID) {
		ve.Add("tenant_id", "must be the directory (tenant) id, a GUID, or a verified domain")
	}
	if !jobs.IsGUID(in.ClientID) {
		ve.Add("client_id", "must be the application (client) id, a GUID")
	}
	kinds := 0
	for _, set := range []bool{in.ClientSecret != nil, in.CertificateKey != nil, in.FederatedCredential} {
		if set {
			kinds++
		}
	}
	switch {
	case kinds == 0:
		ve.Add("client_secret", "is required (or certificate and certificate_key, or federated_credential)")
	case kinds > 1:
		ve.Add("credential", "must be one of client_secret, certificate_key or federated_credential")
	case in.CertificateKey != nil && in.Certificate == "":
		ve.Add("certificate", "is required with certificate_key")
	}
	if in.ClientSecretExpiresAt != nil && in.ClientSecret == nil {
		ve.Add("client_secret_expires_at", "goes with client_secret")
	}
	switch in.Cloud {
	case CloudGlobal, CloudUSGov, CloudUSGovDoD, CloudChina:
	default:
		ve.Add("cloud", "must be one of global, usgov, usgov-dod, china")
	}
	for field, v := range map[string]string{"authority": in.Authority, "graph_root": in.GraphRoot} {
		if v == "" {
			continue
		}
		if u, err := url.Parse(v); err != nil || u.Scheme != "https" || u.Host == "" {
			ve.Add(field, "must be an https URL")
		}
	}
	if in.HTTPProxy != "" {
		if u, err := url.Parse(in.HTTPProxy); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			ve.Add("http_proxy", "must be an http:// or https:// URL")
		} else if u.User != nil {
			ve.Add("http_proxy", "must not carry credentials in clear: they are sealed into http_proxy_credentials (m365-worker instance add|update --http-proxy seals them)")
		}
	}
	if time.Duration(in.SyncInterval) < time.Second {
		ve.Add("sync_interval", "must be at least 1s")
	}
	if len(ve.Fields) > 0 {
		return fmt.Errorf("instance %q: %s", in.ID, ve.Summary())
	}
	return nil
}

// The sealed fields of an instance, as their bindings name them.
const (
	FieldClientSecret   = "client_secret"
	FieldCertificateKey = "certificate_key"
	FieldProxy          = "http_proxy"
)

// SecretBinding is what a sealed field of the instance is bound to: the
// instance, the field, its tenant and its app. A secret sealed for another
// instance (or app, or tenant) does not open here.
func (in Instance) SecretBinding(field string) jobs.Binding {
	return jobs.InstanceBinding(in.ID, field, in.TenantID, in.ClientID)
}

// ErrInstanceNotFound means no configuration exists for an instance id.
var ErrInstanceNotFound = errors.New("instance not found")

// ErrInstanceUnreadable means an instance's record is stored in a form this
// worker cannot read (written by a newer version, or damaged): jobs of the
// instance wait until it is rewritten.
var ErrInstanceUnreadable = errors.New("instance record stored in a form this worker cannot read")

// Instances reads and writes instance configuration in the m365_instances
// bucket. Watch keeps a local copy current for Lookup.
type Instances struct {
	kv        jetstream.KeyValue
	schedules *Schedules
	state     *state.Store

	mu    sync.RWMutex
	cache map[string]*Instance
}

// OpenInstances opens the instances bucket (created by Setup).
func OpenInstances(ctx context.Context, js jetstream.JetStream, t Topology) (*Instances, error) {
	t = t.withDefaults()
	kv, err := js.KeyValue(ctx, t.InstancesBucket())
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w (the operator's m365-worker setup creates the streams and buckets, or m365-worker run)", t.InstancesBucket(), err)
	}
	st, err := state.Open(ctx, js, t.StateBucket(), 0)
	if err != nil {
		return nil, err
	}
	return &Instances{kv: kv, schedules: NewSchedules(js, t), state: st, cache: map[string]*Instance{}}, nil
}

// instanceKey is an instance's key in the instances bucket.
func instanceKey(pool, id string) string { return pool + "." + id }

// Put validates and stores an instance, and sets its sync schedule. An
// instance moving to another pool leaves its old pool: its record, its
// schedule and its sync state move with it.
func (s *Instances) Put(ctx context.Context, in Instance) (Instance, error) {
	in = in.WithDefaults()
	if err := in.Validate(); err != nil {
		return in, err
	}
	old, err := s.Get(ctx, in.ID)
	if err != nil && !errors.Is(err, ErrInstanceNotFound) && !errors.Is(err, ErrInstanceUnreadable) {
		return in, err
	}
	in.UpdatedAt = time.Now().UTC()
	b, err := json.Marshal(in)
	if err != nil {
		return in, err
	}
	if _, err := s.kv.Put(ctx, instanceKey(in.Pool, in.ID), b); err != nil {
		return in, fmt.Errorf("store instance %s: %w", in.ID, err)
	}
	if old != nil && old.Pool != in.Pool {
		if err := s.leavePool(ctx, old.Pool, in); err != nil {
			return in, err
		}
	}
	if err := s.schedules.Set(ctx, in); err != nil {
		return in, err
	}
	s.set(&in)
	return in, nil
}

// Apply is Put for an operator: when the instance is new, or its
// credentials, tenant, cloud, endpoints or pool changed, it also asks for a
// sync at once (full when the tenant or its Graph changed), so Tevyra sees
// the tenant within seconds rather than after a whole interval; then the
// schedule takes over. It returns the sync's job id ("" if none was asked).
func (s *Instances) Apply(ctx context.Context, in Instance) (Instance, string, error) {
	old, err := s.Get(ctx, in.ID)
	if err != nil && !errors.Is(err, ErrInstanceNotFound) && !errors.Is(err, ErrInstanceUnreadable) {
		return in, "", err
	}
	saved, err := s.Put(ctx, in)
	if err != nil {
		return saved, "", err
	}
	full, now := syncNeeded(old, &saved)
	if !now {
		return saved, "", nil
	}
	id, err := RequestSync(ctx, s.schedules.js, s.schedules.topo.Subjects, saved.Pool, saved.ID, full)
	if err != nil {
		return saved, "", fmt.Errorf("instance %s saved, but its first sync could not be asked for: %w", saved.ID, err)
	}
	return saved, id, nil
}

// syncNeeded says whether a change of an instance calls for a sync at once,
// and whether a full one.
func syncNeeded(old, in *Instance) (full, now bool) {
	if old == nil {
		return true, true
	}
	full = old.TenantID != in.TenantID || old.Cloud != in.Cloud || old.GraphRoot != in.GraphRoot
	sealed := func(s *jobs.SealedSecret) string {
		if s == nil {
			return ""
		}
		return s.Box
	}
	changed := full || old.ClientID != in.ClientID || old.Pool != in.Pool || old.Authority != in.Authority ||
		sealed(old.ClientSecret) != sealed(in.ClientSecret) || sealed(old.CertificateKey) != sealed(in.CertificateKey) ||
		old.Certificate != in.Certificate || old.FederatedCredential != in.FederatedCredential || old.CAPEM != in.CAPEM || old.HTTPProxy != in.HTTPProxy ||
		sealed(old.ProxyCredentials) != sealed(in.ProxyCredentials)
	return full, changed
}

// leavePool moves an instance out of its old pool.
func (s *Instances) leavePool(ctx context.Context, oldPool string, in Instance) error {
	if err := s.schedules.Remove(ctx, oldPool, in.ID); err != nil {
		return err
	}
	if err := s.state.MoveInstance(ctx, oldPool, in.Pool, in.ID); err != nil {
		return fmt.Errorf("move the sync state of %s to pool %s: %w", in.ID, in.Pool, err)
	}
	if err := s.kv.Delete(ctx, instanceKey(oldPool, in.ID)); err != nil {
		return fmt.Errorf("remove instance %s from pool %s: %w", in.ID, oldPool, err)
	}
	return nil
}

// Get reads an instance from the bucket, in whichever pool it is.
func (s *Instances) Get(ctx context.Context, id string) (*Instance, error) {
	if !jobs.ValidToken(id) {
		return nil, fmt.Errorf("%w: %q is not a valid instance id", ErrInstanceNotFound, id)
	}
	keys, err := s.keys(ctx, "*."+id)
	if err != nil {
		return nil, fmt.Errorf("read instance %s: %w", id, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrInstanceNotFound, id)
	}
	return s.read(ctx, keys[0])
}

func (s *Instances) read(ctx context.Context, key string) (*Instance, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, fmt.Errorf("%w: %s", ErrInstanceNotFound, key)
	}
	if err != nil {
		return nil, fmt.Errorf("read instance %s: %w", key, err)
	}
	var in Instance
	if err := json.Unmarshal(e.Value(), &in); err != nil {
		return nil, fmt.Errorf("%w: instance %s: %v", ErrInstanceUnreadable, key, err)
	}
	return &in, nil
}

func (s *Instances) keys(ctx context.Context, filter string) ([]string, error) {
	keys, err := state.ListKeys(ctx, s.kv, filter)
	sort.Strings(keys)
	return keys, err
}

// Delete removes an instance and its sync schedule.
func (s *Instances) Delete(ctx context.Context, id string) error {
	old, err := s.Get(ctx, id)
	if err != nil {
		return err
	}
	if err := s.schedules.Remove(ctx, old.Pool, id); err != nil {
		return err
	}
	if err := s.kv.Delete(ctx, instanceKey(old.Pool, id)); err != nil {
		return fmt.Errorf("delete instance %s: %w", id, err)
	}
	s.mu.Lock()
	delete(s.cache, id)
	s.mu.Unlock()
	return nil
}

// List returns every instance, sorted by id.
func (s *Instances) List(ctx context.Context) ([]Instance, error) {
	keys, err := s.keys(ctx, "*.*")
	if err != nil {
		return nil, err
	}
	var out []Instance
	for _, k := range keys {
		in, err := s.read(ctx, k)
		if errors.Is(err, ErrInstanceNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, *in)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (s *Instances) set(in *Instance) {
	s.mu.Lock()
	s.cache[in.ID] = in
	s.mu.Unlock()
}

// Watch keeps the local copy current until ctx ends. onChange, if not nil,
// is called with each changed instance (nil for a deletion) and its id.
func (s *Instances) Watch(ctx context.Context, onChange func(id string, in *Instance)) error {
	return s.watch(ctx, ">", onChange, nil)
}

// WatchPool is Watch for the instances of one pool (what a pool's workers
// may read).
func (s *Instances) WatchPool(ctx context.Context, pool string, onChange func(id string, in *Instance), onRemoved func(prev *Instance)) error {
	return s.watch(ctx, pool+".>", onChange, onRemoved)
}

func (s *Instances) watch(ctx context.Context, filter string, onChange func(id string, in *Instance), onRemoved func(prev *Instance)) error {
	w, err := s.kv.Watch(ctx, filter)
	if err != nil {
		return fmt.Errorf("watch instances: %w", err)
	}
	go func() {
		defer w.Stop()
		for e := range w.Updates() {
			if e == nil {
				continue // end of the initial values
			}
			_, id, _ := strings.Cut(e.Key(), ".")
			var in *Instance
			if e.Operation() == jetstream.KeyValuePut {
				var v Instance
				if json.Unmarshal(e.Value(), &v) == nil {
					in = &v
				}
			}
			s.mu.Lock()
			prev := s.cache[id]
			if in == nil {
				delete(s.cache, id)
			} else {
				s.cache[id] = in
			}
			s.mu.Unlock()
			if onChange != nil {
				onChange(id, in)
			}
			if in == nil && prev != nil && onRemoved != nil {
				onRemoved(prev)
			}
		}
	}()
	return nil
}

// Lookup returns an instance of a pool from the local copy, reading the
// bucket on a miss (an instance added a moment ago). An instance configured
// in another pool is not found.
func (s *Instances) Lookup(ctx context.Context, pool, id string) (*Instance, error) {
	return s.lookup(ctx, pool, id, true)
}

// Fresh is Lookup reading the bucket rather than the watched copy: for a
// job asked for right after the instance changed.
func (s *Instances) Fresh(ctx context.Context, pool, id string) (*Instance, error) {
	return s.lookup(ctx, pool, id, false)
}

// Refresh is Fresh that also updates the local copy when the bucket holds a
// newer record than it (the watcher has not delivered it yet).
func (s *Instances) Refresh(ctx context.Context, pool, id string) (*Instance, error) {
	in, err := s.lookup(ctx, pool, id, false)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if old, ok := s.cache[id]; !ok || in.UpdatedAt.After(old.UpdatedAt) {
		s.cache[id] = in
	}
	s.mu.Unlock()
	return in, nil
}

func (s *Instances) lookup(ctx context.Context, pool, id string, cached bool) (*Instance, error) {
	s.mu.RLock()
	in, ok := s.cache[id]
	s.mu.RUnlock()
	if cached && ok && in.Pool == pool {
		return in, nil
	}
	if !jobs.ValidToken(id) || !jobs.ValidToken(pool) {
		return nil, fmt.Errorf("%w: %s.%s", ErrInstanceNotFound, pool, id)
	}
	in, err := s.read(ctx, instanceKey(pool, id))
	if err != nil {
		return nil, err
	}
	if cached { // the watcher keeps the copy; a fresh read must not overwrite a newer one it set
		s.set(in)
	}
	return in, nil
}

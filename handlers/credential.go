package handlers

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// credentialRecheck is how often a round asks Graph again for the end of
// the instance's client secret or certificate.
const credentialRecheck = 6 * time.Hour

// CredentialMeta is what the sync state keeps of the instance's credential.
type CredentialMeta struct {
	jobs.CredentialState
	// CheckedAt is when Graph was last asked for the expiry (zero: never,
	// or not readable).
	CheckedAt time.Time `json:"checked_at,omitzero"`
}

// credentialState is the instance's credential as this round knows it: a
// certificate's notAfter; a client secret's end read from the app
// registration when the app may read it (Application.Read.All or
// Directory.Read.All; at most every credentialRecheck, and again once the
// record changed), else the expiry the record was given; a federated
// credential has no expiry of its own.
func (r *round) credentialState(c *graphclient.Client, prev *CredentialMeta) *CredentialMeta {
	st, err := credentialOf(r.ctx, c, r.job.InstanceConfig, prev)
	if err != nil {
		r.log.Debug("sync: the app registration's credentials are not readable (grant Application.Read.All to see the secret's expiry)", "error", err)
	}
	return st
}

// CredentialOf is the instance's credential and its expiry, read now (the
// app registration's, when readable: err then says why not).
func CredentialOf(ctx context.Context, c *graphclient.Client, in *worker.Instance) (jobs.CredentialState, error) {
	st, err := credentialOf(ctx, c, in, nil)
	if st == nil {
		return jobs.CredentialState{}, err
	}
	return st.CredentialState, err
}

func credentialOf(ctx context.Context, c *graphclient.Client, in *worker.Instance, prev *CredentialMeta) (*CredentialMeta, error) {
	switch {
	case in == nil:
		return nil, nil
	case in.FederatedCredential:
		return &CredentialMeta{CredentialState: jobs.CredentialState{Kind: jobs.CredentialFederated}}, nil
	case in.CertificateKey != nil:
		st := &CredentialMeta{CredentialState: jobs.CredentialState{Kind: jobs.CredentialCertificate}}
		if ends, _, err := graphclient.CertificateExpiry([]byte(in.Certificate)); err == nil {
			st.ExpiresAt, st.Source = &ends, jobs.ExpiryFromCertificate
		}
		return st, nil
	}
	st := &CredentialMeta{CredentialState: jobs.CredentialState{Kind: jobs.CredentialClientSecret}}
	if in.ClientSecretExpiresAt != nil {
		st.ExpiresAt, st.Source = in.ClientSecretExpiresAt, jobs.ExpiryFromRecord
	}
	if prev != nil && prev.Kind == st.Kind && prev.CheckedAt.After(in.UpdatedAt) && time.Since(prev.CheckedAt) < credentialRecheck {
		if prev.Source == jobs.ExpiryFromGraph {
			return prev, nil
		}
		st.CheckedAt = prev.CheckedAt // not readable then: the record's
		return st, nil
	}
	ends, found, err := c.CredentialExpiry(ctx)
	st.CheckedAt = time.Now().UTC()
	if err == nil && found {
		st.ExpiresAt, st.Source = &ends, jobs.ExpiryFromGraph
	}
	return st, err
}

// credentialWarnings warn of a credential ending within
// jobs.CredentialWarning.
func credentialWarnings(instance string, st *CredentialMeta, now time.Time) []string {
	if st == nil || st.ExpiresAt == nil {
		return nil
	}
	left := st.ExpiresAt.Sub(now)
	if left > jobs.CredentialWarning {
		return nil
	}
	what, fix := "client secret", fmt.Sprintf("create a new secret in the app registration and give it with m365-worker instance update %s --secret-file - --secret-expires <date>", instance)
	if st.Kind == jobs.CredentialCertificate {
		what, fix = "certificate", fmt.Sprintf("upload a new certificate to the app registration and give it with m365-worker instance update %s --certificate … --certificate-key …", instance)
	}
	if left <= 0 {
		return []string{fmt.Sprintf("the %s expired on %s: %s", what, st.ExpiresAt.UTC().Format("2006-01-02"), fix)}
	}
	return []string{fmt.Sprintf("the %s expires on %s (in %d days): %s; or move to a federated credential, which has no secret to expire", what,
		st.ExpiresAt.UTC().Format("2006-01-02"), int(left.Hours()/24)+1, fix)}
}

// credentialGauge holds the expiry each instance's last round reported on
// this worker, for /metrics.
type credentialGauge struct {
	mu   sync.Mutex
	ends map[string]credentialEnd
}

type credentialEnd struct {
	kind string
	at   time.Time
}

func (g *credentialGauge) set(instance string, st *CredentialMeta) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ends == nil {
		g.ends = map[string]credentialEnd{}
	}
	if st == nil || st.ExpiresAt == nil {
		delete(g.ends, instance)
		return
	}
	g.ends[instance] = credentialEnd{kind: st.Kind, at: *st.ExpiresAt}
}

// CredentialMetrics is m365_credential_expires_timestamp_seconds: when each
// instance's client secret or certificate ends, as the last round on this
// worker knew it (a worker reports the instances it synced; take the max by
// instance).
func (s *Syncer) CredentialMetrics() []worker.Metric {
	g := &s.creds
	g.mu.Lock()
	defer g.mu.Unlock()
	ids := make([]string, 0, len(g.ends))
	for id := range g.ends {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]worker.Metric, 0, len(ids))
	for _, id := range ids {
		e := g.ends[id]
		out = append(out, worker.Metric{Name: "m365_credential_expires_timestamp_seconds", Help: "When the instance's client secret or certificate expires (Unix time), as its last sync round knew it.",
			Type: "gauge", Labels: map[string]string{"instance": id, "kind": e.kind}, Value: float64(e.at.Unix())})
	}
	return out
}

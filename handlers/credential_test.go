package handlers_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
	"github.com/tevyra/m365-worker/worker/workertest"
)

const poolSubject = "system:serviceaccount:m365:m365-worker"

// putInstance stores an instance record for tenant 0's app, with edit
// choosing its credential.
func (e *env) putInstance(id string, edit func(in *worker.Instance)) {
	e.t.Helper()
	cred := e.sim.Credentials()[0]
	in := worker.Instance{ID: id, TenantID: cred.TenantID, ClientID: cred.ClientID, Authority: cred.Authority, GraphRoot: cred.GraphRoot,
		CAPEM: string(e.sim.CAPEM()), SyncInterval: worker.Duration(time.Hour)}
	edit(&in)
	store, err := worker.OpenInstances(context.Background(), e.js, e.srv.Topology)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := store.Put(context.Background(), in); err != nil {
		e.t.Fatal(err)
	}
}

// reportOf requests a sync of instance and waits for its report, whatever
// the outcome.
func (e *env) reportOf(instance string) jobs.SyncReport {
	e.t.Helper()
	id, err := worker.RequestSync(context.Background(), e.js, jobs.Subjects{}, "default", instance, false)
	if err != nil {
		e.t.Fatal(err)
	}
	var rep jobs.SyncReport
	workertest.Eventually(e.t, 90*time.Second, "sync report "+id, func() bool {
		for _, r := range e.reports(instance) {
			if r.JobID == id {
				rep = r
				return true
			}
		}
		return false
	})
	return rep
}

// An instance with a federated credential has no secret: the pool's
// token, from an issuer the app trusts, is exchanged for the app's. It
// syncs and runs actions; a token Entra would refuse fails the round with
// the AADSTS refusal in its report.
func TestFederatedCredentialInstance(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 20, Groups: 2, NoThrottling: true})
	cluster, err := e.sim.NewIssuer("cluster")
	if err != nil {
		t.Fatal(err)
	}
	rogue, _ := e.sim.NewIssuer("rogue")
	cred := e.sim.Credentials()[0]
	_ = e.sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error {
		a.App(cred.ClientID).Federated = []graphsim.FederatedCredential{{Issuer: cluster.URL(), Subject: poolSubject, Audiences: []string{graphsim.FederationAudience}}}
		return nil
	})
	tokenFile := filepath.Join(t.TempDir(), "token")
	write := func(tok string) {
		if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(cluster.Mint(poolSubject, []string{graphsim.FederationAudience}, time.Hour))
	e.graphConfig.FederatedTokenFile = tokenFile
	e.startWorker(worker.Config{})
	e.putInstance("fed", func(in *worker.Instance) { in.FederatedCredential = true })
	rep := e.syncNow("fed", true)
	if rep.Credential == nil || rep.Credential.Kind != jobs.CredentialFederated || rep.Credential.ExpiresAt != nil || len(rep.Warnings) != 0 {
		t.Fatalf("a federated round reports credential %+v, warnings %v", rep.Credential, rep.Warnings)
	}
	snap, _ := e.sim.Export(cred.TenantID)
	ok(t, e.run("fed", jobs.ActionUpdateUser, jobs.UpdateUserParams{UserRef: jobs.UserRef{User: snap.Users[0].ID}, JobTitle: ptr("Federated")}, false))

	for name, c := range map[string]struct{ token, aadsts string }{
		"wrong-issuer":   {rogue.Mint(poolSubject, []string{graphsim.FederationAudience}, time.Hour), "AADSTS700211"},
		"wrong-subject":  {cluster.Mint("system:serviceaccount:default:other", []string{graphsim.FederationAudience}, time.Hour), "AADSTS700213"},
		"wrong-audience": {cluster.Mint(poolSubject, []string{"api://other"}, time.Hour), "AADSTS700212"},
		"expired":        {cluster.Mint(poolSubject, []string{graphsim.FederationAudience}, -time.Minute), "AADSTS700024"},
	} {
		write(c.token)
		e.putInstance(name, func(in *worker.Instance) { in.FederatedCredential = true }) // a client of its own: no cached token
		rep := e.reportOf(name)
		if rep.Outcome != jobs.OutcomeFailed || rep.Error == nil || rep.Error.Code != "auth_failed" || !strings.Contains(rep.Error.Message, c.aadsts) {
			t.Errorf("%s: report %s %+v, want auth_failed with %s", name, rep.Outcome, rep.Error, c.aadsts)
		}
	}
}

// selfSigned is a certificate (and its key) that ends at notAfter.
func selfSigned(t *testing.T, notAfter time.Time) (certPEM, keyPEM []byte) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "m365-worker"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
}

// The credential's expiry is known and shown: a certificate's from the
// certificate, a secret's from the record when the app may not read its
// registration, and from Graph when it may; within 30 days the report
// warns, and the worker exports the expiry.
func TestCredentialExpiry(t *testing.T) {
	e := newEnv(t, graphsim.Options{Users: 20, Groups: 2, NoThrottling: true})
	cred := e.sim.Credentials()[0]
	pub, _ := e.poolKey.PublicKey()
	certEnds := time.Now().Add(10 * 24 * time.Hour).Truncate(time.Second)
	certPEM, keyPEM := selfSigned(t, certEnds)
	graphEnds := time.Now().Add(200 * 24 * time.Hour).UTC().Truncate(time.Second)
	_ = e.sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error {
		app := a.App(cred.ClientID)
		app.CertPEM, app.SecretEnds = certPEM, graphEnds
		return nil
	})
	e.startWorker(worker.Config{})
	check := func(rep jobs.SyncReport, kind, source string, ends time.Time, warn bool) {
		t.Helper()
		c := rep.Credential
		if rep.Outcome != jobs.OutcomeSucceeded || c == nil || c.Kind != kind || c.Source != source || c.ExpiresAt == nil || !c.ExpiresAt.Equal(ends) {
			t.Fatalf("report %s %+v: credential %+v, want %s ending %s from %s", rep.Outcome, rep.Error, c, kind, ends, source)
		}
		if warned := len(rep.Warnings) == 1 && strings.Contains(rep.Warnings[0], ends.UTC().Format("2006-01-02")); warned != warn {
			t.Fatalf("%s ending %s: warnings %q", kind, ends, rep.Warnings)
		}
		// What status shows: the instance's sync state.
		meta, err := handlers.ReadSyncMeta(context.Background(), e.store.For("default", rep.Instance))
		if err != nil || meta.Credential == nil || meta.Credential.Source != source || !meta.Credential.ExpiresAt.Equal(ends) {
			t.Fatalf("the sync state of %s keeps credential %+v (%v)", rep.Instance, meta.Credential, err)
		}
	}

	e.putInstance("cert", func(in *worker.Instance) {
		in.Certificate = string(certPEM)
		in.CertificateKey, _ = jobs.SealFor(keyPEM, pub, in.SecretBinding(worker.FieldCertificateKey))
	})
	check(e.reportOf("cert"), jobs.CredentialCertificate, jobs.ExpiryFromCertificate, certEnds, true)

	e.putInstance("secret", func(in *worker.Instance) {
		in.ClientSecret, _ = jobs.SealFor([]byte(cred.ClientSecret), pub, in.SecretBinding(worker.FieldClientSecret))
		given := time.Now().Add(100 * 24 * time.Hour).UTC().Truncate(time.Second)
		in.ClientSecretExpiresAt = &given
	})
	// The seeded app holds Directory.Read.All: the end comes from Graph.
	check(e.reportOf("secret"), jobs.CredentialClientSecret, jobs.ExpiryFromGraph, graphEnds, false)
	if m := e.syncer.CredentialMetrics(); !hasMetric(m, "secret", float64(graphEnds.Unix())) || !hasMetric(m, "cert", float64(certEnds.Unix())) {
		t.Fatalf("m365_credential_expires_timestamp_seconds: %+v", m)
	}

	// Without the grant, the record's expiry.
	_ = e.sim.Mutate(cred.TenantID, func(a *graphsim.Admin) error {
		a.App(cred.ClientID).Roles = []string{"User.Read.All", "Group.Read.All", "Organization.Read.All"}
		return nil
	})
	given := time.Now().Add(20 * 24 * time.Hour).UTC().Truncate(time.Second)
	e.putInstance("given", func(in *worker.Instance) {
		in.ClientSecret, _ = jobs.SealFor([]byte(cred.ClientSecret), pub, in.SecretBinding(worker.FieldClientSecret))
		in.ClientSecretExpiresAt = &given
	})
	check(e.reportOf("given"), jobs.CredentialClientSecret, jobs.ExpiryFromRecord, given, true)
	if m := e.syncer.CredentialMetrics(); !hasMetric(m, "given", float64(given.Unix())) {
		t.Fatalf("m365_credential_expires_timestamp_seconds of the record's expiry: %+v", m)
	}
}

func hasMetric(ms []worker.Metric, instance string, v float64) bool {
	for _, m := range ms {
		if m.Name == "m365_credential_expires_timestamp_seconds" && m.Labels["instance"] == instance && m.Value == v {
			return true
		}
	}
	return false
}

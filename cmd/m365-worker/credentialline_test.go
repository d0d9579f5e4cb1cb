package main

import (
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/jobs"
)

// status's line for each kind of credential and each source of its expiry.
func TestCredentialLine(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { v := now.Add(d); return &v }
	for _, c := range []struct {
		st   jobs.CredentialState
		want []string
	}{
		{jobs.CredentialState{Kind: jobs.CredentialCertificate, ExpiresAt: at(400 * 24 * time.Hour), Source: jobs.ExpiryFromCertificate}, []string{"certificate, expires 2028-01-09", "in 400 days", "from the certificate"}},
		{jobs.CredentialState{Kind: jobs.CredentialClientSecret, ExpiresAt: at(10 * 24 * time.Hour), Source: jobs.ExpiryFromRecord}, []string{"client secret, expires 2026-12-15", "renew it", "from the instance record"}},
		{jobs.CredentialState{Kind: jobs.CredentialClientSecret, ExpiresAt: at(-time.Hour), Source: jobs.ExpiryFromGraph}, []string{"EXPIRED", "from the app registration"}},
		{jobs.CredentialState{Kind: jobs.CredentialClientSecret}, []string{"expiry unknown", "Application.Read.All"}},
		{jobs.CredentialState{Kind: jobs.CredentialFederated}, []string{"federated (no secret to expire)"}},
	} {
		got := credentialLine(c.st, now)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%+v: %q lacks %q", c.st, got, w)
			}
		}
	}
}

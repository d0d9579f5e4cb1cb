package jobs

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
)

// A bound value opens where it was sealed for and nowhere else; an unbound
// one is refused where a binding is required.
func TestSealForOpensOnlyWhereSealedFor(t *testing.T) {
	kp, _ := nkeys.CreateCurveKeys()
	pub, _ := kp.PublicKey()
	acme := InstanceBinding("acme", "client_secret", "6E7B768E-07e2-4810-8459-485f84f8f204", "1c4a6a0b-5f6d-4bb8-9f1e-2f7f0f6e4d11")
	s, err := SealFor([]byte("the-secret"), pub, acme)
	if err != nil {
		t.Fatal(err)
	}
	if s.Alg != SealAlgBound || s.For != acme.String() || strings.Contains(s.Box, "the-secret") {
		t.Fatalf("sealed %+v", s)
	}
	got, err := s.OpenFor(kp, InstanceBinding("acme", "client_secret", "6e7b768e-07e2-4810-8459-485f84f8f204", "1C4A6A0B-5f6d-4bb8-9f1e-2f7f0f6e4d11"))
	if err != nil || string(got) != "the-secret" {
		t.Fatalf("open where sealed for: %q %v", got, err)
	}
	for name, b := range map[string]Binding{
		"another instance": InstanceBinding("evil", "client_secret", acme.TenantID, acme.ClientID),
		"another field":    InstanceBinding("acme", "certificate_key", acme.TenantID, acme.ClientID),
		"another tenant":   InstanceBinding("acme", "client_secret", "00000000-0000-0000-0000-000000000001", acme.ClientID),
		"another app":      InstanceBinding("acme", "client_secret", acme.TenantID, "00000000-0000-0000-0000-000000000002"),
	} {
		if _, err := s.OpenFor(kp, b); !errors.Is(err, ErrSealedElsewhere) || !strings.Contains(err.Error(), "instance=acme") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The clear label cannot be swapped to pass: the binding inside counts.
	forged := *s
	forged.For = InstanceBinding("evil", "client_secret", acme.TenantID, acme.ClientID).String()
	if _, err := forged.OpenFor(kp, InstanceBinding("evil", "client_secret", acme.TenantID, acme.ClientID)); !errors.Is(err, ErrSealedElsewhere) {
		t.Errorf("relabelled: %v", err)
	}
	if _, err := s.Open(kp); err == nil {
		t.Error("a bound value opened without its binding")
	}
	old, _ := Seal([]byte("the-secret"), pub)
	if _, err := old.OpenFor(kp, acme); !errors.Is(err, ErrUnbound) {
		t.Errorf("unbound value: %v", err)
	}
	pw := PasswordBinding("acme", "job-1", "Adele@contoso.com")
	ps, _ := SealFor([]byte("pw"), pub, pw)
	if _, err := ps.OpenFor(kp, PasswordBinding("acme", "job-2", "adele@contoso.com")); !errors.Is(err, ErrSealedElsewhere) {
		t.Errorf("password moved to another job: %v", err)
	}
	if _, err := ps.OpenFor(kp, PasswordBinding("acme", "job-1", "adele@contoso.com")); err != nil {
		t.Errorf("password for its job and target: %v", err)
	}
}

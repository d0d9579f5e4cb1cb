package jobs

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nkeys"
)

// SealAlgBound names the bound sealing scheme: xkv1's box around the
// binding and the secret, so a sealed value only opens where it was sealed
// for.
const SealAlgBound = "xkv2"

// Binding names what a sealed value is for. Opening checks it: a value
// copied to another instance, field, tenant, app, job or target is refused.
type Binding struct {
	// Instance is the instance the value belongs to.
	Instance string
	// Field is what the value is: client_secret, certificate_key,
	// http_proxy (an instance's), or password (a job's).
	Field string
	// TenantID and ClientID bind an instance's credentials to its app.
	TenantID, ClientID string
	// JobID and Target bind a password in a job to the job and its user.
	JobID, Target string
}

// String is the binding's canonical form, sealed with the value and shown
// beside it.
func (b Binding) String() string {
	parts := []string{"instance=" + b.Instance, "field=" + b.Field}
	for _, kv := range [][2]string{{"tenant", b.TenantID}, {"client", b.ClientID}, {"job", b.JobID}, {"target", strings.ToLower(b.Target)}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	return strings.Join(parts, " ")
}

// InstanceBinding is the binding of an instance's secret field.
func InstanceBinding(instance, field, tenantID, clientID string) Binding {
	return Binding{Instance: instance, Field: field, TenantID: strings.ToLower(tenantID), ClientID: strings.ToLower(clientID)}
}

// PasswordBinding is the binding of a password in a job (sealed by the
// requester to the pool, or by the worker to the requester's reply_key).
func PasswordBinding(instance, jobID, user string) Binding {
	return Binding{Instance: instance, Field: "password", JobID: jobID, Target: user}
}

// SealFor seals plaintext to recipient, bound to b.
func SealFor(plaintext []byte, recipient string, b Binding) (*SealedSecret, error) {
	bound := append([]byte(b.String()+"\x00"), plaintext...)
	s, err := Seal(bound, recipient)
	if err != nil {
		return nil, err
	}
	s.Alg, s.For = SealAlgBound, b.String()
	return s, nil
}

// ErrSealedElsewhere means a sealed value was sealed for another place than
// the one it is opened for (copied to another instance, field, app, job or
// target).
var ErrSealedElsewhere = errors.New("sealed for another place")

// ErrUnbound means a value was sealed without a binding (before sealed
// values were bound to their place): it is not opened where a binding is
// required.
var ErrUnbound = errors.New("sealed without naming what it is for")

// OpenFor opens a value sealed for b with the recipient's key.
func (s *SealedSecret) OpenFor(recipient nkeys.KeyPair, b Binding) ([]byte, error) {
	if s.Alg != SealAlgBound {
		return nil, fmt.Errorf("open sealed %s: %w (sealed with %s; seal it again for %s)", b.Field, ErrUnbound, quoteInput(s.Alg), b)
	}
	inner := *s
	inner.Alg = SealAlg
	out, err := inner.Open(recipient)
	if err != nil {
		return nil, err
	}
	got, secret, ok := bytes.Cut(out, []byte{0})
	if !ok {
		return nil, fmt.Errorf("open sealed %s: %w (no binding inside)", b.Field, ErrUnbound)
	}
	if string(got) != b.String() {
		return nil, fmt.Errorf("open sealed %s: %w: it was sealed for %s, not for %s", b.Field, ErrSealedElsewhere, clip(string(got), maxEcho), b)
	}
	return secret, nil
}

// SealedFor reports whether s says it is sealed for b (its clear label; only
// OpenFor proves it).
func (s *SealedSecret) SealedFor(b Binding) bool {
	return s != nil && s.Alg == SealAlgBound && s.For == b.String()
}

// boxLen is the sealed bytes' length, for validation.
func (s *SealedSecret) boxLen() int {
	b, err := base64.StdEncoding.DecodeString(s.Box)
	if err != nil {
		return 0
	}
	return len(b)
}

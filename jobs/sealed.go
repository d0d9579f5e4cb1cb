package jobs

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nkeys"
)

// SealAlg names the only sealing scheme: nkeys curve keys (X25519 +
// XSalsa20-Poly1305), as in nats.go's xkeys.
const SealAlg = "xkv1"

// SealedSecret is a secret (a client secret, a certificate key, a password)
// sealed to a curve public key, so it can sit in a stream or bucket without
// being readable there. Only the holder of the recipient's private key can
// open it. It prints and logs as a redacted marker.
type SealedSecret struct {
	// Alg is SealAlg.
	Alg string `json:"alg"`
	// Recipient is the curve public key the secret is sealed to (X…).
	Recipient string `json:"recipient"`
	// Sender is the one-time curve public key that sealed it.
	Sender string `json:"sender"`
	// Box is the sealed bytes, standard base64.
	Box string `json:"box"`
	// For names what a bound value (SealAlgBound) is for, in clear; the
	// same binding is sealed inside the box and checked on opening.
	For string `json:"for,omitempty"`
}

// Seal seals plaintext to the recipient's curve public key with a fresh
// sender key.
func Seal(plaintext []byte, recipient string) (*SealedSecret, error) {
	if !xkeyRE.MatchString(recipient) {
		return nil, fmt.Errorf("seal: %s is not a curve public key (56 characters starting with X)", quoteInput(recipient))
	}
	sender, err := nkeys.CreateCurveKeys()
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	defer sender.Wipe()
	box, err := sender.Seal(plaintext, recipient)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	pub, _ := sender.PublicKey()
	return &SealedSecret{Alg: SealAlg, Recipient: recipient, Sender: pub, Box: base64.StdEncoding.EncodeToString(box)}, nil
}

// ErrWrongKey means a secret was sealed to another key than the one given.
var ErrWrongKey = errors.New("the secret is sealed to another key")

// Open returns the plaintext of an unbound value (SealAlg) using the
// recipient's key pair. A bound value opens only with OpenFor.
func (s *SealedSecret) Open(recipient nkeys.KeyPair) ([]byte, error) {
	if s.Alg == SealAlgBound {
		return nil, fmt.Errorf("open sealed secret: it is sealed for %s: open it with OpenFor", clip(s.For, maxEcho))
	}
	pub, err := recipient.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("open sealed secret: %w", err)
	}
	if pub != s.Recipient {
		return nil, fmt.Errorf("open sealed secret: %w (sealed to %s, this key is %s)", ErrWrongKey, clip(s.Recipient, maxEcho), pub)
	}
	box, err := base64.StdEncoding.DecodeString(s.Box)
	if err != nil {
		return nil, fmt.Errorf("open sealed secret: box is not base64: %w", err)
	}
	out, err := recipient.Open(box, s.Sender)
	if err != nil {
		return nil, fmt.Errorf("open sealed secret: %w", err)
	}
	return out, nil
}

func (s *SealedSecret) validate(ve *ValidationError, field string) {
	if s.Alg != SealAlg && s.Alg != SealAlgBound {
		ve.Add(field+".alg", "must be "+SealAlgBound+" (or "+SealAlg+")")
	}
	if !xkeyRE.MatchString(s.Recipient) {
		ve.Add(field+".recipient", "must be a curve (xkey) public key")
	}
	if !xkeyRE.MatchString(s.Sender) {
		ve.Add(field+".sender", "must be a curve (xkey) public key")
	}
	if s.boxLen() == 0 {
		ve.Add(field+".box", "must be non-empty standard base64")
	}
}

// UnmarshalJSON rejects unknown fields and plain strings, so a password
// given in clear is refused rather than stored.
func (s *SealedSecret) UnmarshalJSON(b []byte) error {
	type plain SealedSecret
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p plain
	if err := dec.Decode(&p); err != nil {
		return errors.New("a sealed secret must be an object {alg, recipient, sender, box}; secrets are never accepted in clear")
	}
	*s = SealedSecret(p)
	return nil
}

// String redacts the secret.
func (s *SealedSecret) String() string { return "[sealed to " + s.Recipient + "]" }

// LogValue redacts the secret in slog output.
func (s *SealedSecret) LogValue() slog.Value { return slog.StringValue(s.String()) }

package events

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	mrand "math/rand/v2"
	"strings"
	"time"
)

// SignatureHeader carries "sha256=<hex HMAC-SHA256 of the body>" keyed with
// the webhook secret.
const (
	SignatureHeader = "X-Tollgate-Signature"
	EventIDHeader   = "X-Tollgate-Event-Id"
	EventTypeHeader = "X-Tollgate-Event-Type"
)

// Sign returns the X-Tollgate-Signature value of body.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a signature header value in constant time (for receivers
// written in Go, and the tests).
func Verify(secret string, body []byte, header string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(header))
}

// Backoff policy: the delay after the n-th failed attempt is
// BaseBackoff·2^(n-1), capped at MaxBackoff, with up to half of it jittered.
const (
	BaseBackoff = time.Second
	MaxBackoff  = 10 * time.Minute
)

// Backoff is the delay before the next attempt after attempts failures
// (attempts ≥ 1), without jitter.
func Backoff(attempts int, base, maxDelay time.Duration) time.Duration {
	if attempts < 1 {
		attempts = 1
	}
	d := base
	for i := 1; i < attempts && d < maxDelay; i++ {
		d *= 2
	}
	return min(d, maxDelay)
}

// jitter spreads d over [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + mrand.N(d/2+1)
}

// sealer encrypts the one secret an event carries (key.rotated's new key)
// while it waits in the outbox, so that the database never holds a
// plaintext key: AES-256-GCM with a key derived from the master key.
type sealer struct{ aead cipher.AEAD }

const sealPrefix = "v1:"

func newSealer(masterKey string) sealer {
	k := sha256.Sum256([]byte("tollgate outbox seal v1\x00" + masterKey))
	block, err := aes.NewCipher(k[:])
	if err != nil {
		panic(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return sealer{aead: aead}
}

func (s sealer) seal(plain, aad string) string {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		panic("events: crypto/rand failed: " + err.Error())
	}
	out := s.aead.Seal(nonce, nonce, []byte(plain), []byte(aad))
	return sealPrefix + base64.RawStdEncoding.EncodeToString(out)
}

var errUnseal = errors.New("sealed secret cannot be decrypted (was the master key changed?)")

func (s sealer) open(sealed, aad string) (string, error) {
	raw, ok := strings.CutPrefix(sealed, sealPrefix)
	if !ok {
		return "", errUnseal
	}
	b, err := base64.RawStdEncoding.DecodeString(raw)
	if err != nil || len(b) < s.aead.NonceSize() {
		return "", errUnseal
	}
	plain, err := s.aead.Open(nil, b[:s.aead.NonceSize()], b[s.aead.NonceSize():], []byte(aad))
	if err != nil {
		return "", errUnseal
	}
	return string(plain), nil
}

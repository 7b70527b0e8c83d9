// Package keys is the virtual-key format shared by both planes: generation,
// hashing and the display form. It is leaf-level and imports nothing of Tollgate.
package keys

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
)

// Prefix starts every virtual key.
const Prefix = "sk-"

// randomBytes of entropy per generated key (192 bits; ≥128 is required).
const randomBytes = 24

// MaxLen bounds a key a caller may choose or present.
const MaxLen = 256

// ErrFormat reports a string that cannot be a virtual key.
var ErrFormat = errors.New("key must start with sk- and be 4 to 256 printable characters")

// Generate returns a new random key: "sk-" and 32 URL-safe base64 characters.
func Generate() string {
	var b [randomBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("keys: crypto/rand failed: " + err.Error())
	}
	return Prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// Validate checks a caller-chosen or presented key: the sk- prefix, a length
// bound, and printable ASCII without spaces.
func Validate(key string) error {
	if !strings.HasPrefix(key, Prefix) || len(key) <= len(Prefix) || len(key) > MaxLen {
		return ErrFormat
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c > '~' {
			return ErrFormat
		}
	}
	return nil
}

// Hash is the stored form of a key: the SHA-256 hex of the full key string,
// the same function LiteLLM uses, so imported keys keep working.
func Hash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// Sum is Hash without the hex encoding, for pointer-free lookup tables.
func Sum(key string) [32]byte { return sha256.Sum256([]byte(key)) }

// DisplayName is the form shown after creation: "sk-...abcd".
func DisplayName(key string) string {
	if len(key) < 8 {
		return Prefix + "..."
	}
	return Prefix + "..." + key[len(key)-4:]
}

// NewID returns a random 128-bit identifier as 32 hex characters (token ids,
// model ids, team ids when the caller gives none).
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("keys: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// LooksLikeHash reports whether s is a 64-character lowercase hex string.
func LooksLikeHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

package ui

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"sync"
	"time"
)

// sealer seals session cookies and derives CSRF tokens. Both keys come from
// the master key, so every replica sharing it agrees and a new master key
// ends every session.
type sealer struct {
	aead    cipher.AEAD
	csrfKey []byte
}

const (
	cookieAD = "tollgate-ui-session-v1"
	// maxCookie bounds what we try to open (a credential is ≤ 256 bytes).
	maxCookie = 2048
)

func newSealer(masterKey string) (*sealer, error) {
	ek, err := hkdf.Key(sha256.New, []byte(masterKey), nil, "tollgate admin ui session v1", 32)
	if err != nil {
		return nil, err
	}
	ck, err := hkdf.Key(sha256.New, []byte(masterKey), nil, "tollgate admin ui csrf v1", 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(ek)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead, csrfKey: ck}, nil
}

// session is the cookie's sealed content.
type session struct {
	ID         string `json:"sid"`
	Credential string `json:"cred"`
	Expires    int64  `json:"exp"` // unix seconds
}

func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *sealer) seal(ss session) (string, error) {
	pt, err := json.Marshal(ss)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(pt)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, pt, []byte(cookieAD))), nil
}

var errBadSession = errors.New("invalid session")

func (s *sealer) open(v string, now time.Time) (session, error) {
	if v == "" || len(v) > maxCookie {
		return session{}, errBadSession
	}
	raw, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil || len(raw) < s.aead.NonceSize()+s.aead.Overhead() {
		return session{}, errBadSession
	}
	n := s.aead.NonceSize()
	pt, err := s.aead.Open(nil, raw[:n], raw[n:], []byte(cookieAD))
	if err != nil {
		return session{}, errBadSession
	}
	var ss session
	if err := json.Unmarshal(pt, &ss); err != nil || ss.ID == "" || ss.Credential == "" {
		return session{}, errBadSession
	}
	if now.Unix() >= ss.Expires {
		return session{}, errBadSession
	}
	return ss, nil
}

// csrf is the session's anti-CSRF token: an HMAC of its id.
func (s *sealer) csrf(sid string) string {
	m := hmac.New(sha256.New, s.csrfKey)
	m.Write([]byte(sid))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (s *sealer) csrfOK(sid, presented string) bool {
	if presented == "" {
		return false
	}
	return hmac.Equal([]byte(s.csrf(sid)), []byte(presented))
}

// revoked remembers signed-out session ids until they would have expired:
// this replica's own and, with Config.Revocations, every replica's (read
// from the store by Run). Expired ids are swept at most once a minute (a
// sign-in/sign-out loop must not make every sign-out walk the whole map).
// The map is capped at maxRevoked live ids: past that (100k sign-outs
// within a session's 8 h) it is emptied, which lets cookies already signed
// out work again until they expire, rather than grow without bound.
type revoked struct {
	mu        sync.Mutex
	ids       map[string]int64
	lastSweep int64
}

const maxRevoked = 100_000

func (r *revoked) add(id string, exp int64, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = map[string]int64{}
	}
	if n := now.Unix(); n-r.lastSweep >= 60 || len(r.ids) >= maxRevoked {
		r.lastSweep = n
		for k, e := range r.ids {
			if e <= n {
				delete(r.ids, k)
			}
		}
		if len(r.ids) >= maxRevoked {
			clear(r.ids)
		}
	}
	r.ids[id] = exp
}

func (r *revoked) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.ids[id]
	return ok
}

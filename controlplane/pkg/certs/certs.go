// Package certs builds TLS configurations from PEM files that are re-read
// when they change, so certificates rotate without a restart. Both planes
// use it: the control plane for its REST and gRPC listeners (and to verify
// proxies' client certificates on the sync stream), the proxy to verify the
// control plane and present its own certificate.
//
// # Architecture
//
// A file set (certificate, key, CA bundle) is checked at most once per
// CheckInterval, on the next handshake that needs it: when a file's size or
// modification time changed, it is parsed again. A file that fails to
// parse keeps the previous good material in use and the error is logged
// once per change, so a half-written file during rotation never takes the
// listener down.
//
// # Thread safety
//
// Configs returned here are safe for concurrent handshakes.
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// CheckInterval bounds how often the files are stat'ed.
var CheckInterval = time.Second

type fileStamp struct {
	size    int64
	modTime time.Time
}

func stamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.Size(), fi.ModTime()}, nil
}

// material is a reloadable certificate pair and CA pool.
type material struct {
	certFile, keyFile, caFile string
	log                       *slog.Logger

	mu        sync.Mutex
	checked   time.Time
	certStamp [2]fileStamp
	caStamp   fileStamp
	cert      *tls.Certificate
	pool      *x509.CertPool
}

func newMaterial(certFile, keyFile, caFile string, log *slog.Logger) (*material, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a certificate and its key go together: set both or neither")
	}
	if log == nil {
		log = slog.Default()
	}
	m := &material{certFile: certFile, keyFile: keyFile, caFile: caFile, log: log}
	if err := m.load(true); err != nil {
		return nil, err
	}
	return m, nil
}

// load (re)reads changed files; with strict, any error is returned,
// otherwise it is logged and the previous material kept.
func (m *material) load(strict bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !strict && time.Since(m.checked) < CheckInterval {
		return nil
	}
	m.checked = time.Now()
	var errs []error
	if m.certFile != "" {
		cs, err1 := stamp(m.certFile)
		ks, err2 := stamp(m.keyFile)
		if err := errors.Join(err1, err2); err != nil {
			errs = append(errs, err)
		} else if m.cert == nil || cs != m.certStamp[0] || ks != m.certStamp[1] {
			c, err := tls.LoadX509KeyPair(m.certFile, m.keyFile)
			if err != nil {
				errs = append(errs, fmt.Errorf("load %s: %w", m.certFile, err))
			} else {
				if m.cert != nil {
					m.log.Info("TLS certificate reloaded", "file", m.certFile)
				}
				m.cert, m.certStamp = &c, [2]fileStamp{cs, ks}
			}
		}
	}
	if m.caFile != "" {
		s, err := stamp(m.caFile)
		if err != nil {
			errs = append(errs, err)
		} else if m.pool == nil || s != m.caStamp {
			pem, err := os.ReadFile(m.caFile)
			pool := x509.NewCertPool()
			if err == nil && !pool.AppendCertsFromPEM(pem) {
				err = fmt.Errorf("%s holds no PEM certificate", m.caFile)
			}
			if err != nil {
				errs = append(errs, err)
			} else {
				if m.pool != nil {
					m.log.Info("TLS CA bundle reloaded", "file", m.caFile)
				}
				m.pool, m.caStamp = pool, s
			}
		}
	}
	err := errors.Join(errs...)
	if err != nil && !strict {
		m.log.Error("TLS material not reloaded; keeping the previous one", "err", err)
		return nil
	}
	return err
}

func (m *material) current() (*tls.Certificate, *x509.CertPool) {
	_ = m.load(false)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cert, m.pool
}

// ServerConfig returns a TLS server config presenting certFile/keyFile.
// With clientCAFile, client certificates are verified against its CAs:
// with auth tls.RequireAndVerifyClientCert every client must present one;
// with tls.VerifyClientCertIfGiven a client may present none (the control
// plane uses this so that management clients need no certificate while the
// sync service insists on one). Without clientCAFile, client certificates
// are not asked for.
func ServerConfig(certFile, keyFile, clientCAFile string, auth tls.ClientAuthType, log *slog.Logger) (*tls.Config, error) {
	if certFile == "" {
		return nil, errors.New("a server certificate (--tls-cert, --tls-key) is required for TLS")
	}
	m, err := newMaterial(certFile, keyFile, clientCAFile, log)
	if err != nil {
		return nil, err
	}
	base := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, pool := m.current()
		c := &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{*cert},
			NextProtos:   []string{"h2", "http/1.1"},
		}
		if clientCAFile != "" {
			// Verify here rather than in crypto/tls, so that every refusal
			// gets one clear log line naming the certificate and the reason.
			c.ClientAuth = tls.RequestClientCert
			required := auth != tls.VerifyClientCertIfGiven
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				if err := verifyClient(cs, pool, required); err != nil {
					m.log.Warn("TLS client certificate refused", "reason", err.Error())
					return err
				}
				return nil
			}
		}
		return c, nil
	}
	return base, nil
}

func verifyClient(cs tls.ConnectionState, pool *x509.CertPool, required bool) error {
	if len(cs.PeerCertificates) == 0 {
		if required {
			return errors.New("no client certificate presented")
		}
		return nil
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return fmt.Errorf("client certificate %q: %w", leaf.Subject.CommonName, err)
	}
	return nil
}

// ClientConfig returns a TLS client config that trusts caFile (the system
// roots when empty) and, with certFile/keyFile, presents a client
// certificate (mutual TLS).
func ClientConfig(caFile, certFile, keyFile, serverName string, log *slog.Logger) (*tls.Config, error) {
	m, err := newMaterial(certFile, keyFile, caFile, log)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		// The CA bundle may rotate: verify against the current pool
		// instead of a RootCAs fixed at start.
		c.InsecureSkipVerify = true // replaced by VerifyConnection below
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			_, pool := m.current()
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server presented no certificate")
			}
			inter := x509.NewCertPool()
			for _, ic := range cs.PeerCertificates[1:] {
				inter.AddCert(ic)
			}
			name := cs.ServerName
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				DNSName: name, Roots: pool, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			return err
		}
	}
	if certFile != "" {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _ := m.current()
			return cert, nil
		}
	}
	return c, nil
}

package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, name string) *ca {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &ca{c, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a leaf certificate and key under dir and returns their paths.
func (c *ca) issue(t *testing.T, dir, name string, server bool, notAfter time.Time) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	if server {
		tpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tpl.DNSNames = []string{"localhost"}
	} else {
		tpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	cp, kp := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	write(t, cp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	write(t, kp, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))
	return cp, kp
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// serve accepts TLS connections and echoes one line; it returns the address.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.(*tls.Conn).Handshake()
				_, _ = c.Write([]byte("ok"))
			}()
		}
	}()
	return ln.Addr().String()
}

func dial(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	// TLS 1.3 reports a rejected client certificate on the first read.
	b := make([]byte, 2)
	_, err = io.ReadFull(c, b)
	return err
}

func TestMutualTLSMatrix(t *testing.T) {
	CheckInterval = 0
	dir := t.TempDir()
	good, other := newCA(t, "tollgate-ca"), newCA(t, "someone-else")
	caFile := filepath.Join(dir, "ca.pem")
	write(t, caFile, good.pem)
	otherCA := filepath.Join(dir, "other-ca.pem")
	write(t, otherCA, other.pem)
	srvCert, srvKey := good.issue(t, dir, "server", true, time.Now().Add(time.Hour))
	cliCert, cliKey := good.issue(t, dir, "proxy", false, time.Now().Add(time.Hour))
	expCert, expKey := good.issue(t, dir, "expired", false, time.Now().Add(-time.Hour))
	strCert, strKey := other.issue(t, dir, "stranger", false, time.Now().Add(time.Hour))

	scfg, err := ServerConfig(srvCert, srvKey, caFile, tls.RequireAndVerifyClientCert, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, scfg)

	cases := []struct {
		name          string
		ca, cert, key string
		wantErr       string
	}{
		{"valid client certificate", caFile, cliCert, cliKey, ""},
		{"no client certificate", caFile, "", "", "certificate"},
		{"client certificate from another CA", caFile, strCert, strKey, "certificate"},
		{"expired client certificate", caFile, expCert, expKey, "certificate"},
		{"server not trusted (wrong CA)", otherCA, cliCert, cliKey, "unknown authority"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ccfg, err := ClientConfig(tc.ca, tc.cert, tc.key, "127.0.0.1", nil)
			if err != nil {
				t.Fatal(err)
			}
			err = dial(addr, ccfg)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestOptionalClientCertificate(t *testing.T) {
	CheckInterval = 0
	dir := t.TempDir()
	good := newCA(t, "tollgate-ca")
	caFile := filepath.Join(dir, "ca.pem")
	write(t, caFile, good.pem)
	srvCert, srvKey := good.issue(t, dir, "server", true, time.Now().Add(time.Hour))
	expCert, expKey := good.issue(t, dir, "expired", false, time.Now().Add(-time.Hour))
	scfg, err := ServerConfig(srvCert, srvKey, caFile, tls.VerifyClientCertIfGiven, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, scfg)
	none, _ := ClientConfig(caFile, "", "", "127.0.0.1", nil)
	if err := dial(addr, none); err != nil {
		t.Fatalf("client without certificate refused: %v", err)
	}
	bad, _ := ClientConfig(caFile, expCert, expKey, "127.0.0.1", nil)
	if err := dial(addr, bad); err == nil {
		t.Fatal("expired client certificate accepted")
	}
}

func TestReloadWithoutRestart(t *testing.T) {
	CheckInterval = 0
	dir := t.TempDir()
	ca1, ca2 := newCA(t, "ca-1"), newCA(t, "ca-2")
	srvCert, srvKey := ca1.issue(t, dir, "server", true, time.Now().Add(time.Hour))
	scfg, err := ServerConfig(srvCert, srvKey, "", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, scfg)
	trust := func(c *ca) *tls.Config {
		f := filepath.Join(t.TempDir(), "ca.pem")
		write(t, f, c.pem)
		cfg, err := ClientConfig(f, "", "", "127.0.0.1", nil)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	if err := dial(addr, trust(ca1)); err != nil {
		t.Fatal(err)
	}
	// Rotate the server certificate to one from ca-2, in place.
	time.Sleep(10 * time.Millisecond) // distinct mtime
	ca2.issue(t, dir, "server", true, time.Now().Add(time.Hour))
	if err := dial(addr, trust(ca2)); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if err := dial(addr, trust(ca1)); err == nil {
		t.Fatal("old CA still accepted after rotation")
	}
	// A half-written file keeps the previous certificate in use.
	write(t, srvCert, []byte("-----BEGIN CERTIFICATE-----\ngarbage"))
	if err := dial(addr, trust(ca2)); err != nil {
		t.Fatalf("broken file took the listener down: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := ServerConfig("", "", "", 0, nil); err == nil {
		t.Fatal("server config without certificate")
	}
	if _, err := ClientConfig("", "cert.pem", "", "", nil); err == nil {
		t.Fatal("certificate without key accepted")
	}
	if _, err := ServerConfig("/nonexistent/cert.pem", "/nonexistent/key.pem", "", 0, nil); err == nil {
		t.Fatal("missing files accepted")
	}
}

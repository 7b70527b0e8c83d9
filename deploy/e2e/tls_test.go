package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func newTestCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	f := filepath.Join(dir, name+".pem")
	writePEM(t, f, "CERTIFICATE", der)
	return &testCA{c, key, f}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// leaf issues a server (127.0.0.1) or client certificate; returns cert and key paths.
func (c *testCA) leaf(t *testing.T, dir, name string, server bool, notAfter time.Time) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	cf, kf := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	writePEM(t, cf, "CERTIFICATE", der)
	writePEM(t, kf, "EC PRIVATE KEY", kb)
	return cf, kf
}

// TestTLSAndMutualTLS: the control plane serves REST and gRPC over TLS and
// requires a client certificate from its CA on the sync stream, with no
// sync token at all; proxies with the wrong CA, an expired certificate or
// no certificate are refused with a clear log line.
func TestTLSAndMutualTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := newTestCA(t, dir, "tollgate-ca")
	other := newTestCA(t, dir, "other-ca")
	srvCert, srvKey := ca.leaf(t, dir, "controlplane", true, time.Now().Add(time.Hour))
	cliCert, cliKey := ca.leaf(t, dir, "proxy", false, time.Now().Add(time.Hour))
	expCert, expKey := ca.leaf(t, dir, "expired-proxy", false, time.Now().Add(-time.Hour))
	strCert, strKey := other.leaf(t, dir, "stranger", false, time.Now().Add(time.Hour))

	up := NewUpstream(t)
	mk := RandomKey()
	httpAddr, grpcAddr := FreeAddr(t), FreeAddr(t)
	cp := Start(t, "controlplane", Binary(t, "controlplane"), []string{
		"--http-addr", httpAddr, "--grpc-addr", grpcAddr, "--data-dir", t.TempDir(),
		"--config", writeConfig(t, up.URL),
		"--tls-cert", srvCert, "--tls-key", srvKey, "--client-ca", ca.file,
	}, []string{"TOLLGATE_MASTER_KEY=" + mk, "TOLLGATE_SYNC_TOKEN="})

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get("https://" + httpAddr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) || cp.Exited() {
			t.Fatalf("control plane over TLS not healthy: %v\n%s", err, cp.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Plain HTTP is refused on the TLS port.
	if resp, err := http.Get("http://" + httpAddr + "/health"); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP served on the TLS port")
	}
	// Management over HTTPS without a client certificate.
	req, _ := http.NewRequest("POST", "https://"+httpAddr+"/key/generate", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer "+mk)
	resp, err := hc.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("key/generate over HTTPS: %v %v", err, resp)
	}
	resp.Body.Close()

	proxy := func(name string, args ...string) *DataPlane {
		addr := FreeAddr(t)
		a := append([]string{"--listen", addr, "--control-plane", grpcAddr, "--cache", filepath.Join(t.TempDir(), "c.db"), "--id", name}, args...)
		p := Start(t, name, Binary(t, "dataplane"), a, []string{"UPSTREAM_API_KEY=" + upstreamSecret, "TOLLGATE_SYNC_TOKEN="})
		dp := &DataPlane{Process: p, Addr: addr, ID: name}
		WaitHTTP(t, p, dp.URL()+"/health/liveliness", 200, 30*time.Second)
		return dp
	}
	good := proxy("good", "--tls-ca", ca.file, "--tls-cert", cliCert, "--tls-key", cliKey)
	WaitHTTP(t, good.Process, good.URL()+"/health/readiness", 200, 30*time.Second)

	wrongCA := proxy("wrong-ca", "--tls-ca", other.file, "--tls-cert", cliCert, "--tls-key", cliKey)
	expired := proxy("expired", "--tls-ca", ca.file, "--tls-cert", expCert, "--tls-key", expKey)
	stranger := proxy("stranger", "--tls-ca", ca.file, "--tls-cert", strCert, "--tls-key", strKey)
	noCert := proxy("no-cert", "--tls-ca", ca.file)
	time.Sleep(1500 * time.Millisecond)
	for _, p := range []*DataPlane{wrongCA, expired, stranger, noCert} {
		if r := Do(t, "GET", p.URL()+"/health/readiness", "", nil); r.Status != 503 {
			t.Errorf("proxy %s became ready: %d", p.ID, r.Status)
		}
	}
	out := cp.Output()
	for _, want := range []string{
		"TLS client certificate refused", // expired, stranger
		`expired-proxy`,                  // names the certificate
		"sync stream refused: no client certificate verified by --client-ca", // no certificate
	} {
		if !strings.Contains(out, want) {
			t.Errorf("control plane log lacks %q", want)
		}
	}
	if !strings.Contains(wrongCA.Output(), "certificate signed by unknown authority") {
		t.Errorf("wrong-CA proxy log does not say why:\n%s", wrongCA.Output())
	}
}

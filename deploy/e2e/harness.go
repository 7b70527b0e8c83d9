// Package e2e boots whole Tollgate deployments on loopback — real
// controlplane and dataplane processes, a real Postgres or the embedded store,
// and a fake LLM upstream — for end-to-end tests and benchmarks.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	buildMu  sync.Mutex
	binDir   string
	built    = map[string]error{}
	buildDir sync.Once
)

// RepoRoot finds the module root from this file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Binary builds ./<name> (controlplane or dataplane) once per test binary
// and returns its path.
func Binary(t testing.TB, name string) string {
	t.Helper()
	buildDir.Do(func() {
		var err error
		if binDir, err = os.MkdirTemp("", "tollgate-e2e-bin-"); err != nil {
			panic(err)
		}
	})
	buildMu.Lock()
	defer buildMu.Unlock()
	err, ok := built[name]
	if !ok {
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, name), "./"+name)
		cmd.Dir = RepoRoot()
		if out, cerr := cmd.CombinedOutput(); cerr != nil {
			err = fmt.Errorf("go build %s: %v\n%s", name, cerr, out)
		}
		built[name] = err
	}
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(binDir, name)
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago. Ports come from below the kernel's ephemeral range (32768+), so the
// outgoing connections of other tests cannot take them between FreeAddr and
// the process binding them; processes started with an address FreeAddr chose
// are restarted on a new one if another test took it anyway
// (see startRetrying).
func FreeAddr(t testing.TB) string {
	t.Helper()
	for range 200 {
		port := 10000 + int(nextPort.Add(1)%22000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// nextPort walks the port range from a random start, so parallel test
// binaries rarely try the same ports.
var nextPort = func() *atomic.Uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	v := &atomic.Uint32{}
	v.Store(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]))
	return v
}()

// errAddrInUse reports that a process exited because its listen address was
// taken.
var errAddrInUse = errors.New("address already in use")

// startRetrying starts a process through start (which picks fresh addresses
// when pick is true) and waits for url(status); when the process dies
// because another test took its port, it tries again with new addresses.
func startRetrying(t testing.TB, pick bool, start func() (*Process, []string)) *Process {
	t.Helper()
	for attempt := 0; ; attempt++ {
		p, waits := start()
		var err error
		for _, u := range waits {
			if err = waitHTTP(p, u, 200, 30*time.Second); err != nil {
				break
			}
		}
		if err == nil {
			return p
		}
		if pick && errors.Is(err, errAddrInUse) && attempt < 5 {
			t.Logf("%s: port taken, retrying on new addresses", p.Name)
			continue
		}
		t.Fatal(err)
	}
}

// RandomKey returns a fresh "sk-" key for use as a master key or sync token.
func RandomKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "sk-" + hex.EncodeToString(b[:])
}

// Process is a running binary whose output is kept for failure reports.
type Process struct {
	Name string
	Cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs bin with args and env; the process is killed at test cleanup and
// its output logged when the test failed.
func Start(t testing.TB, name, bin string, args []string, env []string) *Process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &Process{Name: name, Cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("---- %s output ----\n%s", name, p.Output())
		}
	})
	return p
}

// Output is everything the process printed so far.
func (p *Process) Output() string { return p.out.String() }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to exit and returns its error.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s did not exit within %s", p.Name, timeout)
	}
}

// Kill sends SIGKILL and waits.
func (p *Process) Kill() {
	if p.Exited() {
		return
	}
	_ = p.Cmd.Process.Kill()
	<-p.done
}

// Stop sends SIGTERM and waits up to 15 s, then kills.
func (p *Process) Stop() {
	if p.Exited() {
		return
	}
	_ = p.Cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.Kill()
	}
}

// ControlPlane is a running controlplane process.
type ControlPlane struct {
	*Process
	HTTPAddr, GRPCAddr string
	MasterKey          string
	SyncToken          string
	DataDir            string
	DatabaseURL        string
	Config             string
}

// CPOptions configure StartControlPlane; zero values get sensible defaults.
type CPOptions struct {
	DatabaseURL string // empty: embedded store in DataDir
	DataDir     string
	MasterKey   string
	SyncToken   string
	Config      string // path of a YAML config
	Env         []string
	// MasterKeyFromConfig: do not pass MasterKey to the process (the config
	// file supplies it); MasterKey is still what the test authenticates with.
	MasterKeyFromConfig bool
	HTTPAddr            string
	GRPCAddr            string
}

// StartControlPlane starts a control plane and waits until /health answers.
func StartControlPlane(t testing.TB, o CPOptions) *ControlPlane {
	t.Helper()
	bin := Binary(t, "controlplane")
	if o.DataDir == "" && o.DatabaseURL == "" {
		o.DataDir = t.TempDir()
	}
	if o.MasterKey == "" {
		o.MasterKey = RandomKey()
	}
	if o.SyncToken == "" {
		o.SyncToken = RandomKey()
	}
	pick := o.HTTPAddr == "" || o.GRPCAddr == ""
	fixedHTTP, fixedGRPC := o.HTTPAddr, o.GRPCAddr
	var cp *ControlPlane
	startRetrying(t, pick, func() (*Process, []string) {
		o.HTTPAddr, o.GRPCAddr = fixedHTTP, fixedGRPC
		if o.HTTPAddr == "" {
			o.HTTPAddr = FreeAddr(t)
		}
		if o.GRPCAddr == "" {
			o.GRPCAddr = FreeAddr(t)
		}
		cp = startControlPlane(t, bin, o)
		return cp.Process, []string{"http://" + o.HTTPAddr + "/health"}
	})
	return cp
}

func startControlPlane(t testing.TB, bin string, o CPOptions) *ControlPlane {
	t.Helper()
	args := []string{"--http-addr", o.HTTPAddr, "--grpc-addr", o.GRPCAddr, "--sync-token", o.SyncToken}
	if o.DatabaseURL != "" {
		args = append(args, "--database-url", o.DatabaseURL)
	} else {
		args = append(args, "--data-dir", o.DataDir)
	}
	if o.Config != "" {
		args = append(args, "--config", o.Config)
	}
	env := append([]string{"TOLLGATE_MASTER_KEY=" + o.MasterKey}, o.Env...)
	if o.MasterKeyFromConfig {
		env = append([]string{"TOLLGATE_MASTER_KEY="}, o.Env...)
	}
	p := Start(t, "controlplane", bin, args, env)
	return &ControlPlane{Process: p, HTTPAddr: o.HTTPAddr, GRPCAddr: o.GRPCAddr, MasterKey: o.MasterKey, SyncToken: o.SyncToken, DataDir: o.DataDir, DatabaseURL: o.DatabaseURL, Config: o.Config}
}

// Options returns options that restart the same control plane.
func (cp *ControlPlane) Options() CPOptions {
	return CPOptions{DatabaseURL: cp.DatabaseURL, DataDir: cp.DataDir, MasterKey: cp.MasterKey, SyncToken: cp.SyncToken, Config: cp.Config, HTTPAddr: cp.HTTPAddr, GRPCAddr: cp.GRPCAddr}
}

// URL is the control plane's REST base URL.
func (cp *ControlPlane) URL() string { return "http://" + cp.HTTPAddr }

// WaitHTTP polls url until it answers status, or fails the test.
func WaitHTTP(t testing.TB, p *Process, url string, status int, timeout time.Duration) {
	t.Helper()
	if err := waitHTTP(p, url, status, timeout); err != nil {
		t.Fatal(err)
	}
}

func waitHTTP(p *Process, url string, status int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p != nil && p.Exited() {
			out := p.Output()
			if strings.Contains(out, "address already in use") {
				return fmt.Errorf("%s exited: %w\n%s", p.Name, errAddrInUse, out)
			}
			return fmt.Errorf("%s exited: %v\n%s", p.Name, p.err, out)
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == status {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer %d within %s", url, status, timeout)
}

// Response is a decoded HTTP answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into a generic map (fails the test on error).
func (r Response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v: %s", err, r.Body)
	}
	return m
}

var client = &http.Client{Timeout: 30 * time.Second}

// Do sends a request with an optional bearer credential and JSON body (a
// string or []byte is sent as is, anything else is marshalled).
func Do(t testing.TB, method, url, bearer string, body any, headers ...string) Response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// cluster is a throwaway Postgres server owned by this test binary.
type cluster struct {
	dir  string
	cmd  *exec.Cmd
	done chan struct{} // closed when the postmaster exited
}

// startCluster initdb's a cluster in a temporary directory and starts it on
// a free loopback port, tuned for tests (no fsync). It returns the admin URL.
func startCluster(ctx context.Context) (*cluster, string, error) {
	bin, err := findBinDir()
	if err != nil {
		return nil, "", err
	}
	cred, uid, gid, err := runAs()
	if err != nil {
		return nil, "", err
	}
	dir, err := os.MkdirTemp("", "tollgate-pg-")
	if err != nil {
		return nil, "", err
	}
	if cred != nil {
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, "", err
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, "", fmt.Errorf("initdb: %v: %s", err, out)
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	logFile, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	c := &cluster{dir: dir, done: make(chan struct{})}
	c.cmd = exec.Command(filepath.Join(bin, "postgres"),
		"-D", data, "-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=300",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	c.cmd.Stdout, c.cmd.Stderr = logFile, logFile
	// Pdeathsig kills the server when this binary dies without calling
	// stop. The kernel sends it when the thread that forked exits, so the
	// fork happens on a thread locked for the lifetime of the server.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGINT}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the server
		defer logFile.Close()
		if err := c.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		c.cmd.Wait() //nolint:errcheck // exit status is in the log
		close(c.done)
	}()
	if err := <-started; err != nil {
		os.RemoveAll(dir)
		return nil, "", fmt.Errorf("postgres: %w", err)
	}
	u := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err := pingURL(ctx, u); err == nil {
			return c, u, nil
		} else if time.Now().After(deadline) {
			c.stop()
			return nil, "", fmt.Errorf("postgres did not start: %w", err)
		}
		select {
		case <-c.done:
			log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			os.RemoveAll(dir)
			return nil, "", fmt.Errorf("postgres exited: %s", log)
		case <-ctx.Done():
			c.stop()
			return nil, "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop shuts the server down (fast mode) and removes its files.
func (c *cluster) stop() {
	if c.cmd.Process != nil {
		c.cmd.Process.Signal(syscall.SIGINT) //nolint:errcheck // it may be gone already
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill() //nolint:errcheck
			<-c.done
		}
	}
	os.RemoveAll(c.dir)
}

// findBinDir finds initdb and postgres: the newest
// /usr/lib/postgresql/<version>/bin, else the directory of initdb on PATH.
func findBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if usable(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil && usable(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
		if usable(filepath.Dir(p)) {
			return filepath.Dir(p), nil
		}
	}
	return "", errors.New("no Postgres binaries (initdb, postgres) found")
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func usable(dir string) bool {
	for _, b := range []string{"initdb", "postgres"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// runAs returns the credential to run the server with: Postgres refuses to
// run as root, so root runs it as the "postgres" (or "nobody") user.
func runAs() (cred *syscall.Credential, uid, gid int, err error) {
	if os.Geteuid() != 0 {
		return nil, 0, 0, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 != nil || err2 != nil {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid, nil
	}
	return nil, 0, 0, errors.New("running as root and no unprivileged user (postgres, nobody) to run Postgres as")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func pingURL(ctx context.Context, u string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.Ping(ctx)
}

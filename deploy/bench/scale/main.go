// Command scale is the process driver of the snapshot-scale benchmark
// (deploy/bench/scale.sh builds the binaries, seeds the stores and runs it).
// It starts real controlplane and dataplane processes on loopback and
// measures:
//
//	(a) proxy 1, empty cache: process start → /health/readiness 200, which
//	    includes the control plane's first snapshot build (reported apart,
//	    from its log);
//	(b) proxy 2, empty cache, snapshot already built and cached on the
//	    control plane: start → ready;
//	(c) control plane killed; proxy 1 restarted: start → ready from its
//	    cache, and a seeded key answered 200 on GET /v1/models;
//	(d) RSS (VmRSS, VmHWM, anonymous/file) of every process, cache file
//	    sizes;
//	(e) a delta's cost: from POST /key/block returning to every proxy
//	    refusing the key (401), at N keys and again at a small key count on
//	    a second control plane.
//
// Keys are the seed tool's: plaintext <prefix><i>.
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type config struct {
	bin, work         string
	dataDir, dbURL    string
	smallDir, smallDB string
	n, smallN         int
	prefix            string
	blocks, first     int
	port              int
	readyTimeout      time.Duration
	idle              time.Duration
	pprof             bool
}

func main() {
	var c config
	flag.StringVar(&c.bin, "bin", "bin", "directory holding controlplane and dataplane")
	flag.StringVar(&c.work, "work", "", "directory for proxy caches and logs (required)")
	flag.StringVar(&c.dataDir, "data-dir", "", "seeded embedded store (control plane --data-dir)")
	flag.StringVar(&c.dbURL, "database-url", "", "seeded Postgres database (control plane --database-url)")
	flag.StringVar(&c.smallDir, "small-data-dir", "", "store seeded with few keys, for the delta comparison")
	flag.StringVar(&c.smallDB, "small-database-url", "", "Postgres database seeded with few keys")
	flag.IntVar(&c.n, "n", 1_000_000, "keys in the big store (for the report)")
	flag.IntVar(&c.smallN, "small-n", 1000, "keys in the small store (for the report)")
	flag.StringVar(&c.prefix, "prefix", "sk-seed-", "seeded keys' plaintext prefix")
	flag.IntVar(&c.blocks, "blocks", 100, "keys blocked per delta measurement")
	flag.IntVar(&c.first, "first", 1, "index of the first seeded key to block (the store must have them unblocked)")
	flag.IntVar(&c.port, "port", 18300, "first loopback port to use (uses 10)")
	flag.DurationVar(&c.readyTimeout, "ready-timeout", 120*time.Second, "give up waiting for readiness after")
	flag.DurationVar(&c.idle, "idle", 61*time.Second, "measure the control plane's idle CPU over this long (0: skip)")
	flag.BoolVar(&c.pprof, "pprof", false, "start every process with --pprof-addr (ports +7..+9)")
	flag.Parse()
	if c.work == "" || (c.dataDir == "") == (c.dbURL == "") {
		fmt.Fprintln(os.Stderr, "scale: need -work and exactly one of -data-dir, -database-url")
		os.Exit(2)
	}
	b := &bench{c: c, procs: map[string]*proc{}}
	err := b.run()
	b.stopAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

type proc struct {
	name     string
	cmd      *exec.Cmd
	log      string
	start    time.Time
	done     chan struct{}
	pressure string // while it got ready (proxies)
}

type bench struct {
	c        config
	mk, tok  string
	procs    map[string]*proc
	rows     [][2]string
	deltaBig []time.Duration
	deltaSm  []time.Duration
	hc       *http.Client
}

func (b *bench) addr(off int) string { return "127.0.0.1:" + strconv.Itoa(b.c.port+off) }

func (b *bench) row(name, value string) {
	b.rows = append(b.rows, [2]string{name, value})
	fmt.Printf("  %-58s %s\n", name, value)
}

func randHex(n int) string {
	p := make([]byte, n)
	_, _ = rand.Read(p)
	return hex.EncodeToString(p)
}

func (b *bench) run() error {
	c := b.c
	b.mk, b.tok = "sk-bench-"+randHex(12), "sk-sync-"+randHex(12)
	b.hc = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 10 * time.Second}
	if err := os.MkdirAll(c.work, 0o700); err != nil {
		return err
	}
	p1cache, p2cache := filepath.Join(c.work, "proxy1.db"), filepath.Join(c.work, "proxy2.db")
	for _, f := range []string{p1cache, p2cache} {
		_ = os.Remove(f)
	}

	fmt.Printf("== %d keys, control plane on %s\n", c.n, storeName(c.dataDir, c.dbURL))
	cp, err := b.startCP("cp", c.dataDir, c.dbURL)
	if err != nil {
		return err
	}
	b.row("control plane start → GET /health 200", dur(time.Since(cp.start)))

	// (a)
	p1, took, err := b.startProxy("proxy1", 1, p1cache)
	if err != nil {
		return err
	}
	b.row("(a) proxy 1, empty cache: start → ready", dur(took))
	b.row("    meanwhile", p1.pressure)
	if build, ok := logField(cp.log, `sync: snapshot built`, "took"); ok {
		b.row("    control plane snapshot build (its log)", build)
	}
	if sent, ok := logField(cp.log, `sync: snapshot sent.*proxy_id=proxy1`, "took"); ok {
		b.row("    control plane: proxy connected → snapshot sent", sent)
	}
	if ap, ok := logField(p1.log, `replica: snapshot installed`, "took"); ok {
		b.row("    proxy 1: first chunk → snapshot installed (its log)", ap)
	}
	b.rss("    RSS proxy 1 after snapshot", p1)

	// (b)
	p2, took, err := b.startProxy("proxy2", 2, p2cache)
	if err != nil {
		return err
	}
	b.row("(b) proxy 2, empty cache, snapshot cached on CP: start → ready", dur(took))
	b.row("    meanwhile", p2.pressure)
	if sent, ok := logField(cp.log, `sync: snapshot sent.*proxy_id=proxy2`, "took"); ok {
		b.row("    control plane: proxy connected → snapshot sent", sent)
	}
	if ap, ok := logField(p2.log, `replica: snapshot installed`, "took"); ok {
		b.row("    proxy 2: first chunk → snapshot installed (its log)", ap)
	}

	// (d)
	b.rss("(d) RSS proxy 1", p1)
	b.rss("(d) RSS proxy 2", p2)
	b.rss("(d) RSS control plane (snapshot cached)", cp)
	b.row("(d) proxy 1 cache file", size(p1cache))
	b.row("(d) proxy 2 cache file", size(p2cache))
	if c.dataDir != "" {
		b.row("(d) control plane store file (embedded)", size(filepath.Join(c.dataDir, "tollgate.db")))
	}

	// Background cost at N keys: the control plane's CPU while nothing
	// happens (its periodic jobs), and Postgres's.
	if b.c.idle > 0 {
		c0, p0 := procCPU(cp.cmd.Process.Pid), postgresCPU()
		time.Sleep(b.c.idle)
		row := fmt.Sprintf("%.0f%% of a core", float64(procCPU(cp.cmd.Process.Pid)-c0)/float64(b.c.idle)*100)
		if c.dbURL != "" {
			row += fmt.Sprintf(" (+ local postgres processes %.0f%%)", float64(postgresCPU()-p0)/float64(b.c.idle)*100)
		}
		b.row(fmt.Sprintf("(d) control plane CPU, idle, over %s", b.c.idle), row)
	}

	// (e) at N keys, while both proxies follow.
	if err := b.checkKey(c.first, 200, "proxy1", "proxy2"); err != nil {
		return err
	}
	b.deltaBig, err = b.blockKeys(c.first, c.blocks, "proxy1", "proxy2")
	if err != nil {
		return fmt.Errorf("deltas at %d keys: %w", c.n, err)
	}
	b.row(fmt.Sprintf("(e) block → refused on 2 proxies, %d keys, %d blocks", c.n, len(b.deltaBig)), pcts(b.deltaBig))
	b.rss("    RSS control plane after the deltas", cp)

	// (c)
	b.kill("cp", syscall.SIGKILL)
	b.kill("proxy1", syscall.SIGTERM)
	p1, took, err = b.startProxy("proxy1-restart", 1, p1cache)
	if err != nil {
		return err
	}
	b.row("(c) CP killed, proxy 1 restarted: start → ready from cache", dur(took))
	b.row("    meanwhile", p1.pressure)
	if ld, ok := logField(p1.log, `replica: loaded from cache`, "took"); ok {
		b.row("    proxy 1: cache load (its log)", ld)
	}
	if err := b.checkKey(c.first+c.blocks, 200, "proxy1-restart"); err != nil {
		return err
	}
	if err := b.checkKey(c.first, 401, "proxy1-restart"); err != nil {
		return err
	}
	b.row("    seeded key "+b.key(c.first+c.blocks)+" on GET /v1/models", "200 (and blocked "+b.key(c.first)+": 401)")
	b.rss("(d) RSS proxy 1 restarted from cache", p1)
	b.kill("proxy1-restart", syscall.SIGTERM)
	b.kill("proxy2", syscall.SIGTERM)

	// (e) at the small key count.
	if c.smallDir != "" || c.smallDB != "" {
		fmt.Printf("== %d keys, control plane on %s\n", c.smallN, storeName(c.smallDir, c.smallDB))
		if _, err := b.startCP("cp-small", c.smallDir, c.smallDB); err != nil {
			return err
		}
		for i, name := range []string{"proxy1-small", "proxy2-small"} {
			cache := filepath.Join(c.work, name+".db")
			_ = os.Remove(cache)
			if _, took, err = b.startProxy(name, i+1, cache); err != nil {
				return err
			}
			b.row(name+": start → ready", dur(took))
		}
		if err := b.checkKey(c.first, 200, "proxy1-small", "proxy2-small"); err != nil {
			return err
		}
		b.deltaSm, err = b.blockKeys(c.first, c.blocks, "proxy1-small", "proxy2-small")
		if err != nil {
			return fmt.Errorf("deltas at %d keys: %w", c.smallN, err)
		}
		b.row(fmt.Sprintf("(e) block → refused on 2 proxies, %d keys, %d blocks", c.smallN, len(b.deltaSm)), pcts(b.deltaSm))
		b.rss("    RSS control plane, small store", b.procs["cp-small"])
	}

	fmt.Println()
	fmt.Println("== summary")
	w := 0
	for _, r := range b.rows {
		w = max(w, len(r[0]))
	}
	for _, r := range b.rows {
		fmt.Printf("| %-*s | %s |\n", w, r[0], r[1])
	}
	return nil
}

func storeName(dir, url string) string {
	if url != "" {
		return "Postgres"
	}
	return "embedded store " + dir
}

// start runs a process with its output in <work>/<name>.log.
func (b *bench) start(name string, args ...string) (*proc, error) {
	logPath := filepath.Join(b.c.work, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "TOLLGATE_MASTER_KEY="+b.mk)
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	p.start = time.Now()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	b.procs[name] = p
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

func (b *bench) startCP(name, dir, url string) (*proc, error) {
	args := []string{filepath.Join(b.c.bin, "controlplane"), "--http-addr", b.addr(0), "--grpc-addr", b.addr(1),
		"--sync-token", b.tok, "--log-level", "info"}
	if url != "" {
		args = append(args, "--database-url", url)
	} else {
		args = append(args, "--data-dir", dir)
	}
	if b.c.pprof {
		args = append(args, "--pprof-addr", b.addr(7))
	}
	p, err := b.start(name, args...)
	if err != nil {
		return nil, err
	}
	if err := b.waitHTTP(p, "http://"+b.addr(0)+"/health", 60*time.Second); err != nil {
		return nil, fmt.Errorf("%s: %w (log %s)", name, err, p.log)
	}
	return p, nil
}

// stalls reads the kernel's pressure totals (microseconds during which some
// task waited for a CPU, and for I/O); ok is false without PSI.
func stalls() (cpu, io int64, ok bool) {
	read := func(res string) (int64, bool) {
		raw, err := os.ReadFile("/proc/pressure/" + res)
		if err != nil {
			return 0, false
		}
		line, _, _ := strings.Cut(string(raw), "\n") // "some avg10=... total=N"
		_, tot, found := strings.Cut(line, "total=")
		v, err := strconv.ParseInt(strings.TrimSpace(tot), 10, 64)
		return v, found && err == nil
	}
	c, ok1 := read("cpu")
	i, ok2 := read("io")
	return c, i, ok1 && ok2
}

// pressure describes the stalls since (cpu0, io0) over d: how much of the
// time some task on the machine (ours or not) waited for a CPU or for I/O.
// It tells a noisy measurement from a clean one on a shared machine.
func pressure(cpu0, io0 int64, d time.Duration) string {
	cpu1, io1, ok := stalls()
	if !ok || d <= 0 {
		return "unavailable"
	}
	pct := func(us int64) float64 { return float64(us) / float64(d.Microseconds()) * 100 }
	return fmt.Sprintf("machine: some task waiting for CPU %.0f%% of the time, for I/O %.0f%%", pct(cpu1-cpu0), pct(io1-io0))
}

// startProxy starts proxy slot i (1 or 2) and waits for readiness; took is
// from just before exec to the first 200.
func (b *bench) startProxy(name string, i int, cache string) (*proc, time.Duration, error) {
	args := []string{filepath.Join(b.c.bin, "dataplane"), "--listen", b.addr(1 + i), "--control-plane", b.addr(1),
		"--sync-token", b.tok, "--cache", cache, "--id", name, "--log-level", "info"}
	if b.c.pprof {
		args = append(args, "--pprof-addr", b.addr(7+i))
	}
	cpu0, io0, _ := stalls()
	cp0 := b.cpCPU()
	p, err := b.start(name, args...)
	if err != nil {
		return nil, 0, err
	}
	if err := b.waitHTTP(p, b.proxyURL(name)+"/health/readiness", b.c.readyTimeout); err != nil {
		return nil, 0, fmt.Errorf("%s: %w (log %s)", name, err, p.log)
	}
	took := time.Since(p.start)
	p.pressure = fmt.Sprintf("CPU used: proxy %s, control plane %s; %s", dur(procCPU(p.cmd.Process.Pid)), dur(b.cpCPU()-cp0), pressure(cpu0, io0, took))
	return p, took, nil
}

// cpCPU is the CPU time of the running control plane (0 if none).
func (b *bench) cpCPU() time.Duration {
	for _, name := range []string{"cp", "cp-small"} {
		if p, ok := b.procs[name]; ok {
			return procCPU(p.cmd.Process.Pid)
		}
	}
	return 0
}

func (b *bench) proxyURL(name string) string {
	p := b.procs[name]
	for i, a := range p.cmd.Args {
		if a == "--listen" {
			return "http://" + p.cmd.Args[i+1]
		}
	}
	return ""
}

func (b *bench) waitHTTP(p *proc, url string, timeout time.Duration) error {
	cl := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("exited: %v", p.cmd.ProcessState)
		default:
		}
		resp, err := cl.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s not 200 after %s", url, timeout)
}

func (b *bench) kill(name string, sig syscall.Signal) {
	p, ok := b.procs[name]
	if !ok {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	delete(b.procs, name)
}

func (b *bench) stopAll() {
	for name := range b.procs {
		b.kill(name, syscall.SIGTERM)
	}
}

// rss reports a process's memory from /proc.
func (b *bench) rss(label string, p *proc) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/status")
	if err != nil {
		b.row(label, "unavailable: "+err.Error())
		return
	}
	f := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			f[k] = strings.TrimSpace(v)
		}
	}
	mb := func(k string) string {
		v, _ := strconv.ParseFloat(strings.TrimSuffix(f[k], " kB"), 64)
		return fmt.Sprintf("%.0f MB", v/1024)
	}
	b.row(label, fmt.Sprintf("VmRSS %s, VmHWM %s (anon %s, file %s)", mb("VmRSS"), mb("VmHWM"), mb("RssAnon"), mb("RssFile")))
}

// procCPU is a process's user+system CPU time (clock ticks of 10 ms).
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+k) * 10 * time.Millisecond
}

// postgresCPU sums procCPU over the local processes named postgres.
func postgresCPU() time.Duration {
	ents, _ := os.ReadDir("/proc")
	var total time.Duration
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile("/proc/" + e.Name() + "/comm"); err == nil && strings.TrimSpace(string(comm)) == "postgres" {
			total += procCPU(pid)
		}
	}
	return total
}

func size(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "unavailable: " + err.Error()
	}
	return fmt.Sprintf("%.1f MB", float64(st.Size())/1e6)
}

func dur(d time.Duration) string { return d.Round(time.Millisecond).String() }

func pcts(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(f float64) string {
		return s[min(len(s)-1, int(f*float64(len(s))))].Round(10 * time.Microsecond).String()
	}
	return fmt.Sprintf("p50 %s p90 %s p99 %s max %s", q(0.5), q(0.9), q(0.99), s[len(s)-1].Round(10*time.Microsecond))
}

// logField finds the last line of a log matching pattern and returns the
// value of key=value on it.
func logField(path, pattern, key string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	re := regexp.MustCompile(pattern)
	kv := regexp.MustCompile(`\b` + regexp.QuoteMeta(key) + `=("[^"]*"|\S+)`)
	var val string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); re.MatchString(line) {
			if m := kv.FindStringSubmatch(line); m != nil {
				val = strings.Trim(m[1], `"`)
				if d, err := time.ParseDuration(val); err == nil {
					val = dur(d)
				}
			}
		}
	}
	return val, val != ""
}

func (b *bench) do(method, url, bearer string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out, nil
}

func (b *bench) key(i int) string { return b.c.prefix + strconv.Itoa(i) }

// checkKey requires GET /v1/models with seeded key i to answer want on
// every named proxy.
func (b *bench) checkKey(i, want int, proxies ...string) error {
	for _, p := range proxies {
		st, body, err := b.do("GET", b.proxyURL(p)+"/v1/models", b.key(i), nil)
		if err != nil {
			return err
		}
		if st != want {
			return fmt.Errorf("%s: GET /v1/models with seeded key %d: %d %s, want %d", p, i, st, body, want)
		}
	}
	return nil
}

// blockKeys blocks seeded keys first..first+n-1 one at a time and returns,
// for each, the time from the REST call returning to the last proxy
// answering 401.
func (b *bench) blockKeys(first, n int, proxies ...string) ([]time.Duration, error) {
	cp := "http://" + b.addr(0)
	var out []time.Duration
	for i := first; i < first+n; i++ {
		st, body, err := b.do("POST", cp+"/key/block", b.mk, map[string]any{"key": b.key(i)})
		if err != nil {
			return nil, err
		}
		if st != 200 {
			return nil, fmt.Errorf("POST /key/block %s: %d %s", b.key(i), st, body)
		}
		start := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var worst time.Duration
		var failed error
		for _, p := range proxies {
			wg.Add(1)
			go func(url string) {
				defer wg.Done()
				for {
					st, _, err := b.do("GET", url+"/v1/models", b.key(i), nil)
					if err == nil && st == 401 {
						mu.Lock()
						worst = max(worst, time.Since(start))
						mu.Unlock()
						return
					}
					if time.Since(start) > 10*time.Second {
						mu.Lock()
						failed = fmt.Errorf("%s still accepts key %d 10s after the block", url, i)
						mu.Unlock()
						return
					}
					time.Sleep(200 * time.Microsecond)
				}
			}(b.proxyURL(p))
		}
		wg.Wait()
		if failed != nil {
			return nil, failed
		}
		out = append(out, worst)
	}
	return out, nil
}

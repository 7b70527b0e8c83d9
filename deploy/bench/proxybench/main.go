// Command proxybench is the driver of the side-by-side proxy benchmark
// (deploy/bench/proxy.sh, issue 7). It drives real processes only:
//
//   - a mock OpenAI-compatible upstream (bin/mockupstream, its own process);
//   - a control plane on its embedded store, seeded with -keys keys by
//     bin/seed (controlplane/internal/cmd/seed) before it starts;
//   - one Tollgate proxy (bin/dataplane, with --pprof-addr);
//   - a bare httputil.ReverseProxy (bin/bareproxy) with Tollgate's transport.
//
// Two keys are created over REST: a plain one, and one with max_budget,
// rpm/tpm limits (high enough never to refuse) and enforced params (the
// request bodies carry them). Load comes from vegeta (as a library) over
// keep-alive connections. For each mode (JSON, SSE stream) and round, the
// four targets (direct to the upstream, bare proxy, Tollgate plain key,
// Tollgate limited key) are driven one after the other, in an order rotated
// every round:
//
//   - a throughput phase: -workers workers as fast as they go for -duration;
//     CPU of the proxy process (utime+stime from /proc/<pid>/stat) before and
//     after, divided by the requests;
//   - a latency phase: a constant -rate for -lat-duration, not saturating the
//     machine, for the latency a proxy adds.
//
// Then CPU profiles of the Tollgate proxy are taken under load (see
// -profile-out). Results go to stdout as markdown.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

type config struct {
	bin, work          string
	keys               int
	port               int
	rounds             int
	workers            int
	duration           time.Duration
	rate               int
	rates              []int
	latDuration        time.Duration
	latRequests        int
	interleave         bool
	warmup             time.Duration
	delay              time.Duration
	modes              string
	profile            time.Duration
	profileOut         string
	upstreamCredential string
	proxies            int
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
}

type bench struct {
	c      config
	procs  []*proc
	mk     string
	tok    string
	client *http.Client
}

type target struct {
	name     string   // short name in the tables
	url      string   // the first of urls
	urls     []string // load goes round robin over these (several proxies)
	bearer   string
	cpuProcs []*proc // the proxies whose CPU is charged (none: direct)
}

// sample is one phase of one target in one round.
type sample struct {
	target, mode, phase string
	round, rate         int
	m                   vegeta.Metrics
	proxyCPU, upCPU     time.Duration // settled (see measure)
	loadCPU             time.Duration // the proxy's, during the load only
	cpCPU               time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.bin, "bin", "bin", "directory with controlplane, dataplane, seed, mockupstream, bareproxy")
	flag.StringVar(&c.work, "work", "", "work directory (stores, caches, logs); required")
	flag.IntVar(&c.keys, "keys", 100_000, "keys seeded into the control plane's store")
	flag.IntVar(&c.port, "port", 18400, "first of 6 consecutive loopback ports (+2 per extra proxy)")
	flag.IntVar(&c.proxies, "proxies", 1, "Tollgate proxies the Tollgate targets spread their load over (1 or 3); CPU per request is the sum of theirs")
	flag.IntVar(&c.rounds, "rounds", 5, "rounds per target and mode (the tables show the median round)")
	flag.IntVar(&c.workers, "workers", 16, "concurrent workers (keep-alive connections) in the throughput phase")
	flag.DurationVar(&c.duration, "duration", 4*time.Second, "throughput phase per target and round")
	flag.IntVar(&c.rate, "rate", 200, "requests/s of the constant-rate profile")
	rates := flag.String("rates", "50,200,500", "constant rates (requests/s) of the rate phases, comma-separated: open loop (requests leave on a fixed schedule, each independent of the answers)")
	flag.DurationVar(&c.latDuration, "lat-duration", 4*time.Second, "rate phase per target, rate and round (0: none); stretched to -lat-requests")
	flag.IntVar(&c.latRequests, "lat-requests", 400, "fewest requests in a rate phase (a low rate runs longer)")
	flag.BoolVar(&c.interleave, "interleave", true, "per round, also a phase at -rate per Tollgate target with it and the bare proxy loaded at once, their schedules interleaved (latency only: the added p50 with both meeting the same machine)")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "unrecorded load per target before the rounds")
	flag.DurationVar(&c.delay, "delay", 0, "the mock upstream's fixed delay")
	flag.StringVar(&c.modes, "modes", "json,stream", "modes to run: json, stream")
	flag.DurationVar(&c.profile, "profile", 6*time.Second, "CPU profile of the Tollgate proxy under load (0: none)")
	flag.StringVar(&c.profileOut, "profile-out", "", "CPU profiles go to <this>.pprof (limited key, JSON, saturated), <this>-stream.pprof (plain key, SSE, saturated), <this>-rate.pprof (limited key, JSON, constant -rate) (default <work>/dataplane)")
	flag.Parse()
	for _, f := range strings.Split(*rates, ",") {
		if r, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && r > 0 {
			c.rates = append(c.rates, r)
		}
	}
	if c.work == "" {
		fmt.Fprintln(os.Stderr, "proxybench: -work is required")
		os.Exit(2)
	}
	if c.profileOut == "" {
		c.profileOut = filepath.Join(c.work, "dataplane")
	}
	c.upstreamCredential = "sk-mock-upstream"
	b := &bench{c: c, mk: "sk-bench-" + randHex(12), tok: "sk-sync-" + randHex(12),
		client: &http.Client{Timeout: 10 * time.Second}}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "proxybench: %v, stopping\n", s)
		b.stopAll()
		os.Exit(1)
	}()
	err := b.run()
	b.stopAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxybench:", err)
		os.Exit(1)
	}
}

func randHex(n int) string {
	p := make([]byte, n)
	rand.Read(p)
	return hex.EncodeToString(p)
}

func (b *bench) addr(off int) string { return "127.0.0.1:" + strconv.Itoa(b.c.port+off) }

func (b *bench) run() error {
	c := b.c
	upstream, cpHTTP, cpGRPC, dpAddr, pprofAddr, bareAddr := b.addr(0), b.addr(1), b.addr(2), b.addr(3), b.addr(4), b.addr(5)
	store := filepath.Join(c.work, "store")

	t0 := time.Now()
	seed := exec.Command(filepath.Join(c.bin, "seed"), "--data-dir", store, "-n", strconv.Itoa(c.keys),
		"-api-base", "http://"+upstream+"/v1")
	seed.Stdout, seed.Stderr = io.Discard, os.Stderr
	if err := seed.Run(); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	fmt.Printf("seeded %d keys (and 1 model, gpt-4o-mini -> http://%s/v1) in %s\n", c.keys, upstream, time.Since(t0).Round(time.Millisecond))

	mock, err := b.start("mockupstream", nil, "-listen", upstream, "-delay", c.delay.String())
	if err != nil {
		return err
	}
	cp, err := b.start("controlplane", nil, "--data-dir", store, "--http-addr", cpHTTP, "--grpc-addr", cpGRPC,
		"--master-key", b.mk, "--sync-token", b.tok, "--log-level", "warn")
	if err != nil {
		return err
	}
	bare, err := b.start("bareproxy", nil, "-listen", bareAddr, "-upstream", "http://"+upstream)
	if err != nil {
		return err
	}
	if err := b.waitHTTP(mock, "http://"+upstream+"/health", 10*time.Second); err != nil {
		return err
	}
	if err := b.waitHTTP(cp, "http://"+cpHTTP+"/health", 60*time.Second); err != nil {
		return err
	}
	if err := b.waitHTTP(bare, "http://"+bareAddr+"/healthz", 10*time.Second); err != nil {
		return err
	}
	t1 := time.Now()
	dp, err := b.start("dataplane", []string{"OPENAI_API_KEY=" + c.upstreamCredential},
		"--listen", dpAddr, "--control-plane", cpGRPC, "--sync-token", b.tok,
		"--cache", filepath.Join(c.work, "proxy.db"), "--id", "bench-1", "--pprof-addr", pprofAddr, "--log-level", "warn")
	if err != nil {
		return err
	}
	if err := b.waitHTTP(dp, "http://"+dpAddr+"/health/readiness", 60*time.Second); err != nil {
		return err
	}
	fmt.Printf("proxy ready with the %d-key snapshot in %s\n", c.keys, time.Since(t1).Round(time.Millisecond))
	dps, dpURLs := []*proc{dp}, []string{"http://" + dpAddr}
	for i := 1; i < c.proxies; i++ {
		addr := b.addr(6 + 2*(i-1))
		p, err := b.start(fmt.Sprintf("dataplane-%d", i+1), []string{"OPENAI_API_KEY=" + c.upstreamCredential},
			"--listen", addr, "--control-plane", cpGRPC, "--sync-token", b.tok,
			"--cache", filepath.Join(c.work, fmt.Sprintf("proxy-%d.db", i+1)), "--id", fmt.Sprintf("bench-%d", i+1),
			"--pprof-addr", b.addr(7+2*(i-1)), "--log-level", "warn")
		if err != nil {
			return err
		}
		if err := b.waitHTTP(p, "http://"+addr+"/health/readiness", 60*time.Second); err != nil {
			return err
		}
		dps, dpURLs = append(dps, p), append(dpURLs, "http://"+addr)
	}
	if c.proxies > 1 {
		fmt.Printf("%d proxies ready; the Tollgate targets go round robin over them\n", len(dps))
	}

	plain, err := b.generate(map[string]any{"key_alias": "bench-plain"})
	if err != nil {
		return err
	}
	limited, err := b.generate(map[string]any{
		"key_alias":       "bench-limits",
		"max_budget":      1_000_000.0,
		"rpm_limit":       1_000_000_000,
		"tpm_limit":       2_000_000_000,
		"enforced_params": []string{"user", "metadata.generation_name"},
	})
	if err != nil {
		return err
	}
	fmt.Println(`keys: plain {}; limited {"max_budget":1000000,"rpm_limit":1e9,"tpm_limit":2e9,"enforced_params":["user","metadata.generation_name"]}`)

	bodies := map[string][]byte{
		"json":   []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":64,"user":"bench-user","metadata":{"generation_name":"bench"}}`),
		"stream": []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":64,"user":"bench-user","metadata":{"generation_name":"bench"},"stream":true,"stream_options":{"include_usage":true}}`),
	}
	path := "/v1/chat/completions"
	targets := []target{
		{name: "direct", url: "http://" + upstream + path, bearer: c.upstreamCredential},
		{name: "bare", url: "http://" + bareAddr + path, bearer: c.upstreamCredential, cpuProcs: []*proc{bare}},
		{name: "tollgate-plain", url: dpURLs[0] + path, urls: withPath(dpURLs, path), bearer: plain, cpuProcs: dps},
		{name: "tollgate-limits", url: dpURLs[0] + path, urls: withPath(dpURLs, path), bearer: limited, cpuProcs: dps},
	}

	// The proxy learns the new keys over its sync stream: wait for them.
	deadline := time.Now().Add(30 * time.Second)
	for _, t := range targets {
		for _, u := range append([]string{t.url}, t.urls...) {
			for {
				code, body, err := b.do(u, t.bearer, bodies["json"])
				if err == nil && code == 200 {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("%s never answered 200: %d %s %v", t.name, code, body, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	// The limited key's enforced params are live: a body without them is refused.
	code, _, err := b.do(targets[3].url, limited, []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		return err
	}
	fmt.Printf("check: limited key without the enforced params -> HTTP %d (want 400)\n", code)

	modes := strings.Split(c.modes, ",")
	var samples []sample
	for _, mode := range modes {
		body, ok := bodies[mode]
		if !ok {
			return fmt.Errorf("unknown mode %q", mode)
		}
		if c.warmup > 0 {
			for _, t := range targets {
				b.attack(t, body, vegeta.Rate{}, c.warmup)
			}
		}
		for r := 0; r < c.rounds; r++ {
			for i := range targets {
				t := targets[(i+r)%len(targets)]
				s := b.measure(t, body, vegeta.Rate{}, c.duration, mock, cp)
				s.mode, s.phase, s.round = mode, "throughput", r+1
				samples = append(samples, s)
				printRound(s)
			}
			if c.latDuration > 0 {
				for _, rate := range c.rates {
					d := max(c.latDuration, time.Duration(c.latRequests)*time.Second/time.Duration(rate))
					for i := range targets {
						t := targets[(i+r)%len(targets)]
						s := b.measure(t, body, vegeta.Rate{Freq: rate, Per: time.Second}, d, mock, cp)
						s.mode, s.phase, s.round, s.rate = mode, "latency", r+1, rate
						samples = append(samples, s)
						printRound(s)
					}
				}
				if c.interleave {
					d := max(c.latDuration, time.Duration(c.latRequests)*time.Second/time.Duration(c.rate))
					for _, tg := range targets[2:] {
						for _, s := range b.interleaved([]target{targets[1], tg}, r, body, c.rate, d) {
							s.mode, s.phase, s.round, s.rate = mode, "interleaved "+tg.name, r+1, c.rate
							samples = append(samples, s)
							printRound(s)
						}
					}
				}
			}
		}
	}

	report(samples, targets, modes, c)
	for _, p := range []*proc{bare, dp, cp, mock} {
		logTail(p)
	}

	if c.profile > 0 {
		// Saturated, JSON and (where the goal is hardest) SSE; then at the
		// constant rate, where the spend pipeline's per-request cost shows.
		profiles := []struct {
			t    target
			mode string
			rate vegeta.Rate
			out  string
		}{
			{targets[3], "json", vegeta.Rate{}, c.profileOut + ".pprof"},
			{targets[2], "stream", vegeta.Rate{}, c.profileOut + "-stream.pprof"},
			{targets[3], "json", vegeta.Rate{Freq: c.rate, Per: time.Second}, c.profileOut + "-rate.pprof"},
		}
		for _, p := range profiles {
			if _, ok := bodies[p.mode]; !ok || !strings.Contains(c.modes, p.mode) {
				continue
			}
			if err := b.profile(p.t, p.mode, bodies[p.mode], p.rate, "http://"+pprofAddr, p.out); err != nil {
				fmt.Println("profile:", err)
			}
		}
	}
	return nil
}

// measure runs one phase against one target and charges the CPU that the
// target's proxy, the mock upstream and the control plane used meanwhile.
//
// Work a request causes after its response (the spend record's outbox commit
// and shipping, the control plane applying it and the resulting delta coming
// back to the proxy) is charged too: after the load stops, the sample waits
// until the proxy and the control plane are idle (under one tick per 250 ms,
// at most 10 s) and reports the CPU both at the end of the load and settled.
func (b *bench) measure(t target, body []byte, rate vegeta.Rate, d time.Duration, mock, cp *proc) sample {
	p0, u0, c0 := cpuAll(t.cpuProcs), cpuOf(mock), cpuOf(cp)
	m := b.attack(t, body, rate, d)
	p1 := cpuAll(t.cpuProcs)
	settle(append([]*proc{cp}, t.cpuProcs...)...)
	p2, u2, c2 := cpuAll(t.cpuProcs), cpuOf(mock), cpuOf(cp)
	return sample{target: t.name, m: m, loadCPU: p1 - p0, proxyCPU: p2 - p0, upCPU: u2 - u0, cpCPU: c2 - c0}
}

// interleaved loads every target at once, each at rate on a fixed
// schedule of its own, the schedules offset by a fraction of a period so
// that the requests alternate between the targets: each target meets the
// same machine (noise, frequency, neighbours) as the others, which a phase
// per target cannot give. Latency only. It is run with two targets, the
// bare proxy and one Tollgate target: with both Tollgate keys in one
// phase, the key whose requests came 1/3 period after the other's found
// its process just awake, and was 100 µs faster than the other in every
// round (a p50 difference between two keys of one process is not
// Tollgate's). Which target goes first in the period rotates with the
// round.
func (b *bench) interleaved(ts []target, round int, body []byte, rate int, d time.Duration) []sample {
	out := make([]sample, len(ts))
	period := time.Second / time.Duration(rate)
	var wg sync.WaitGroup
	for i, t := range ts {
		wg.Go(func() {
			time.Sleep(time.Duration((i+round)%len(ts)) * period / time.Duration(len(ts)))
			out[i] = sample{target: t.name, m: b.attack(t, body, vegeta.Rate{Freq: rate, Per: time.Second}, d)}
		})
	}
	wg.Wait()
	return out
}

// settle waits until the processes use less than one clock tick in 250 ms.
func settle(ps ...*proc) {
	sum := func() (d time.Duration) {
		for _, p := range ps {
			d += cpuOf(p)
		}
		return d
	}
	end := time.Now().Add(10 * time.Second)
	prev := sum()
	for time.Now().Before(end) {
		time.Sleep(250 * time.Millisecond)
		cur := sum()
		if cur-prev < 10*time.Millisecond {
			return
		}
		prev = cur
	}
}

func (b *bench) attack(t target, body []byte, rate vegeta.Rate, d time.Duration) vegeta.Metrics {
	hdr := http.Header{"Authorization": {"Bearer " + t.bearer}, "Content-Type": {"application/json"}}
	var tgts []vegeta.Target
	for _, u := range append([]string{t.url}, t.urls...)[min(len(t.urls), 1):] {
		tgts = append(tgts, vegeta.Target{Method: "POST", URL: u, Body: body, Header: hdr})
	}
	tr := vegeta.NewStaticTargeter(tgts...)
	opts := []func(*vegeta.Attacker){
		vegeta.KeepAlive(true), vegeta.HTTP2(false), vegeta.Timeout(10 * time.Second),
		vegeta.Connections(b.c.workers * 2), vegeta.Workers(uint64(b.c.workers)),
	}
	if rate.Freq == 0 {
		opts = append(opts, vegeta.MaxWorkers(uint64(b.c.workers)))
	}
	a := vegeta.NewAttacker(opts...)
	var m vegeta.Metrics
	for res := range a.Attack(tr, rate, d, t.name) {
		m.Add(res)
	}
	m.Close()
	return m
}

// cpuAll sums cpuOf over ps.
func cpuAll(ps []*proc) (d time.Duration) {
	for _, p := range ps {
		d += cpuOf(p)
	}
	return d
}

func withPath(bases []string, path string) []string {
	out := make([]string, len(bases))
	for i, b := range bases {
		out[i] = b + path
	}
	return out
}

// cpuOf returns the CPU time of a process: the sum of its threads' time on
// a CPU from /proc/<pid>/task/*/schedstat (nanoseconds; Go's threads do not
// exit), else utime+stime from /proc/<pid>/stat (10 ms ticks).
func cpuOf(p *proc) time.Duration {
	if p == nil {
		return 0
	}
	if tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.cmd.Process.Pid)); err == nil && len(tasks) > 0 {
		var sum int64
		ok := true
		for _, t := range tasks {
			raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", p.cmd.Process.Pid, t.Name()))
			if err != nil {
				continue // exited meanwhile
			}
			f := strings.Fields(string(raw))
			v, err := strconv.ParseInt(f[0], 10, 64)
			if len(f) == 0 || err != nil {
				ok = false
				break
			}
			sum += v
		}
		if ok {
			return time.Duration(sum)
		}
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line, in clock ticks (USER_HZ = 100).
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func usPer(d time.Duration, n uint64) float64 {
	if n == 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(n)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/1e6) }

func printRound(s sample) {
	phase := s.phase
	if s.rate > 0 {
		phase = fmt.Sprintf("%d/s", s.rate)
	}
	if strings.HasPrefix(s.phase, "interleaved") {
		phase = fmt.Sprintf("%d/s ilv", s.rate) // CPU columns: not measured
	}
	fmt.Printf("round %d %-6s %-10s %-16s req=%-6d ok=%5.1f%% rps=%7.0f p50=%sms p90=%sms p99=%sms proxy=%6.1fµs/req (load %6.1f) upstream=%6.1fµs/req cp=%6.1fµs/req codes=%v%s\n",
		s.round, s.mode, phase, s.target, s.m.Requests, s.m.Success*100, s.m.Throughput,
		ms(s.m.Latencies.P50), ms(s.m.Latencies.P90), ms(s.m.Latencies.P99),
		usPer(s.proxyCPU, s.m.Requests), usPer(s.loadCPU, s.m.Requests), usPer(s.upCPU, s.m.Requests), usPer(s.cpCPU, s.m.Requests),
		s.m.StatusCodes, errs(s.m.Errors))
}

func errs(e []string) string {
	if len(e) == 0 {
		return ""
	}
	if len(e) > 3 {
		e = e[:3]
	}
	return " errors=" + strings.Join(e, "; ")
}

type agg struct {
	req         uint64
	ok          float64
	rps         []float64
	proxy, up   time.Duration
	load        time.Duration
	cp          time.Duration
	perRoundCPU []float64
	p50s        []time.Duration
	p90s, p99s  []time.Duration
	rounds      []int
}

func median[T float64 | time.Duration](v []T) T {
	if len(v) == 0 {
		return 0
	}
	s := append([]T(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func aggregate(samples []sample, mode, phase string, rate int) map[string]*agg {
	out := map[string]*agg{}
	for _, s := range samples {
		if s.mode != mode || s.phase != phase || s.rate != rate {
			continue
		}
		a := out[s.target]
		if a == nil {
			a = &agg{}
			out[s.target] = a
		}
		a.req += s.m.Requests
		a.ok += s.m.Success * float64(s.m.Requests)
		a.rps = append(a.rps, s.m.Throughput)
		a.proxy += s.proxyCPU
		a.load += s.loadCPU
		a.up += s.upCPU
		a.cp += s.cpCPU
		a.perRoundCPU = append(a.perRoundCPU, usPer(s.proxyCPU, s.m.Requests))
		a.p50s = append(a.p50s, s.m.Latencies.P50)
		a.p90s = append(a.p90s, s.m.Latencies.P90)
		a.p99s = append(a.p99s, s.m.Latencies.P99)
		a.rounds = append(a.rounds, s.round)
	}
	return out
}

// added is, round by round, how much a's p50 exceeds bare's in the same
// round: its median and its worst round.
func added(a, bare *agg) (med, worst time.Duration) {
	var d []time.Duration
	for i, r := range a.rounds {
		for j, rb := range bare.rounds {
			if rb == r {
				d = append(d, a.p50s[i]-bare.p50s[j])
			}
		}
	}
	if len(d) == 0 {
		return 0, 0
	}
	worst = d[0]
	for _, x := range d {
		worst = max(worst, x)
	}
	return median(d), worst
}

func report(samples []sample, targets []target, modes []string, c config) {
	fmt.Printf("\n## Results: %d keys, %d rounds, mock upstream delay %s\n", c.keys, c.rounds, c.delay)
	fmt.Println("\nLatencies and throughput: median of the rounds. CPU: the process's time on a CPU (sum of its threads'")
	fmt.Println("/proc/<pid>/task/*/schedstat) summed over the rounds ÷ requests, including the work left after the load (spend")
	fmt.Println("shipping and its deltas) until idle; \"during load\" stops at the last response. × bare: CPU/request over the bare proxy's.")
	cpuCell := func(t target, a, bare *agg) (cpu, ratio string) {
		cpu, ratio = "—", "—"
		if len(t.cpuProcs) == 0 {
			return
		}
		v := usPer(a.proxy, a.req)
		cpu = fmt.Sprintf("%.1f", v)
		if bare != nil && bare.proxy > 0 {
			ratio = fmt.Sprintf("%.2f×", v/usPer(bare.proxy, bare.req))
		}
		return
	}
	for _, mode := range modes {
		th := aggregate(samples, mode, "throughput", 0)
		bare := th["bare"]
		fmt.Printf("\n### %s, saturated: %d workers as fast as they go, %s per round\n\n", mode, c.workers, c.duration)
		fmt.Println("| target | req/s | p50 ms | p90 ms | p99 ms | proxy CPU µs/req (per round) | × bare | during load µs/req | upstream µs/req | control plane µs/req | ok |")
		fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		for _, t := range targets {
			a := th[t.name]
			if a == nil {
				continue
			}
			cpu, ratio := cpuCell(t, a, bare)
			rounds, load := "", "—"
			if len(t.cpuProcs) > 0 {
				load = fmt.Sprintf("%.1f", usPer(a.load, a.req))
				rounds = roundsCell(a)
			}
			fmt.Printf("| %s | %.0f | %s | %s | %s | %s%s | %s | %s | %.1f | %.1f | %.2f%% |\n", t.name, median(a.rps),
				ms(median(a.p50s)), ms(median(a.p90s)), ms(median(a.p99s)), cpu, rounds, ratio, load,
				usPer(a.up, a.req), usPer(a.cp, a.req), 100*a.ok/float64(max(a.req, 1)))
		}
		for _, rate := range c.rates {
			lat := aggregate(samples, mode, "latency", rate)
			if len(lat) == 0 {
				continue
			}
			bareLat := lat["bare"]
			fmt.Printf("\n### %s, constant %d req/s (open loop), ≥ %s and ≥ %d requests per round\n\n", mode, rate, c.latDuration, c.latRequests)
			fmt.Println("| target | p50 ms | p90 ms | p99 ms | p50 added over bare µs: median round, worst round | proxy CPU µs/req (per round) | × bare | control plane µs/req | ok |")
			fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
			for _, t := range targets {
				a := lat[t.name]
				if a == nil {
					continue
				}
				add := "—"
				if bareLat != nil && t.name != "bare" {
					add = addedCell(a, bareLat)
				}
				cpu, ratio := cpuCell(t, a, bareLat)
				if len(t.cpuProcs) > 0 {
					cpu += roundsCell(a)
				}
				fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %.0f | %.2f%% |\n", t.name, ms(median(a.p50s)), ms(median(a.p90s)), ms(median(a.p99s)),
					add, cpu, ratio, usPer(a.cp, a.req), 100*a.ok/float64(max(a.req, 1)))
			}
		}
	}
	for _, mode := range modes {
		header := false
		for _, t := range targets[2:] {
			il := aggregate(samples, mode, "interleaved "+t.name, c.rate)
			a, bareIl := il[t.name], il["bare"]
			if a == nil || bareIl == nil {
				continue
			}
			if !header {
				header = true
				fmt.Printf("\n### %s, %d req/s to a Tollgate target and to the bare proxy at once, schedules interleaved (open loop), ≥ %s and ≥ %d requests per round\n\n", mode, c.rate, c.latDuration, c.latRequests)
				fmt.Println("| target | p50 ms | bare p50 ms | p90 ms | p99 ms | p50 added over bare µs: median round, worst round | p50 added per round µs | ok |")
				fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|")
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %.2f%% |\n", t.name, ms(median(a.p50s)), ms(median(bareIl.p50s)), ms(median(a.p90s)), ms(median(a.p99s)),
				addedCell(a, bareIl), addedRounds(a, bareIl), 100*a.ok/float64(max(a.req, 1)))
		}
	}
	// The goals of issue 20.
	fmt.Printf("\n### Goals (issue 20)\n\n")
	for _, mode := range modes {
		ratio := func(a, bare *agg) float64 { return usPer(a.proxy, a.req) / usPer(bare.proxy, bare.req) }
		th := aggregate(samples, mode, "throughput", 0)
		if bare, plain, limits := th["bare"], th["tollgate-plain"], th["tollgate-limits"]; bare != nil && plain != nil && limits != nil && bare.proxy > 0 {
			pr, lr := ratio(plain, bare), ratio(limits, bare)
			fmt.Printf("- %s saturated: plain key CPU/request ≤ 1.15× bare: %.2f× — %s; limited key ≤ 1.2×: %.2f× — %s\n", mode, pr, verdict(pr <= 1.15), lr, verdict(lr <= 1.2))
		}
		for _, rate := range c.rates {
			lat := aggregate(samples, mode, "latency", rate)
			bare, plain, limits := lat["bare"], lat["tollgate-plain"], lat["tollgate-limits"]
			if bare == nil || plain == nil || limits == nil || bare.proxy == 0 {
				continue
			}
			pr, lr := ratio(plain, bare), ratio(limits, bare)
			fmt.Printf("- %s at %d req/s: CPU/request ≤ 1.2× bare: plain %.2f×, limited %.2f× — %s\n", mode, rate, pr, lr, verdict(pr <= 1.2 && lr <= 1.2))
			if rate == 200 {
				addedGoal(mode, "one target at a time", plain, bare, limits, bare)
			}
		}
		if c.rate == 200 {
			ip := aggregate(samples, mode, "interleaved tollgate-plain", c.rate)
			il := aggregate(samples, mode, "interleaved tollgate-limits", c.rate)
			if ip["bare"] != nil && ip["tollgate-plain"] != nil && il["bare"] != nil && il["tollgate-limits"] != nil {
				addedGoal(mode, "each key interleaved with the bare proxy", ip["tollgate-plain"], ip["bare"], il["tollgate-limits"], il["bare"])
			}
		}
	}
}

// addedCell is "median, worst": the p50 a adds over bare, in µs.
func addedCell(a, bare *agg) string {
	m, w := added(a, bare)
	return fmt.Sprintf("%+.0f, %+.0f", float64(m)/1e3, float64(w)/1e3)
}

// addedGoal prints issue 20's added-p50 goal at 200 req/s for both keys,
// each against the bare proxy's rounds it was measured beside.
func addedGoal(mode, how string, plain, plainBare, limits, limitsBare *agg) {
	pm, pw := added(plain, plainBare)
	lm, lw := added(limits, limitsBare)
	fmt.Printf("- %s at 200 req/s, %s: added p50 < 25 µs in every round: plain median %+.0f µs, worst %+.0f µs; limited median %+.0f µs, worst %+.0f µs — %s\n",
		mode, how, float64(pm)/1e3, float64(pw)/1e3, float64(lm)/1e3, float64(lw)/1e3, verdict(pw < 25*time.Microsecond && lw < 25*time.Microsecond))
}

// addedRounds lists, round by round, how much a's p50 exceeds bare's.
func addedRounds(a, bare *agg) string {
	var parts []string
	for i, r := range a.rounds {
		for j, rb := range bare.rounds {
			if rb == r {
				parts = append(parts, fmt.Sprintf("%+.0f", float64(a.p50s[i]-bare.p50s[j])/1e3))
			}
		}
	}
	return strings.Join(parts, ", ")
}

// roundsCell is " (r1, r2, ...)": the CPU per request of each round.
func roundsCell(a *agg) string {
	parts := make([]string, len(a.perRoundCPU))
	for i, x := range a.perRoundCPU {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// profile takes a CPU profile of the proxy while the target is under load.
func (b *bench) profile(t target, mode string, body []byte, rate vegeta.Rate, pprofURL, out string) error {
	done := make(chan struct{})
	go func() {
		b.attack(t, body, rate, b.c.profile+2*time.Second)
		close(done)
	}()
	time.Sleep(time.Second)
	cl := &http.Client{Timeout: b.c.profile + 30*time.Second}
	resp, err := cl.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", pprofURL, int(b.c.profile.Seconds())))
	if err != nil {
		<-done
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(out)
	if err != nil {
		<-done
		return err
	}
	_, err = io.Copy(f, resp.Body)
	f.Close()
	<-done
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("pprof: HTTP %d", resp.StatusCode)
	}
	if err == nil {
		load := fmt.Sprintf("%d workers as fast as they go", b.c.workers)
		if rate.Freq > 0 {
			load = fmt.Sprintf("constant %d req/s", rate.Freq)
		}
		fmt.Printf("\nCPU profile of the Tollgate proxy (%s, %s, %s, %s): %s\n", t.name, mode, load, b.c.profile, out)
	}
	return err
}

func (b *bench) generate(req map[string]any) (string, error) {
	raw, _ := json.Marshal(req)
	hr, _ := http.NewRequest("POST", "http://"+b.addr(1)+"/key/generate", bytes.NewReader(raw))
	hr.Header.Set("Authorization", "Bearer "+b.mk)
	hr.Header.Set("Content-Type", "application/json")
	resp, err := b.client.Do(hr)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out struct {
		Key string `json:"key"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &out) != nil || out.Key == "" {
		return "", fmt.Errorf("/key/generate: HTTP %d: %s", resp.StatusCode, body)
	}
	return out.Key, nil
}

func (b *bench) do(url, bearer string, body []byte) (int, []byte, error) {
	hr, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	hr.Header.Set("Authorization", "Bearer "+bearer)
	hr.Header.Set("Content-Type", "application/json")
	resp, err := b.client.Do(hr)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out, nil
}

func (b *bench) start(name string, env []string, args ...string) (*proc, error) {
	logPath := filepath.Join(b.c.work, name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	bin, _, _ := strings.Cut(name, "-") // "dataplane-2" runs bin/dataplane
	cmd := exec.Command(filepath.Join(b.c.bin, bin), args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), env...)
	// Children die with the driver, whatever kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	lf.Close()
	p := &proc{name: name, cmd: cmd, log: logPath}
	b.procs = append(b.procs, p)
	return p, nil
}

func (b *bench) waitHTTP(p *proc, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := b.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if ctx.Err() != nil {
			tail, _ := os.ReadFile(p.log)
			if len(tail) > 2000 {
				tail = tail[len(tail)-2000:]
			}
			return fmt.Errorf("%s not ready at %s within %s (%v); log:\n%s", p.name, url, timeout, err, tail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopAll stops the processes in reverse order of start (proxy first, so it
// ships its spend), SIGTERM then SIGKILL after 15 s.
func (b *bench) stopAll() {
	for i := len(b.procs) - 1; i >= 0; i-- {
		p := b.procs[i]
		if p.cmd.ProcessState != nil {
			continue
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	}
	b.procs = nil
}

// logTail prints the last lines of a process's log, when it logged anything
// (the processes run at --log-level warn).
func logTail(p *proc) {
	raw, err := os.ReadFile(p.log)
	if err != nil || len(bytes.TrimSpace(raw)) == 0 {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	n := len(lines)
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	fmt.Printf("\n%s logged %d lines; the last:\n", p.name, n)
	for _, l := range lines {
		if len(l) > 300 {
			l = l[:300] + "..."
		}
		fmt.Println("    " + l)
	}
}

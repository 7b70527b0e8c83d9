// Command interleave drives several proxies side by side, open loop, with
// their requests interleaved in time, so that every target meets the same
// noise of a shared machine: each period (1/rate) sends one request to each
// target, spread evenly across the period, whatever the answers. It prints
// each target's p50/p90, the p50 it adds over the first target, and the CPU
// its process used per request (from /proc/<pid>/task/*/schedstat, ns; read
// again 1.5 s after the load, so the spend shipping a request causes is
// charged to it).
//
// The issue-20 A/B of the third session ran the bare proxy, a Tollgate proxy
// built from main and one built from the branch, each proxy on its own
// control plane (so that neither receives the other's spend deltas):
//
//	go run ./deploy/bench/interleave -rate 50 -dur 8s \
//	  -t bare=http://127.0.0.1:18505=$(pgrep -f bin/bareproxy) \
//	  -t main=http://127.0.0.1:18503=$PID_MAIN=$KEY_MAIN \
//	  -t new=http://127.0.0.1:18506=$PID_NEW=$KEY_NEW
//
// -stream asks for SSE (stream_options.include_usage). A target is
// name=base-url=pid[=key]; the key defaults to -key.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

type target struct {
	name, url, pid, key string
	tr                  *http.Transport
	mu                  sync.Mutex
	lat                 []time.Duration
	errs                int
}

type targets []*target

func (ts *targets) String() string { return fmt.Sprint(len(*ts)) }

func (ts *targets) Set(v string) error {
	p := strings.SplitN(v, "=", 4)
	if len(p) < 3 {
		return fmt.Errorf("want name=url=pid[=key], got %q", v)
	}
	t := &target{name: p[0], url: strings.TrimSuffix(p[1], "/"), pid: p[2],
		tr: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	if len(p) == 4 {
		t.key = p[3]
	}
	*ts = append(*ts, t)
	return nil
}

// cpuNanos is the CPU time of every thread of pid (ns).
func cpuNanos(pid string) int64 {
	var sum int64
	tasks, _ := filepath.Glob("/proc/" + pid + "/task/*/schedstat")
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that ended
		}
		if fs := strings.Fields(string(b)); len(fs) > 0 {
			n, _ := strconv.ParseInt(fs[0], 10, 64)
			sum += n
		}
	}
	return sum
}

func main() {
	var ts targets
	flag.Var(&ts, "t", "target name=url=pid[=key] (repeat; the first is the baseline)")
	rate := flag.Float64("rate", 200, "requests per second to each target")
	dur := flag.Duration("dur", 8*time.Second, "how long")
	key := flag.String("key", "sk-none", "bearer key for targets that name none")
	stream := flag.Bool("stream", false, "ask for an SSE stream")
	model := flag.String("model", "gpt-4o-mini", "model of the chat completion")
	flag.Parse()
	// user and metadata.generation_name satisfy proxybench's limited key
	// (enforced_params); they are harmless to every other target.
	const extra = `,"user":"bench-user","metadata":{"generation_name":"bench"}`
	if len(ts) == 0 || *rate <= 0 {
		fmt.Fprintln(os.Stderr, "interleave: at least one -t and a positive -rate")
		os.Exit(2)
	}
	body := `{"model":"` + *model + `","messages":[{"role":"user","content":"hello there"}]` + extra + `}`
	if *stream {
		body = `{"model":"` + *model + `","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello there"}]` + extra + `}`
	}
	send := func(t *target, record bool) {
		req, _ := http.NewRequest(http.MethodPost, t.url+"/v1/chat/completions", bytes.NewReader([]byte(body)))
		k := t.key
		if k == "" {
			k = *key
		}
		req.Header.Set("Authorization", "Bearer "+k)
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := t.tr.RoundTrip(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		d := time.Since(start)
		if !record {
			return
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		if err != nil {
			t.errs++
			return
		}
		t.lat = append(t.lat, d)
	}
	for range 20 { // warm connections, caches and the proxies' first spend round
		for _, t := range ts {
			send(t, false)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	before := make([]int64, len(ts))
	for i, t := range ts {
		before[i] = cpuNanos(t.pid)
	}
	period := time.Duration(float64(time.Second) / *rate)
	n := int(dur.Seconds() * *rate)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		for j, t := range ts {
			time.Sleep(time.Until(start.Add(time.Duration(i)*period + time.Duration(j)*period/time.Duration(len(ts)))))
			wg.Add(1)
			go func() { defer wg.Done(); send(t, true) }()
		}
	}
	wg.Wait()
	time.Sleep(1500 * time.Millisecond) // the spend the requests caused ships within the linger
	var base time.Duration
	for i, t := range ts {
		if len(t.lat) == 0 {
			fmt.Printf("%-10s no answers (%d errors)\n", t.name, t.errs)
			continue
		}
		sort.Slice(t.lat, func(a, b int) bool { return t.lat[a] < t.lat[b] })
		q := func(p float64) time.Duration { return t.lat[int(p*float64(len(t.lat)-1))] }
		if i == 0 {
			base = q(0.5)
		}
		cpu := float64(cpuNanos(t.pid)-before[i]) / 1e3 / float64(n)
		fmt.Printf("%-10s n=%d err=%d p50=%6.0fµs p90=%6.0fµs added=%+5.0fµs cpu=%6.1fµs/req\n", t.name, len(t.lat), t.errs,
			float64(q(0.5).Microseconds()), float64(q(0.9).Microseconds()), float64((q(0.5) - base).Microseconds()), cpu)
	}
}

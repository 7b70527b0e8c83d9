// Command propagation measures how long a revocation takes to reach every
// proxy: for each of N keys it calls POST /key/block on the control plane,
// and from the moment that call returns polls GET /v1/models with the key on
// every proxy (in parallel) until each refuses it. It prints the percentiles
// of the slowest proxy per revocation.
//
//	go run ./deploy/bench/propagation -cp http://127.0.0.1:8080 -master-key sk-... \
//	    -proxies http://127.0.0.1:4001,http://127.0.0.1:4002,http://127.0.0.1:4003 -n 200
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

func main() {
	cp := flag.String("cp", "http://127.0.0.1:8080", "control plane REST URL")
	mk := flag.String("master-key", os.Getenv("TOLLGATE_MASTER_KEY"), "master key")
	proxies := flag.String("proxies", "http://127.0.0.1:4000", "comma-separated proxy URLs")
	n := flag.Int("n", 200, "revocations")
	op := flag.String("op", "block", "block or delete")
	flag.Parse()
	ps := strings.Split(*proxies, ",")
	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
	do := func(method, url, bearer string, body any) (int, []byte) {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, url, rd)
		req.Header.Set("Authorization", "Bearer "+bearer)
		req.Header.Set("Content-Type", "application/json")
		resp, err := cl.Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	waitAll := func(key string, want int, deadline time.Duration) (time.Duration, bool) {
		start := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var worst time.Duration
		okAll := true
		for _, p := range ps {
			wg.Add(1)
			go func(p string) {
				defer wg.Done()
				for {
					st, _ := do("GET", p+"/v1/models", key, nil)
					if st == want {
						d := time.Since(start)
						mu.Lock()
						worst = max(worst, d)
						mu.Unlock()
						return
					}
					if time.Since(start) > deadline {
						mu.Lock()
						okAll = false
						mu.Unlock()
						return
					}
					time.Sleep(200 * time.Microsecond)
				}
			}(p)
		}
		wg.Wait()
		return worst, okAll
	}

	keys := make([]string, *n)
	for i := range keys {
		st, b := do("POST", *cp+"/key/generate", *mk, map[string]any{})
		if st != 200 {
			fmt.Fprintf(os.Stderr, "generate: %d %s\n", st, b)
			os.Exit(1)
		}
		var m struct{ Key string }
		_ = json.Unmarshal(b, &m)
		keys[i] = m.Key
	}
	for _, k := range keys {
		if _, ok := waitAll(k, 200, 10*time.Second); !ok {
			fmt.Fprintln(os.Stderr, "a key never reached every proxy")
			os.Exit(1)
		}
	}
	var lat []time.Duration
	for _, k := range keys {
		var st int
		var b []byte
		if *op == "delete" {
			st, b = do("POST", *cp+"/key/delete", *mk, map[string]any{"keys": []string{k}})
		} else {
			st, b = do("POST", *cp+"/key/block", *mk, map[string]any{"key": k})
		}
		if st != 200 {
			fmt.Fprintf(os.Stderr, "%s: %d %s\n", *op, st, b)
			os.Exit(1)
		}
		d, ok := waitAll(k, 401, 10*time.Second)
		if !ok {
			fmt.Fprintln(os.Stderr, "a revocation did not reach every proxy within 10s")
			os.Exit(1)
		}
		lat = append(lat, d)
	}
	slices.Sort(lat)
	p := func(q float64) time.Duration {
		return lat[min(len(lat)-1, int(q*float64(len(lat))))].Round(10 * time.Microsecond)
	}
	fmt.Printf("%d revocations (%s) across %d proxies: slowest-proxy latency p50 %s p90 %s p99 %s max %s\n",
		len(lat), *op, len(ps), p(0.5), p(0.9), p(0.99), lat[len(lat)-1].Round(10*time.Microsecond))
}

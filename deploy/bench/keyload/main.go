// Command keyload measures the control plane's key API under load: C clients
// call POST /key/generate in a loop for D, while I clients call
// GET /key/info on keys already created. It prints throughput and latency
// percentiles.
//
//	go run ./deploy/bench/keyload -url http://127.0.0.1:8080 -master-key sk-... -c 16 -info 4 -d 20s
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	base := flag.String("url", "http://127.0.0.1:8080", "control plane REST base URL")
	mk := flag.String("master-key", os.Getenv("TOLLGATE_MASTER_KEY"), "master key")
	c := flag.Int("c", 16, "concurrent /key/generate clients")
	ic := flag.Int("info", 4, "concurrent /key/info clients")
	d := flag.Duration("d", 20*time.Second, "duration")
	warm := flag.Int("warm", 200, "keys created before measuring")
	infoRate := flag.Float64("info-rate", 0, "total /key/info calls per second (0: as fast as they go)")
	rate := flag.Float64("rate", 0, "total /key/generate calls per second across all clients (0: as fast as they go)")
	flag.Parse()

	tr := &http.Transport{MaxIdleConnsPerHost: 256}
	cl := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	call := func(method, url string, body []byte) (int, []byte, time.Duration, error) {
		req, _ := http.NewRequest(method, url, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+*mk)
		req.Header.Set("Content-Type", "application/json")
		t0 := time.Now()
		resp, err := cl.Do(req)
		if err != nil {
			return 0, nil, 0, err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, b, time.Since(t0), nil
	}
	var keysMu sync.Mutex
	var created []string
	for i := 0; i < *warm; i++ {
		st, b, _, err := call("POST", *base+"/key/generate", []byte(`{"max_budget":10,"rpm_limit":100}`))
		if err != nil || st != 200 {
			fmt.Fprintf(os.Stderr, "warm-up generate: %v %d %s\n", err, st, b)
			os.Exit(1)
		}
		var m struct{ Key string }
		_ = json.Unmarshal(b, &m)
		created = append(created, m.Key)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *d)
	defer cancel()
	var genOK, genErr, infoOK, infoErr atomic.Int64
	var latMu sync.Mutex
	var genLat, infoLat []time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	// With -rate, a ticker hands out permits; the clients still run
	// concurrently, so the rate is held with c requests in flight at most.
	permits := pacer(ctx, *rate, *c)
	infoPermits := pacer(ctx, *infoRate, *ic)
	for i := 0; i < *c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			for ctx.Err() == nil {
				if permits != nil {
					select {
					case <-permits:
					case <-ctx.Done():
						continue
					}
				}
				st, b, dt, err := call("POST", *base+"/key/generate", []byte(`{"max_budget":10,"rpm_limit":100,"metadata":{"bench":true}}`))
				if err != nil || st != 200 {
					if ctx.Err() == nil {
						genErr.Add(1)
					}
					continue
				}
				genOK.Add(1)
				lat = append(lat, dt)
				var m struct{ Key string }
				_ = json.Unmarshal(b, &m)
				keysMu.Lock()
				created = append(created, m.Key)
				keysMu.Unlock()
			}
			latMu.Lock()
			genLat = append(genLat, lat...)
			latMu.Unlock()
		}()
	}
	for i := 0; i < *ic; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var lat []time.Duration
			n := i
			for ctx.Err() == nil {
				if infoPermits != nil {
					select {
					case <-infoPermits:
					case <-ctx.Done():
						continue
					}
				}
				keysMu.Lock()
				k := created[n%len(created)]
				keysMu.Unlock()
				n += 7
				st, _, dt, err := call("GET", *base+"/key/info?key="+k, nil)
				if err != nil || st != 200 {
					if ctx.Err() == nil {
						infoErr.Add(1)
					}
					continue
				}
				infoOK.Add(1)
				lat = append(lat, dt)
			}
			latMu.Lock()
			infoLat = append(infoLat, lat...)
			latMu.Unlock()
		}(i)
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	fmt.Printf("duration %.1fs, %d generate clients (target rate %v/s, 0 = unlimited), %d info clients\n", el, *c, *rate, *ic)
	fmt.Printf("/key/generate: %d ok (%.0f keys/s), %d errors, latency %s\n", genOK.Load(), float64(genOK.Load())/el, genErr.Load(), pct(genLat))
	fmt.Printf("/key/info:     %d ok (%.0f req/s), %d errors, latency %s\n", infoOK.Load(), float64(infoOK.Load())/el, infoErr.Load(), pct(infoLat))
}

// pacer hands out rate permits per second (nil when rate is 0).
func pacer(ctx context.Context, rate float64, burst int) chan struct{} {
	if rate <= 0 {
		return nil
	}
	permits := make(chan struct{}, burst)
	go func() {
		t := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				select {
				case permits <- struct{}{}:
				default:
				}
			}
		}
	}()
	return permits
}

func pct(l []time.Duration) string {
	if len(l) == 0 {
		return "n/a"
	}
	slices.Sort(l)
	p := func(q float64) time.Duration {
		return l[min(len(l)-1, int(q*float64(len(l))))].Round(10 * time.Microsecond)
	}
	return fmt.Sprintf("p50 %s p90 %s p99 %s max %s", p(0.50), p(0.90), p(0.99), l[len(l)-1].Round(10*time.Microsecond))
}

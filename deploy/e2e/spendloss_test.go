package e2e

import (
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// spendLossWindow is the slack the SIGKILL bound allows where the outbox
// writes with syscalls: its default group-commit window (20 ms) plus a
// commit in progress and the scheduling noise of a loaded 2-core machine.
// Where it copies records into its mapped segment (Linux file systems that
// preallocate and map: ext4, xfs, tmpfs, this test's), a call can lose its
// record only if the kill comes between the answer and the copy: at most
// one call per client.
const spendLossWindow = 150 * time.Millisecond

// TestSpendLostOnSIGKILL measures the crash-loss bound (README, Spend): a
// proxy serving four clients back to back is SIGKILLed mid-traffic and
// restarted; every call the clients saw answered is then counted against
// the spend the control plane recorded. The calls whose spend was lost
// must be no more than one per client (the record is copied into the
// mapped log right after the answer) and nothing is counted twice.
func TestSpendLostOnSIGKILL(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dp := d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey
		key := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{}))["key"].(string)
		waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)
		keySpend := func() int64 {
			return keySpendNano(t, u, mk, key)
		}
		// The first call's spend is synced before the traffic starts.
		deadline := time.Now().Add(5 * time.Second)
		for keySpend() != costPerCall {
			if time.Now().After(deadline) {
				t.Fatalf("the first call's spend never arrived: %d", keySpend())
			}
			time.Sleep(20 * time.Millisecond)
		}

		const clients = 4
		var (
			mu   sync.Mutex
			done []time.Time // when each answered call's body was read
			wg   sync.WaitGroup
		)
		body := chat("gpt-4o-mini", "")
		started := time.Now()
		for range clients {
			wg.Go(func() {
				c := &http.Client{Timeout: 5 * time.Second}
				for {
					req, _ := http.NewRequest("POST", dp.URL()+"/v1/chat/completions", strings.NewReader(body))
					req.Header.Set("Authorization", "Bearer "+key)
					req.Header.Set("Content-Type", "application/json")
					resp, err := c.Do(req)
					if err != nil {
						return // the proxy is gone
					}
					_, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil {
						return
					}
					if resp.StatusCode != 200 {
						t.Errorf("status %d during the traffic", resp.StatusCode)
						return
					}
					mu.Lock()
					done = append(done, time.Now())
					mu.Unlock()
				}
			})
		}
		time.Sleep(700 * time.Millisecond)
		killedAt := time.Now()
		dp.Kill()
		wg.Wait()

		// Restarted on the same cache and outbox: what was committed ships.
		dp = StartDataPlane(t, dp.Options())
		deadline = time.Now().Add(10 * time.Second)
		for proxyGauge(t, dp, "tollgate_spend_outbox_unacked") != 0 || proxyGauge(t, dp, "tollgate_spend_outbox_queued") != 0 {
			if time.Now().After(deadline) {
				t.Fatal("the restarted proxy never shipped its outbox")
			}
			time.Sleep(20 * time.Millisecond)
		}
		recorded := (keySpend() - costPerCall) / costPerCall
		answered := int64(len(done))
		var late int64 // answered within spendLossWindow of the kill
		for _, at := range done {
			if at.After(killedAt.Add(-spendLossWindow)) {
				late++
			}
		}
		lost := answered - recorded
		rate := float64(answered) / killedAt.Sub(started).Seconds()
		t.Logf("SIGKILL after %d answered calls (%.0f/s): %d recorded, %d lost (%.1f ms of traffic); %d were answered in the last %v before the kill",
			answered, rate, recorded, lost, float64(lost)/rate*1e3, late, spendLossWindow)
		if answered < 50 {
			t.Fatalf("only %d calls answered before the kill: too few to measure", answered)
		}
		// A call recorded but never seen answered (killed while its answer
		// was on the wire) is possible, one per client at most.
		if recorded > answered+clients {
			t.Fatalf("%d calls recorded, %d answered: spend counted twice", recorded, answered)
		}
		if lost > late {
			t.Fatalf("%d calls' spend lost, more than the %d answered in the last %v before the kill", lost, late, spendLossWindow)
		}
		if lost > clients {
			t.Fatalf("%d calls' spend lost: more than one per client (%d), so records waited to be written", lost, clients)
		}
	})
}

// keySpendNano reads a key's spend (nano-USD) from /key/info.
func keySpendNano(t *testing.T, u, mk, key string) int64 {
	t.Helper()
	k := ok(t, Do(t, "GET", u+"/key/info?key="+key, mk, nil))
	f, _ := k["info"].(map[string]any)["spend"].(float64)
	return int64(math.Round(f * 1e9))
}

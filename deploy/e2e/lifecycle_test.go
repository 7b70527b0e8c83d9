package e2e

import (
	"sync"
	"testing"
	"time"
)

// TestRegenerateGracePeriodOnTwoProxies: with grace_period the old secret
// keeps working on every proxy until the grace ends, then stops with no
// further call; without it the old secret stops at once.
func TestRegenerateGracePeriodOnTwoProxies(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		p1, p2 := d.proxy(t), d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey
		body := chat("gpt-4o-mini", "")

		old := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"key_alias":"graceful","max_budget":5}`))["key"].(string)
		for _, p := range []*DataPlane{p1, p2} {
			waitStatus(t, p, old, body, 200)
		}
		rg := ok(t, Do(t, "POST", u+"/key/regenerate", mk, map[string]any{"key": old, "grace_period": "3s"}))
		nk := rg["key"].(string)
		if rg["key_alias"] != "graceful" || rg["max_budget"] != 5.0 {
			t.Fatalf("regenerate lost alias or limits: %v", rg)
		}
		start := time.Now()
		for _, p := range []*DataPlane{p1, p2} {
			waitStatus(t, p, nk, body, 200)
			if r := Do(t, "POST", p.URL()+"/v1/chat/completions", old, body); r.Status != 200 && time.Since(start) < 2*time.Second {
				t.Fatalf("old secret refused during its grace period on %s: %d %s", p.ID, r.Status, r.Body)
			}
		}
		// The grace period ends on its own, on every proxy, with the control
		// plane gone (no further call can be involved).
		d.cp.Kill()
		time.Sleep(time.Until(start.Add(3200 * time.Millisecond)))
		for _, p := range []*DataPlane{p1, p2} {
			waitStatus(t, p, old, body, 401)
			waitStatus(t, p, nk, body, 200)
		}
	})
}

// TestRegenerateWithoutGraceStopsAtOnce covers /key/{key}/regenerate too.
func TestRegenerateWithoutGraceStopsAtOnce(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, CPOptions{})
	p1, p2 := d.proxy(t), d.proxy(t)
	u, mk := d.cp.URL(), d.cp.MasterKey
	body := chat("gpt-4o-mini", "")
	old := ok(t, Do(t, "POST", u+"/key/generate", mk, `{}`))["key"].(string)
	waitStatus(t, p1, old, body, 200)
	nk := ok(t, Do(t, "POST", u+"/key/"+old+"/regenerate", mk, `{}`))["key"].(string)
	for _, p := range []*DataPlane{p1, p2} {
		waitStatus(t, p, old, body, 401)
		waitStatus(t, p, nk, body, 200)
	}
}

// TestGracePeriodEndsToTheMillisecond (issue 17): a 5 s grace period polled
// every 150 ms on two proxies. The old secret works until the grace
// period's end (the control plane sets it between the call's send and its
// answer) and stops within 100 ms after it; whole-second deadlines ended
// it 4.0-4.35 s after the call.
func TestGracePeriodEndsToTheMillisecond(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dps := []*DataPlane{d.proxy(t), d.proxy(t)}
		u, mk := d.cp.URL(), d.cp.MasterKey
		old := ok(t, Do(t, "POST", u+"/key/generate", mk, `{}`))["key"].(string)
		for _, p := range dps {
			waitStatus(t, p, old, chat("gpt-4o-mini", ""), 200)
		}
		sent := time.Now()
		ok(t, Do(t, "POST", u+"/key/regenerate", mk, map[string]any{"key": old, "grace_period": "5s"}))
		answered := time.Now()
		earliest, latest := sent.Add(5*time.Second), answered.Add(5*time.Second)
		type poll struct {
			from, to time.Time
			status   int
		}
		var wg sync.WaitGroup
		for _, p := range dps {
			wg.Go(func() {
				var polls []poll
				for next := time.Now(); next.Before(latest.Add(time.Second)); next = next.Add(150 * time.Millisecond) {
					time.Sleep(time.Until(next))
					from := time.Now()
					r := Do(t, "GET", p.URL()+"/v1/models", old, nil)
					polls = append(polls, poll{from, time.Now(), r.Status})
				}
				for _, q := range polls {
					switch {
					case q.to.Before(earliest) && q.status != 200:
						t.Errorf("%s: old secret refused (%d) %v after the call, before its grace period ended", p.ID, q.status, q.to.Sub(sent).Round(time.Millisecond))
					case q.from.After(latest.Add(100*time.Millisecond)) && q.status != 401:
						t.Errorf("%s: old secret answered %d %v after the call, more than 100 ms after its grace period", p.ID, q.status, q.from.Sub(sent).Round(time.Millisecond))
					}
				}
			})
		}
		wg.Wait()
	})
}

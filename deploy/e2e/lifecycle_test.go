package e2e

import (
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

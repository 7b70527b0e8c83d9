package e2e

import (
	"strings"
	"testing"
)

// TestLogsHoldNoSecrets runs a busy scenario at debug log level and searches
// every line every process printed for the master key, the sync token, the
// upstream credential and every key generated.
func TestLogsHoldNoSecrets(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		o.Env = append(o.Env, "TOLLGATE_LOG_LEVEL=debug")
		d := newDeployment(t, o)
		d.env = append(d.env, "TOLLGATE_LOG_LEVEL=debug")
		p1, p2 := d.proxy(t), d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey
		secrets := []string{mk, d.cp.SyncToken, upstreamSecret}
		body := chat("gpt-4o-mini", "")

		k := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"key_alias":"a"}`))["key"].(string)
		secrets = append(secrets, k)
		waitStatus(t, p1, k, body, 200)
		waitStatus(t, p2, k, chat("gpt-4o-mini", `,"stream":true`), 200)
		Do(t, "GET", u+"/key/info?key="+k, mk, nil)
		Do(t, "GET", u+"/key/info?key="+k, k, nil)
		nk := ok(t, Do(t, "POST", u+"/key/"+k+"/regenerate", mk, `{}`))["key"].(string)
		secrets = append(secrets, nk)
		own := "sk-chosen-" + RandomKey()[3:]
		secrets = append(secrets, own)
		ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"key": own}))
		Do(t, "POST", u+"/key/generate", mk, map[string]any{"key": own}) // duplicate: 400
		ok(t, Do(t, "POST", u+"/key/block", mk, map[string]any{"key": own}))
		waitStatus(t, p1, own, body, 401)
		waitStatus(t, p1, k, body, 401)
		// Wrong credentials, near misses of the master key, an unknown key.
		Do(t, "GET", u+"/key/list", mk+"x", nil)
		Do(t, "GET", u+"/key/list", "", nil, "X-Admin-Key", mk[:len(mk)-1])
		unknown := RandomKey()
		secrets = append(secrets, unknown)
		Do(t, "POST", p2.URL()+"/v1/chat/completions", unknown, body)
		Do(t, "GET", p2.URL()+"/v1/models?key="+unknown, unknown, nil)
		team := ok(t, Do(t, "POST", u+"/team/new", mk, `{}`))
		sa := ok(t, Do(t, "POST", u+"/key/service-account/generate", mk, map[string]any{"team_id": team["team_id"]}))["key"].(string)
		secrets = append(secrets, sa)
		waitStatus(t, p2, sa, body, 400)
		waitStatus(t, p2, sa, chat("gpt-4o-mini", `,"user":"u"`), 200)

		p1.Stop()
		p2.Stop()
		d.cp.Stop()
		for _, p := range []*Process{d.cp.Process, p1.Process, p2.Process} {
			out := p.Output()
			if !strings.Contains(out, "level=") {
				t.Fatalf("%s printed no log lines", p.Name)
			}
			for _, s := range secrets {
				if strings.Contains(out, s) {
					t.Errorf("%s log contains a secret (%s...)", p.Name, s[:6])
				}
			}
		}
	})
}

package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestOpenAINodeSDK drives a proxy with the official OpenAI Node SDK (npm
// "openai", pinned in deploy/e2e/node). It needs node and npm; under
// CI=true their absence is a failure.
func TestOpenAINodeSDK(t *testing.T) {
	t.Parallel()
	dir := nodeModules(t)

	d := newDeployment(t, CPOptions{})
	dp := d.proxy(t)
	u, mk := d.cp.URL(), d.cp.MasterKey
	key := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"models":["gpt-4o-mini","text-embedding-3-small"]}`))["key"].(string)
	team := ok(t, Do(t, "POST", u+"/team/new", mk, `{"team_alias":"sdk"}`))
	sa := ok(t, Do(t, "POST", u+"/key/service-account/generate", mk, map[string]any{"team_id": team["team_id"]}))["key"].(string)
	waitStatus(t, dp, sa, chat("gpt-4o-mini", `,"user":"x"`), 200)

	cmd := exec.Command("node", "sdk.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PROXY_URL="+dp.URL(), "KEY="+key, "SA_KEY="+sa, "WANT_MODELS=gpt-4o-mini,text-embedding-3-small")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("node sdk.mjs: %v\n%s", err, out)
	}
}

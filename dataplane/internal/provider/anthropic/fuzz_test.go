package anthropic

import (
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
)

// FuzzTranslateRequest: any valid chat body the decision accepts either
// translates to valid JSON or is refused with a 400; never a panic.
func FuzzTranslateRequest(f *testing.F) {
	f.Add(`{"model":"c","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:;base64,"}}]}]}`)
	f.Add(`{"model":"c","messages":[{"role":"assistant","tool_calls":[{"id":1,"function":{"arguments":"[1]"}}]},{"role":"tool","content":[{"type":"text","text":""}]}],"tools":[{"function":{}}],"tool_choice":{"function":{"name":1}},"stop":[1],"max_tokens":"x","user":1}`)
	f.Add(`{"model":"c","messages":[{"role":"system","content":"s"},{"role":"user","content":"\u0000\"x"}]}`)
	f.Fuzz(func(t *testing.T, body string) {
		var b enforce.Body
		// The decision's scanner leaves control characters in strings to
		// the upstream's parser (see enforce.scanString); strict JSON in,
		// strict JSON out.
		if enforce.ParseBody([]byte(body), &b) != nil || !json.Valid([]byte(body)) {
			return
		}
		out, rej := translateRequest(&b, []byte(`"m"`))
		if rej != nil {
			if rej.Status != 400 {
				t.Fatalf("status %d", rej.Status)
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON from %s:\n%s", body, out)
		}
	})
}

// FuzzStreamTranslator: any event stream translates to valid chunks.
func FuzzStreamTranslator(f *testing.F) {
	f.Add(anthropicStream)
	f.Add("data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":1}}\n\n")
	f.Add("data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n")
	f.Fuzz(func(t *testing.T, in string) {
		var u provider.Usage
		known := false
		out, _ := io.ReadAll(NewStreamTranslator(io.NopCloser(strings.NewReader(in)), &u, &known, true))
		for _, ev := range strings.Split(string(out), "\n\n") {
			data, ok := strings.CutPrefix(ev, "data: ")
			if ev == "" || data == "[DONE]" {
				continue
			}
			if !ok || !json.Valid([]byte(data)) {
				t.Fatalf("invalid chunk %q from %q", ev, in)
			}
		}
	})
}

package anthropic

import (
	"encoding/json"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
)

func jsonEqual(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("invalid JSON %v: %s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad want: %v", err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func translate(t *testing.T, req string) ([]byte, *enforce.Rejection) {
	t.Helper()
	var b enforce.Body
	if rej := enforce.ParseBody([]byte(req), &b); rej != nil {
		t.Fatalf("parse: %s", rej.Message)
	}
	return translateRequest(&b, []byte(`"claude-x"`))
}

func TestTranslateRequest(t *testing.T) {
	out, rej := translate(t, `{"model":"claude","messages":[
		{"role":"system","content":"Be brief."},
		{"role":"developer","content":[{"type":"text","text":"Use tools."}]},
		{"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},{"type":"image_url","image_url":{"url":"https://x.example/cat.jpg"}}]},
		{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
		{"role":"tool","tool_call_id":"call_1","content":"sunny"},
		{"role":"user","content":"thanks"}],
		"max_completion_tokens":300,"stop":"END","temperature":0.5,"top_p":0.9,"stream":true,"stream_options":{"include_usage":true},
		"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
		"tool_choice":"required","user":"alice","n":1}`)
	if rej != nil {
		t.Fatal(rej.Message)
	}
	jsonEqual(t, out, `{"model":"claude-x","max_tokens":300,
		"system":[{"type":"text","text":"Be brief."},{"type":"text","text":"Use tools."}],
		"messages":[
			{"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},{"type":"image","source":{"type":"url","url":"https://x.example/cat.jpg"}}]},
			{"role":"assistant","content":[{"type":"tool_use","id":"call_1","name":"get_weather","input":{"city":"Paris"}}]},
			{"role":"user","content":[{"type":"tool_result","tool_use_id":"call_1","content":[{"type":"text","text":"sunny"}]},{"type":"text","text":"thanks"}]}],
		"stop_sequences":["END"],"temperature":0.5,"top_p":0.9,"stream":true,
		"tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],
		"tool_choice":{"type":"any"},"metadata":{"user_id":"alice"}}`)

	out, rej = translate(t, `{"model":"claude","messages":[{"role":"user","content":"hi"}],"stop":["a","b"],"tool_choice":{"type":"function","function":{"name":"f"}}}`)
	if rej != nil {
		t.Fatal(rej.Message)
	}
	jsonEqual(t, out, `{"model":"claude-x","max_tokens":4096,"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stop_sequences":["a","b"],"tool_choice":{"type":"tool","name":"f"}}`)

	for _, bad := range []string{
		`{"model":"c","messages":[]}`,
		`{"model":"c","messages":"hi"}`,
		`{"model":"c"}`,
		`{"model":"c","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}`,
		`{"model":"c","messages":[{"role":"wizard","content":"x"}]}`,
	} {
		if _, rej := translate(t, bad); rej == nil || rej.Status != 400 {
			t.Errorf("%s: not refused", bad)
		}
	}
}

func TestTranslateMessage(t *testing.T) {
	var u provider.Usage
	out, ok := TranslateMessage([]byte(`{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Let me \"check\"."},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":20,"output_tokens":7}}`), &u, 1700000000)
	if !ok {
		t.Fatal("not translated")
	}
	jsonEqual(t, out, `{"id":"msg_1","object":"chat.completion","created":1700000000,"model":"claude-x","choices":[{"index":0,"message":{"role":"assistant","content":"Let me \"check\".","tool_calls":[{"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":35,"completion_tokens":7,"total_tokens":42,"prompt_tokens_details":{"cached_tokens":20}}}`)
	if u != (provider.Usage{PromptTokens: 35, CompletionTokens: 7, TotalTokens: 42, CacheCreationTokens: 5, CacheReadTokens: 20}) {
		t.Fatalf("usage %+v", u)
	}
	got := TranslateError(429, []byte(`{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}`))
	jsonEqual(t, got, `{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"429"}}`)
}

const anthropicStream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n" +
	"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n" +
	"event: ping\ndata: {\"type\": \"ping\"}\n\n" +
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n" +
	"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n" +
	"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n" +
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}\n\n" +
	"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n" +
	"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n" +
	"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"

func TestStreamTranslator(t *testing.T) {
	for _, oneByte := range []bool{false, true} {
		var u provider.Usage
		known := false
		var r io.Reader = strings.NewReader(anthropicStream)
		if oneByte {
			r = iotest.OneByteReader(r)
		}
		out, err := io.ReadAll(NewStreamTranslator(io.NopCloser(r), &u, &known, true))
		if err != nil {
			t.Fatal(err)
		}
		var chunks []string
		for _, line := range strings.Split(string(out), "\n\n") {
			if line != "" {
				chunks = append(chunks, strings.TrimPrefix(line, "data: "))
			}
		}
		if len(chunks) != 7 || chunks[6] != "[DONE]" {
			t.Fatalf("chunks %q", chunks)
		}
		want := []string{
			`{"id":"msg_1","object":"chat.completion.chunk","created":0,"model":"claude-x","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`,
			`{"id":"msg_1","object":"chat.completion.chunk","created":0,"model":"claude-x","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}`,
			`{"id":"msg_1","object":"chat.completion.chunk","created":0,"model":"claude-x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"toolu_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}`,
			`{"id":"msg_1","object":"chat.completion.chunk","created":0,"model":"claude-x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]},"finish_reason":null}]}`,
			`{"id":"msg_1","object":"chat.completion.chunk","created":0,"model":"claude-x","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}`,
			`{"id":"msg_1","object":"chat.completion.chunk","created":0,"model":"claude-x","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":15,"total_tokens":45,"prompt_tokens_details":{"cached_tokens":5}}}`,
		}
		for i, w := range want {
			var m map[string]any
			if err := json.Unmarshal([]byte(chunks[i]), &m); err != nil {
				t.Fatalf("chunk %d: %v %s", i, err, chunks[i])
			}
			m["created"] = 0
			g, _ := json.Marshal(m)
			jsonEqual(t, g, w)
		}
		if !known || u != (provider.Usage{PromptTokens: 30, CompletionTokens: 15, TotalTokens: 45, CacheReadTokens: 5}) {
			t.Fatalf("usage %+v %v", u, known)
		}
	}
}

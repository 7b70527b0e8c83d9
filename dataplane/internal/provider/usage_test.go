package provider

import "testing"

func TestParseUsage(t *testing.T) {
	for _, tc := range []struct {
		w    Wire
		raw  string
		want Usage
	}{
		{WireOpenAI, `{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}`, Usage{PromptTokens: 10, CompletionTokens: 5, TotalTokens: 15, CacheReadTokens: 4}},
		{WireResponses, `{"input_tokens":10,"input_tokens_details":{"cached_tokens":3},"output_tokens":4,"total_tokens":14}`, Usage{PromptTokens: 10, CompletionTokens: 4, TotalTokens: 14, CacheReadTokens: 3}},
		{WireResponses, `{"type":"duration","seconds":12.5}`, Usage{AudioMillis: 12_500}},
		{WireResponses, `{"type":"duration","seconds":3}`, Usage{AudioMillis: 3000}},
		{WireResponses, `{"type":"duration","seconds":0.0004}`, Usage{AudioMillis: 1}},
		{WireAnthropic, `{"input_tokens":100,"cache_creation_input_tokens":1000,"cache_read_input_tokens":2000,"output_tokens":50}`, Usage{PromptTokens: 3100, CompletionTokens: 50, TotalTokens: 3150, CacheCreationTokens: 1000, CacheReadTokens: 2000}},
	} {
		var u Usage
		if !ParseUsage(tc.w, []byte(tc.raw), &u) || u != tc.want {
			t.Errorf("%d %s: %+v, want %+v", tc.w, tc.raw, u, tc.want)
		}
	}
	var u Usage
	if ParseUsage(WireNone, []byte(`{"prompt_tokens":1}`), &u) || ParseUsage(WireOpenAI, []byte(`null`), &u) {
		t.Error("parsed what is not usage")
	}
}

func TestEventUsage(t *testing.T) {
	var u Usage
	ev := EventUsage(WireAnthropic, []byte(`{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":25,"cache_read_input_tokens":10,"output_tokens":1}}}`), &u)
	if !ev.Found || string(ev.ID) != `"msg_1"` {
		t.Fatalf("%+v", ev)
	}
	// message_delta's usage is cumulative; input counts it omits are kept.
	EventUsage(WireAnthropic, []byte(`{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}`), &u)
	if u != (Usage{PromptTokens: 35, CompletionTokens: 15, TotalTokens: 50, CacheReadTokens: 10}) {
		t.Fatalf("%+v", u)
	}
	u = Usage{}
	if ev := EventUsage(WireResponses, []byte(`{"type":"response.created","response":{"id":"resp_1","usage":null}}`), &u); ev.Found || string(ev.ID) != `"resp_1"` {
		t.Fatalf("%+v", ev)
	}
	if ev := EventUsage(WireResponses, []byte(`{"type":"response.completed","response":{"id":"resp_1","usage":{"input_tokens":3,"output_tokens":2}}}`), &u); !ev.Found || u.TotalTokens != 5 {
		t.Fatalf("%+v %+v", ev, u)
	}
	u = Usage{}
	if ev := EventUsage(WireOpenAI, []byte(`{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}`), &u); !ev.Found || !ev.UsageOnly || u.TotalTokens != 3 {
		t.Fatalf("%+v %+v", ev, u)
	}
}

package openai

import (
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

func TestBaseURL(t *testing.T) {
	for _, tt := range []struct{ upstream, base, want string }{
		{"openai/gpt-4o", "", "https://api.openai.com/v1/chat/completions"},
		{"openai/gpt-4o", "http://h:1/v1", "http://h:1/v1/chat/completions"},
		{"openai/gpt-4o", "http://h:1/v1/", "http://h:1/v1/chat/completions"},
		{"hosted_vllm/x", "http://h:1", "http://h:1/v1/chat/completions"},
		{"hosted_vllm/x", "http://h:1/openai/v2", "http://h:1/openai/v2/chat/completions"},
		{"groq/llama", "", "https://api.groq.com/openai/v1/chat/completions"},
		{"perplexity/sonar", "", "https://api.perplexity.ai/chat/completions"},
		{"hosted_vllm/x", "", ""},
		{"openai/x", "ftp://h", ""},
	} {
		got := ""
		if tg, err := New(&state.Model{UpstreamModel: tt.upstream, APIBase: tt.base}); err == nil {
			got = tg.(*Target).URL(enforce.RouteChat).String()
		}
		if got != tt.want {
			t.Errorf("%s %s: %q, want %q", tt.upstream, tt.base, got, tt.want)
		}
	}
}

package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
)

func TestUsageSniffer(t *testing.T) {
	tests := map[string]Usage{
		`{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`:                                     {PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3},
		`{"choices":[{"usage":{"prompt_tokens":9}}],"usage":{"prompt_tokens":1,"total_tokens":1}}`:                 {PromptTokens: 1, CompletionTokens: 0, TotalTokens: 1},
		`{"text":"\"usage\":{\"prompt_tokens\":9}","x":{"usage":{"prompt_tokens":9}},"usage":{"prompt_tokens":2}}`: {PromptTokens: 2, CompletionTokens: 0, TotalTokens: 2},
		` { "usage" : { "prompt_tokens" : 4 , "completion_tokens" : 1 } } `:                                        {PromptTokens: 4, CompletionTokens: 1, TotalTokens: 5},
		`{"a\\":"usage","usage":{"completion_tokens":7}}`:                                                          {PromptTokens: 0, CompletionTokens: 7, TotalTokens: 7},
	}
	for doc, want := range tests {
		for _, oneByte := range []bool{false, true} {
			c := &call{}
			var r io.Reader = strings.NewReader(doc)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			out, err := io.ReadAll(newUsageSniffer(io.NopCloser(r), c))
			if err != nil || string(out) != doc {
				t.Fatalf("passthrough changed the body: %q", out)
			}
			if !c.usageKnown || c.usage != want {
				t.Errorf("%s (one byte %v): %+v %v, want %+v", doc, oneByte, c.usage, c.usageKnown, want)
			}
		}
	}
	for _, doc := range []string{`[{"usage":{"prompt_tokens":1}}]`, `{"x":{"usage":{"prompt_tokens":1}}}`, `{"error":{"message":"x"}}`, `"usage"`} {
		c := &call{}
		io.ReadAll(newUsageSniffer(io.NopCloser(strings.NewReader(doc)), c))
		if c.usageKnown {
			t.Errorf("%s: usage %+v", doc, c.usage)
		}
	}
}

func TestSSEFilter(t *testing.T) {
	const (
		chunk = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}"
		usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}}"
		done  = "data: [DONE]"
	)
	for _, nl := range []string{"\n", "\r\n"} {
		stream := chunk + nl + nl + ": comment" + nl + nl + usage + nl + nl + done + nl + nl
		for _, hide := range []bool{false, true} {
			for _, oneByte := range []bool{false, true} {
				c := &call{hideUsage: hide}
				var r io.Reader = strings.NewReader(stream)
				if oneByte {
					r = iotest.OneByteReader(r)
				}
				// Closed after each stream: the next one reads through
				// recycled buffers, which must carry nothing over.
				f := newSSEFilter(io.NopCloser(r), c)
				out, err := io.ReadAll(f)
				if err != nil {
					t.Fatal(err)
				}
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
				if n, err := f.Read(make([]byte, 8)); n != 0 || err != http.ErrBodyReadAfterClose {
					t.Fatalf("read after close: %d, %v", n, err)
				}
				want := stream
				if hide {
					want = strings.Replace(stream, usage+nl+nl, "", 1)
				}
				if string(out) != want {
					t.Errorf("hide=%v oneByte=%v nl=%q:\n got %q\nwant %q", hide, oneByte, nl, out, want)
				}
				if !c.usageKnown || c.usage != (Usage{PromptTokens: 5, CompletionTokens: 6, TotalTokens: 11}) {
					t.Errorf("usage %+v", c.usage)
				}
			}
		}
	}
}

func TestSSEFilterUnterminatedTailPassesThrough(t *testing.T) {
	c := &call{hideUsage: true}
	in := "data: {\"a\":1}\n\ndata: partial"
	out, _ := io.ReadAll(newSSEFilter(io.NopCloser(strings.NewReader(in)), c))
	if string(out) != in {
		t.Fatalf("%q", out)
	}
}

func TestSSEFilterHugeEventPassesThrough(t *testing.T) {
	c := &call{hideUsage: true}
	in := "data: \"" + strings.Repeat("x", 3*maxEvent) + "\"\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"
	out, _ := io.ReadAll(newSSEFilter(io.NopCloser(strings.NewReader(in)), c))
	if string(out) != in {
		t.Fatalf("lost bytes: %d vs %d", len(out), len(in))
	}
}

// TestUsageSnifferResponseID: the top-level "id" of a response is recorded
// (LiteLLM keys spend logs by it); nested ids, keys named "id" inside
// strings, escaped or oversized ids and non-string ids are not.
func TestUsageSnifferResponseID(t *testing.T) {
	long := strings.Repeat("x", maxResponseID+1)
	tests := map[string]string{
		`{"id":"chatcmpl-abc123","object":"chat.completion","usage":{"prompt_tokens":1}}`: "chatcmpl-abc123",
		`{"object":"x","choices":[{"id":"inner"}],"id" : "late-1"}`:                       "late-1",
		`{"x":{"id":"nested"},"usage":{"prompt_tokens":1}}`:                               "",
		`{"text":"\"id\":\"fake\"","id":"real"}`:                                          "real",
		`{"id":"esc\"aped"}`:                                                              "",
		`{"id":"` + long + `"}`:                                                           "",
		`{"id":42,"model":"m"}`:                                                           "",
		`{"id":"has space"}`:                                                              "",
		`{"id":"first","id":"second"}`:                                                    "first",
		`[{"id":"in-array"}]`:                                                             "",
		`{"idx":"no","usage":{"prompt_tokens":1},"aid":"no"}`:                             "",
		`{"id":"` + strings.Repeat("y", maxResponseID) + `","usage":{"completion_tokens":2}}`: strings.Repeat("y", maxResponseID),
	}
	for doc, want := range tests {
		for _, oneByte := range []bool{false, true} {
			c := &call{}
			var r io.Reader = strings.NewReader(doc)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			out, _ := io.ReadAll(newUsageSniffer(io.NopCloser(r), c))
			if string(out) != doc {
				t.Fatalf("passthrough changed the body: %q", out)
			}
			if c.respID != want {
				t.Errorf("%s (one byte %v): id %q, want %q", doc, oneByte, c.respID, want)
			}
		}
	}
	// The usage that follows an id is still read.
	c := &call{}
	io.ReadAll(newUsageSniffer(io.NopCloser(strings.NewReader(`{"id":"a","usage":{"prompt_tokens":3,"completion_tokens":4}}`)), c))
	if !c.usageKnown || c.usage != (Usage{PromptTokens: 3, CompletionTokens: 4, TotalTokens: 7}) {
		t.Errorf("usage after id: %+v", c.usage)
	}
}

func TestSSEFilterResponseID(t *testing.T) {
	stream := "data: {\"id\":\"chatcmpl-s1\",\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n" +
		"data: {\"id\":\"chatcmpl-s1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\ndata: [DONE]\n\n"
	c := &call{hideUsage: true}
	f := newSSEFilter(io.NopCloser(strings.NewReader(stream)), c)
	io.ReadAll(f)
	f.Close()
	if c.respID != "chatcmpl-s1" {
		t.Errorf("stream id %q", c.respID)
	}
}

package enforce

import "testing"

func TestParseBody(t *testing.T) {
	tests := []struct {
		name, body   string
		wantErr      string // param of the rejection, or "json" for bad JSON
		model        string
		stream       bool
		includeUsage bool
		hasOpts      bool
	}{
		{name: "minimal", body: `{"model":"gpt"}`, model: "gpt"},
		{name: "escaped model", body: `{"model":"g\u0070t"}`, model: "gpt"},
		{name: "stream", body: `{"model":"m","stream":true}`, model: "m", stream: true},
		{name: "stream false", body: `{"model":"m","stream":false}`, model: "m"},
		{name: "stream string", body: `{"model":"m","stream":"true"}`, model: "m"},
		{name: "include usage", body: `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, model: "m", stream: true, includeUsage: true, hasOpts: true},
		{name: "include usage false", body: `{"model":"m","stream":true,"stream_options":{"include_usage":false}}`, model: "m", stream: true, hasOpts: true},
		{name: "stream_options null", body: `{"model":"m","stream_options":null}`, model: "m", hasOpts: true},
		{name: "stream_options string", body: `{"model":"m","stream_options":"x"}`, wantErr: "stream_options"},
		{name: "dup include_usage", body: `{"model":"m","stream_options":{"include_usage":false,"include_usage":true}}`, wantErr: "stream_options.include_usage"},
		{name: "missing model", body: `{"messages":[]}`, wantErr: "model"},
		{name: "number model", body: `{"model":4}`, wantErr: "model"},
		{name: "empty model", body: `{"model":""}`, wantErr: "model"},
		{name: "duplicate model", body: `{"model":"a","model":"b"}`, wantErr: "model"},
		{name: "duplicate escaped model", body: `{"model":"a","m\u006fdel":"b"}`, wantErr: "model"},
		{name: "duplicate stream", body: `{"model":"a","stream":false,"stream":true}`, wantErr: "stream"},
		{name: "array", body: `[{"model":"a"}]`, wantErr: "json"},
		{name: "garbage", body: `{"model":"a"`, wantErr: "json"},
		{name: "empty", body: ``, wantErr: "json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b Body
			rej := ParseBody([]byte(tt.body), &b)
			if tt.wantErr != "" {
				if rej == nil {
					t.Fatalf("accepted")
				}
				if rej.Status != 400 {
					t.Fatalf("status %d", rej.Status)
				}
				if tt.wantErr != "json" && rej.Param != tt.wantErr {
					t.Fatalf("param %q, want %q (%s)", rej.Param, tt.wantErr, rej.Message)
				}
				return
			}
			if rej != nil {
				t.Fatalf("rejected: %s", rej.Message)
			}
			if b.Model != tt.model || b.Stream != tt.stream || b.IncludeUsage != tt.includeUsage || b.StreamOptions.Present() != tt.hasOpts {
				t.Fatalf("got model=%q stream=%v includeUsage=%v opts=%v", b.Model, b.Stream, b.IncludeUsage, b.StreamOptions.Present())
			}
		})
	}
}

func TestEndUser(t *testing.T) {
	var b Body
	if ParseBody([]byte(`{"model":"m","user":"u\"1"}`), &b) != nil || b.EndUser() != `u"1` {
		t.Fatalf("EndUser = %q", b.EndUser())
	}
	if ParseBody([]byte(`{"model":"m","user":5}`), &b) != nil || b.EndUser() != "" {
		t.Fatalf("EndUser = %q", b.EndUser())
	}
}

package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestRequestID(t *testing.T) {
	for _, ok := range []string{"abc", "req-1_2.3:4@x/y+z=", strings.Repeat("a", MaxRequestIDLen)} {
		if RequestID(ok) != ok {
			t.Errorf("%q not kept", ok)
		}
	}
	for _, bad := range []string{"", "sk-0123456789abcdef", "a b", "x\n", "é", strings.Repeat("a", MaxRequestIDLen+1), `"quoted"`} {
		got := RequestID(bad)
		if got == bad || len(got) != 32 || !SaneRequestID(got) {
			t.Errorf("%q: got %q", bad, got)
		}
	}
	if NewRequestID() == NewRequestID() {
		t.Fatal("ids repeat")
	}
}

func TestTracesURL(t *testing.T) {
	for in, want := range map[string]string{
		"collector:4318":                     "http://collector:4318/v1/traces",
		"http://collector:4318":              "http://collector:4318/v1/traces",
		"https://otel.example/":              "https://otel.example/v1/traces",
		"http://collector:4318/custom/trace": "http://collector:4318/custom/trace",
	} {
		if got, err := TracesURL(in); err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", in, got, err, want)
		}
	}
	if _, err := TracesURL("ftp://x"); err == nil {
		t.Fatal("ftp accepted")
	}
}

func TestLoggerCarriesRequestID(t *testing.T) {
	var buf bytes.Buffer
	lg, err := NewLogger(&buf, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	lg.With("component", "x").InfoContext(WithRequestID(context.Background(), "rid-7"), "hello")
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("not JSON: %s", buf.Bytes())
	}
	if m["request_id"] != "rid-7" || m["component"] != "x" {
		t.Fatalf("line %v", m)
	}
	if _, err := NewLogger(&buf, "xml", "info"); err == nil {
		t.Fatal("xml accepted")
	}
	buf.Reset()
	lg, _ = NewLogger(&buf, "text", "warn")
	lg.Info("dropped")
	if buf.Len() != 0 {
		t.Fatal("level ignored")
	}
}

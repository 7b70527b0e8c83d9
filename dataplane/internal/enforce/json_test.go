package enforce

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

var jsonCases = []string{
	`{}`, ` { } `, `{"a":1}`, `{"a":-0.5e+10,"b":[1,2,{"c":null}],"d":"x\"y\\z\u00e9"}`,
	`{"a":true,"b":false,"c":null}`, `{"a":[]}`, `{"a":[[]]}`, `{"a":{"b":{"c":{}}}}`,
	`{"model":"gpt","messages":[{"role":"user","content":"hi \n there"}]}`,
	`{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":1e}`, `{"a":-}`, `{"a":+1}`,
	`{"a":tru}`, `{"a":nul}`, `{"a":"\x"}`, `{"a":"\u12"}`, `{"a":"\u12g4"}`,
	`{"a" 1}`, `{"a":1,}`, `{,}`, `{"a":1 "b":2}`, `{"a":[1,]}`, `{"a":[1 2]}`,
	`{"a":1}x`, `{"a":1}{}`, `{"a":"unterminated}`, `{"a":`, `{`, ``, ` `,
	`[]`, `1`, `"s"`, `null`, `{"a":{"b":1}`, `{"a":[}`, `{1:2}`,
	`{"a":"\""}`, `{"a":"\\"}`, `{"a\"b":1}`, `{"\u0061":1}`,
}

func TestObjectParseMatchesEncodingJSON(t *testing.T) {
	for _, c := range jsonCases {
		var o Object
		err := o.Parse([]byte(c))
		want := json.Valid([]byte(c)) && len(c) > 0 && firstNonSpace(c) == '{'
		if (err == nil) != want {
			t.Errorf("Parse(%q) err=%v, want valid=%v", c, err, want)
		}
	}
}

func firstNonSpace(s string) byte {
	for i := 0; i < len(s); i++ {
		if s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' {
			return s[i]
		}
	}
	return 0
}

func FuzzObjectParse(f *testing.F) {
	for _, c := range jsonCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var o Object
		err := o.Parse(b)
		var m map[string]json.RawMessage
		jerr := json.Unmarshal(b, &m)
		// encoding/json accepts control characters nowhere and invalid
		// UTF-8 everywhere; Parse skips string content, so only compare
		// on inputs where both questions are moot.
		if !utf8.Valid(b) {
			return
		}
		for _, c := range b {
			if c < 0x20 && c != ' ' && c != '\t' && c != '\n' && c != '\r' {
				return
			}
		}
		if (err == nil) != (jerr == nil && m != nil) {
			t.Fatalf("Parse(%q) err=%v, encoding/json err=%v", b, err, jerr)
		}
		if err != nil {
			return
		}
		for k, v := range m {
			s, ok := o.Lookup(k)
			if !ok {
				t.Fatalf("Lookup(%q) missing in %q", k, b)
			}
			if string(o.Raw(s)) != string(v) {
				// encoding/json keeps the raw value; last one wins in both.
				t.Fatalf("Lookup(%q) = %q, want %q", k, o.Raw(s), v)
			}
		}
	})
}

func TestLookupAndHasPath(t *testing.T) {
	b := []byte(`{"model":"m","metadata":{"generation_name":"g","tags":null},"user":null,"n":{"x":{"y":1}},"s":"str","mo\u0064e":2}`)
	var o Object
	if err := o.Parse(b); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{
		"model": true, "user": true, "metadata": true, "metadata.generation_name": true,
		"metadata.tags": true, "metadata.missing": false, "missing": false, "missing.x": false,
		"n.x.y": true, "n.x.z": false, "s.x": false, "mode": true, "model.x": false,
	} {
		if got := o.HasPath(path); got != want {
			t.Errorf("HasPath(%q) = %v, want %v", path, got, want)
		}
	}
	if s, ok := o.Lookup("metadata"); !ok || string(o.Raw(s)) != `{"generation_name":"g","tags":null}` {
		t.Errorf("Lookup(metadata) = %q, %v", o.Raw(s), ok)
	}
}

func TestManyMembers(t *testing.T) {
	b := []byte(`{`)
	for i := 0; i < 60; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `"k`...)
		b = append(b, byte('0'+i/10), byte('0'+i%10))
		b = append(b, `":1`...)
	}
	b = append(b, `,"model":"x"}`...)
	var body Body
	if r := ParseBody(b, &body); r != nil {
		t.Fatal(r.Message)
	}
	if body.Model != "x" || body.Len() != 61 || !body.HasPath("k59") {
		t.Fatalf("model %q len %d", body.Model, body.Len())
	}
}

func TestDeepNestingRefused(t *testing.T) {
	b := []byte(`{"a":`)
	for i := 0; i < 10000; i++ {
		b = append(b, '[')
	}
	var o Object
	if o.Parse(b) == nil {
		t.Fatal("accepted")
	}
}

func TestAppendString(t *testing.T) {
	for in, want := range map[string]string{
		"plain":       `"plain"`,
		`q"b\`:        `"q\"b\\"`,
		"nl\n\t\x01":  `"nl\n\t\u0001"`,
		"<&> é":       `"<&> é"`,
		"bad\xffutf8": "\"bad\ufffdutf8\"",
		"":            `""`,
	} {
		got := string(AppendString(nil, in))
		if got != want {
			t.Errorf("AppendString(%q) = %s, want %s", in, got, want)
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("AppendString(%q) invalid JSON", in)
		}
	}
}

// TestStringBoundaries puts escapes and quotes at every offset around the
// eight-byte and 64-byte steps of scanString.
func TestStringBoundaries(t *testing.T) {
	for n := 0; n < 140; n++ {
		for _, esc := range []string{`\"`, `\\`, `\u00e9`, `\n`, `\\\"`} {
			for p := 0; p <= n; p += 1 + n/20 {
				val := strings.Repeat("a", p) + esc + strings.Repeat("b", n-p)
				doc := `{"k":"` + val + `","z":1}`
				var o Object
				if err := o.Parse([]byte(doc)); err != nil {
					t.Fatalf("%q: %v", doc, err)
				}
				s, ok := o.Lookup("k")
				if !ok || string(o.Raw(s)) != `"`+val+`"` {
					t.Fatalf("%q: k = %q", doc, o.Raw(s))
				}
				if _, ok := o.Lookup("z"); !ok {
					t.Fatalf("%q: z lost", doc)
				}
			}
		}
		// An unterminated string of every length is refused.
		var o Object
		if o.Parse([]byte(`{"k":"`+strings.Repeat("a", n)+`\"}`)) == nil {
			t.Fatalf("unterminated accepted at %d", n)
		}
	}
}

package keys

import (
	"strings"
	"testing"
)

func TestGenerate(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		k := Generate()
		if !strings.HasPrefix(k, Prefix) || len(k) != 3+32 {
			t.Fatalf("bad key %q", k)
		}
		if err := Validate(k); err != nil {
			t.Fatalf("generated key invalid: %v", err)
		}
		if seen[k] {
			t.Fatal("duplicate key")
		}
		seen[k] = true
	}
}

func TestValidate(t *testing.T) {
	for _, k := range []string{"", "sk-", "pk-abc", "sk-has space", "sk-\x00", "sk-" + strings.Repeat("a", 300)} {
		if Validate(k) == nil {
			t.Errorf("Validate(%q) accepted", k)
		}
	}
	for _, k := range []string{"sk-1234", "sk-my-own_key.x"} {
		if err := Validate(k); err != nil {
			t.Errorf("Validate(%q): %v", k, err)
		}
	}
}

func TestHashMatchesLiteLLM(t *testing.T) {
	// LiteLLM stores hashlib.sha256(key.encode()).hexdigest().
	const want = "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b"
	if got := Hash("sk-1234"); got != want {
		t.Fatalf("Hash(sk-1234) = %s, want %s", got, want)
	}
	if !LooksLikeHash(want) || LooksLikeHash("sk-1234") {
		t.Fatal("LooksLikeHash")
	}
}

func TestDisplayName(t *testing.T) {
	if got := DisplayName("sk-abcdefgh1234"); got != "sk-...1234" {
		t.Fatalf("DisplayName = %q", got)
	}
}

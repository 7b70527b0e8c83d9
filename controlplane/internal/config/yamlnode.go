package config

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"gopkg.in/yaml.v3"
)

// Limits on what a config may make the loader do.
const (
	maxDepth = 64        // nesting of mappings and sequences
	maxNodes = 1_000_000 // nodes visited, aliases expanded (a "billion laughs" guard)
)

// pair is one key/value of a mapping, after merge keys ("<<") are
// resolved. Key is the key node; Raw the value node as written (maybe an
// alias); Val the value with aliases followed.
type pair struct {
	Name string
	Key  *yaml.Node
	Raw  *yaml.Node
	Val  *yaml.Node
}

// deref follows aliases to the node they name.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 16; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// kindName names a node's type for error messages.
func kindName(n *yaml.Node) string {
	switch n = deref(n); {
	case n == nil:
		return "nothing"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!bool":
			return "a boolean"
		case "!!int", "!!float":
			return "a number"
		}
		return "a string"
	}
	return "an unsupported node"
}

// walker resolves mappings and converts YAML to JSON values, with bounds on
// depth and total work, and reports problems through the parser.
type walker struct {
	p      *parser
	budget int
	// expanding holds the alias targets currently being expanded, to stop
	// recursive anchors ("a: &x [*x]"), which yaml.v3 accepts.
	expanding map[*yaml.Node]bool
}

// spend charges one node against the budget.
func (w *walker) spend(n *yaml.Node, path string) bool {
	w.budget--
	if w.budget < 0 {
		if w.budget == -1 {
			w.p.errAt(n, "the config expands to more than %d nodes at %s (check anchors and aliases)", maxNodes, path)
		}
		return false
	}
	return true
}

// follow derefs n, refusing an alias to a node being expanded (a recursive
// anchor). Anchored nodes are marked while they are processed: done must be
// called when the returned node has been fully processed.
func (w *walker) follow(n *yaml.Node, path string) (*yaml.Node, func(), bool) {
	t := deref(n)
	if n != nil && n.Kind == yaml.AliasNode && (t == nil || w.expanding[t]) {
		w.p.errAt(n, "%s uses alias *%s inside the value it names", path, n.Value)
		return nil, nil, false
	}
	if t == nil || t.Anchor == "" || w.expanding[t] {
		return t, func() {}, true
	}
	w.expanding[t] = true
	return t, func() { delete(w.expanding, t) }, true
}

// pairs returns the entries of mapping n (which must be a MappingNode, not
// an alias) with merge keys expanded: explicit keys win over merged ones, and
// earlier merged mappings win over later ones, as in YAML 1.1. Duplicate
// explicit keys are an error. ok is false when an error was reported.
func (w *walker) pairs(n *yaml.Node, path string) ([]pair, bool) {
	return w.pairsDepth(n, path, 0)
}

func (w *walker) pairsDepth(n *yaml.Node, path string, depth int) ([]pair, bool) {
	if depth > maxDepth {
		w.p.errAt(n, "%s has merge keys (<<) nested too deeply", path)
		return nil, false
	}
	var explicit, merged []pair
	seen := map[string]*yaml.Node{}
	ok := true
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !w.spend(k, path) {
			return nil, false
		}
		kd := deref(k)
		if kd == nil || kd.Kind != yaml.ScalarNode {
			w.p.errAt(k, "%s has a key that is %s; keys must be strings", path, kindName(k))
			ok = false
			continue
		}
		if kd.ShortTag() == "!!merge" {
			m, good := w.merge(v, path, depth)
			ok = ok && good
			merged = append(merged, m...)
			continue
		}
		name := kd.Value
		if first, dup := seen[name]; dup {
			w.p.errAt(k, "%s is defined twice (first at line %d)", joinPath(path, name), first.Line)
			ok = false
			continue
		}
		seen[name] = k
		explicit = append(explicit, pair{Name: name, Key: k, Raw: v, Val: v})
	}
	out := explicit
	for _, m := range merged {
		if _, dup := seen[m.Name]; dup {
			continue
		}
		seen[m.Name] = m.Key
		out = append(out, m)
	}
	for i := range out {
		out[i].Val = deref(out[i].Val)
	}
	return out, ok
}

// merge expands the value of a "<<" key: a mapping or a list of mappings.
func (w *walker) merge(v *yaml.Node, path string, depth int) ([]pair, bool) {
	t, done, ok := w.follow(v, path)
	if !ok {
		return nil, false
	}
	defer done()
	var sources []*yaml.Node
	switch t.Kind {
	case yaml.MappingNode:
		sources = []*yaml.Node{t}
	case yaml.SequenceNode:
		sources = t.Content
	default:
		w.p.errAt(v, "<< in %s must merge a mapping or a list of mappings", path)
		return nil, false
	}
	var out []pair
	seen := map[string]bool{}
	for _, s := range sources {
		st, sdone, ok := w.follow(s, path)
		if !ok {
			return nil, false
		}
		if st.Kind != yaml.MappingNode {
			sdone()
			w.p.errAt(s, "<< in %s must merge a mapping or a list of mappings", path)
			return nil, false
		}
		ps, ok := w.pairsDepth(st, path, depth+1)
		sdone()
		if !ok {
			return nil, false
		}
		for _, p := range ps {
			if !seen[p.Name] {
				seen[p.Name] = true
				out = append(out, p)
			}
		}
	}
	return out, true
}

// value converts n to a JSON-compatible Go value (map[string]any, []any,
// string, bool, int64/uint64, float64 or nil). Timestamps and other tagged
// scalars keep their text.
func (w *walker) value(n *yaml.Node, path string, depth int) (any, bool) {
	if depth > maxDepth {
		w.p.errAt(n, "%s is nested more than %d levels deep", path, maxDepth)
		return nil, false
	}
	if !w.spend(n, path) {
		return nil, false
	}
	t, done, ok := w.follow(n, path)
	if !ok {
		return nil, false
	}
	defer done()
	switch t.Kind {
	case yaml.MappingNode:
		ps, ok := w.pairs(t, path)
		if !ok {
			return nil, false
		}
		m := make(map[string]any, len(ps))
		for _, p := range ps {
			v, good := w.value(p.Raw, joinPath(path, p.Name), depth+1)
			ok = ok && good
			m[p.Name] = v
		}
		return m, ok
	case yaml.SequenceNode:
		l := make([]any, 0, len(t.Content))
		for i, c := range t.Content {
			v, good := w.value(c, path+"["+strconv.Itoa(i)+"]", depth+1)
			ok = ok && good
			l = append(l, v)
		}
		return l, ok
	case yaml.ScalarNode:
		return w.scalar(t, path)
	}
	w.p.errAt(n, "%s is an unsupported YAML node", path)
	return nil, false
}

func (w *walker) scalar(n *yaml.Node, path string) (any, bool) {
	switch n.ShortTag() {
	case "!!null":
		return nil, true
	case "!!bool":
		var b bool
		if err := n.Decode(&b); err != nil {
			w.p.errAt(n, "%s is not a valid boolean", path)
			return nil, false
		}
		return b, true
	case "!!int":
		var i int64
		if err := n.Decode(&i); err == nil {
			return i, true
		}
		var u uint64
		if err := n.Decode(&u); err == nil {
			return u, true
		}
		w.p.errAt(n, "%s is out of range", path)
		return nil, false
	case "!!float":
		var f float64
		if err := n.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			w.p.errAt(n, "%s must be a finite number", path)
			return nil, false
		}
		return f, true
	}
	return n.Value, true
}

// rawJSON converts n to JSON; nil when n is null.
func (w *walker) rawJSON(n *yaml.Node, path string) (json.RawMessage, bool) {
	if isNull(n) {
		return nil, true
	}
	v, ok := w.value(n, path, 0)
	if !ok {
		return nil, false
	}
	b, err := json.Marshal(v)
	if err != nil {
		w.p.errAt(n, "%s cannot be represented as JSON", path)
		return nil, false
	}
	return b, true
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func indexPath(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

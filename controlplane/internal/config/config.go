package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/settings"
)

// Config is what a LiteLLM-style proxy config file holds for Tollgate.
type Config struct {
	// Models are the model_list deployments, in file order, with FromConfig
	// set. CreatedAt and UpdatedAt are left zero.
	Models []store.Model
	// GeneralSettings is general_settings as a JSON object, validated with
	// settings.Validate; nil when the file has none. master_key and
	// database_url are removed (they are returned below and must never be
	// stored or synced). LiteLLM's litellm_settings.key_generation_settings
	// is moved here as key_generation_settings.
	GeneralSettings json.RawMessage
	// LiteLLMSettings, RouterSettings and EnvironmentVariables are those
	// sections as JSON objects, kept but not interpreted; nil when absent.
	// environment_variables are not applied to the process environment.
	LiteLLMSettings      json.RawMessage
	RouterSettings       json.RawMessage
	EnvironmentVariables json.RawMessage
	// MasterKey is general_settings.master_key, with an os.environ/NAME
	// reference resolved; "" when absent.
	MasterKey string
	// DatabaseURL is general_settings.database_url, resolved like MasterKey.
	DatabaseURL string
	// Warnings are problems that do not stop the config from loading, each
	// prefixed with the file and line.
	Warnings []string
}

// Error is one problem in a config file, at a line (and column) when known.
type Error struct {
	File   string
	Line   int // 1-based; 0 when the problem has no position
	Column int // 1-based; 0 when only the line is useful
	Msg    string
}

// Error renders "file:line:col: msg", "file:line: msg" or "file: msg".
func (e *Error) Error() string {
	switch {
	case e.Line == 0:
		return e.File + ": " + e.Msg
	case e.Column == 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Column, e.Msg)
}

// Errors is every problem found in a config file (at most maxErrors), in
// file order. Parse and Load return it for anything wrong with the file;
// errors.As finds the first *Error.
type Errors []*Error

// Error renders one problem per line.
func (es Errors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Unwrap returns the individual errors.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

const (
	maxFileSize  = 16 << 20
	maxErrors    = 20
	maxIDLen     = 256
	maxURLLen    = 2048
	maxSecretLen = 4096
	envPrefix    = "os.environ/"
)

// Sections Tollgate reads.
var sections = []string{"model_list", "general_settings", "litellm_settings", "router_settings", "environment_variables"}

// LiteLLM sections Tollgate accepts with a warning and ignores.
var ignoredSections = []string{
	"credential_list", "guardrails", "callback_settings", "files_settings", "finetune_settings",
	"assistant_settings", "mcp_servers", "vector_store_registry", "search_tools",
}

// Load reads and parses the config file at path; errors name path.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if len(data) > maxFileSize {
		return nil, Errors{{File: path, Msg: fmt.Sprintf("the config is larger than %d MiB", maxFileSize>>20)}}
	}
	return Parse(data, path)
}

// Parse parses a LiteLLM proxy config. name is the file name used in error
// messages and warnings. Any problem is returned as Errors. Model
// credentials (api_key) are kept as written, os.environ/NAME references
// included; only general_settings.master_key and database_url are resolved.
func Parse(data []byte, name string) (*Config, error) {
	p := &parser{file: name}
	p.w = &walker{p: p, budget: maxNodes, expanding: map[*yaml.Node]bool{}}
	cfg := &Config{}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			cfg.Warnings = append(cfg.Warnings, name+": the config is empty")
			return cfg, nil
		}
		return nil, Errors{syntaxError(name, err, data)}
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		if len(next.Content) > 0 && !isNull(next.Content[0]) {
			return nil, Errors{{File: name, Line: next.Content[0].Line,
				Msg: "the file holds a second YAML document (after ---); put the whole config in one document"}}
		}
	case !errors.Is(err, io.EOF):
		return nil, Errors{syntaxError(name, err, data)}
	}

	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		cfg.Warnings = append(cfg.Warnings, name+": the config is empty")
		return cfg, nil
	}
	root := deref(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		p.errAt(root, "the config must be a mapping of sections (model_list, general_settings, ...), not %s", kindName(root))
		return nil, p.result()
	}
	top, _ := p.w.pairs(root, "")
	var gen, lit *pair
	envNames := map[string]bool{}
	for i := range top {
		q := top[i]
		switch q.Name {
		case "model_list":
			cfg.Models = p.modelList(q)
		case "general_settings":
			gen = &top[i]
		case "litellm_settings":
			cfg.LiteLLMSettings = p.section(q)
			lit = &top[i]
		case "router_settings":
			cfg.RouterSettings = p.section(q)
		case "environment_variables":
			cfg.EnvironmentVariables = p.section(q)
			if q.Val.Kind == yaml.MappingNode {
				ps, _ := p.w.pairs(q.Val, q.Name)
				for _, e := range ps {
					envNames[e.Name] = true
				}
			}
		case "include":
			p.errAt(q.Key, "include is not supported: put the whole config in this file")
		default:
			if slices.Contains(ignoredSections, q.Name) {
				p.warnAt(q.Key, "%s is not supported by Tollgate and is ignored", q.Name)
				continue
			}
			p.errAt(q.Key, "unknown top-level key %q%s", q.Name,
				hint(q.Name, slices.Concat(sections, ignoredSections, []string{"include"}), sections))
		}
	}
	p.general(cfg, gen, lit, envNames)
	if len(p.errs) > 0 {
		return nil, p.result()
	}
	cfg.Warnings = append(cfg.Warnings, p.warns...)
	return cfg, nil
}

type parser struct {
	file  string
	w     *walker
	errs  []*Error
	warns []string
}

// errAt reports a problem at n's line and column.
func (p *parser) errAt(n *yaml.Node, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: n.Line, Column: n.Column, Msg: fmt.Sprintf(format, args...)})
}

// errLine reports a problem at n's line (for "x is required": the column
// of the enclosing node would mislead).
func (p *parser) errLine(n *yaml.Node, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: n.Line, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) warnAt(n *yaml.Node, format string, args ...any) {
	p.warns = append(p.warns, fmt.Sprintf("%s:%d: %s", p.file, n.Line, fmt.Sprintf(format, args...)))
}

func (p *parser) result() error {
	slices.SortStableFunc(p.errs, func(a, b *Error) int {
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return a.Column - b.Column
	})
	out := Errors(p.errs)
	if len(out) > maxErrors {
		more := len(out) - maxErrors
		out = append(out[:maxErrors:maxErrors], &Error{File: p.file, Msg: fmt.Sprintf("%d more errors not shown", more)})
	}
	return out
}

// at is the node an error about q's value points at: the value itself when
// it is on the key's line (a scalar or a flow collection), else the key.
func at(q pair) *yaml.Node {
	if q.Key == nil || q.Val.Kind == yaml.ScalarNode || q.Val.Style&yaml.FlowStyle != 0 {
		return q.Val
	}
	return q.Key
}

// section converts a mapping section (or null) to JSON.
func (p *parser) section(q pair) json.RawMessage {
	if isNull(q.Val) {
		return nil
	}
	if q.Val.Kind != yaml.MappingNode {
		p.errAt(at(q), "%s must be a mapping, not %s", q.Name, kindName(q.Val))
		return nil
	}
	raw, _ := p.w.rawJSON(q.Val, q.Name)
	return raw
}

func (p *parser) modelList(q pair) []store.Model {
	if isNull(q.Val) {
		return nil
	}
	if q.Val.Kind != yaml.SequenceNode {
		p.errAt(at(q), "model_list must be a list of models, not %s", kindName(q.Val))
		return nil
	}
	type use struct {
		index int
		line  int
	}
	ids := map[string]use{}
	ordinal := map[string]int{}
	var out []store.Model
	for i, item := range q.Val.Content {
		m, idNode, ok := p.model(i, item, ordinal)
		if !ok {
			continue
		}
		if prev, dup := ids[m.ID]; dup {
			p.errAt(idNode, "model_list[%d].model_info.id %q is already used by model_list[%d] (line %d)", i, m.ID, prev.index, prev.line)
			continue
		}
		ids[m.ID] = use{i, idNode.Line}
		out = append(out, m)
	}
	return out
}

// model converts model_list[i]. idNode is where the id comes from (the
// model_info.id value, or the item).
func (p *parser) model(i int, item *yaml.Node, ordinal map[string]int) (m store.Model, idNode *yaml.Node, ok bool) {
	path := indexPath("model_list", i)
	errs := len(p.errs)
	item = deref(item)
	if item.Kind != yaml.MappingNode {
		p.errAt(item, "%s must be a mapping with model_name and litellm_params, not %s", path, kindName(item))
		return m, nil, false
	}
	ps, _ := p.w.pairs(item, path)
	var lp, mi *pair
	nameSet := false
	for j := range ps {
		q := ps[j]
		switch q.Name {
		case "model_name":
			nameSet = true
			m.ModelName = p.identifier(q, path+".model_name", true)
		case "litellm_params":
			lp = &ps[j]
		case "model_info":
			mi = &ps[j]
		default:
			fields := []string{"model_name", "litellm_params", "model_info"}
			p.errAt(q.Key, "%s.%s is not a field of a model_list entry%s", path, q.Name, hint(q.Name, fields, fields))
		}
	}
	if !nameSet {
		p.errLine(item, "%s.model_name is required", path)
	}
	m.FromConfig = true

	var lpIn, lpOut *int64
	switch {
	case lp == nil:
		p.errLine(item, "%s.litellm_params is required", path)
	case lp.Val.Kind != yaml.MappingNode:
		p.errAt(at(*lp), "%s.litellm_params must be a mapping, not %s", path, kindName(lp.Val))
	default:
		lpIn, lpOut = p.litellmParams(*lp, path+".litellm_params", &m)
	}

	var id string
	idNode = item
	var miIn, miOut *int64
	if mi != nil && !isNull(mi.Val) {
		if mi.Val.Kind != yaml.MappingNode {
			p.errAt(at(*mi), "%s.model_info must be a mapping, not %s", path, kindName(mi.Val))
		} else {
			var idPair *pair
			idPair, miIn, miOut = p.modelInfo(*mi, path+".model_info", &m)
			if idPair != nil {
				id, idNode = p.identifier(*idPair, path+".model_info.id", false), idPair.Val
			}
		}
	}
	// model_info prices win over litellm_params ones, as in LiteLLM.
	if v := cmpOr(miIn, lpIn); v != nil {
		m.InputCostPerToken = *v
	}
	if v := cmpOr(miOut, lpOut); v != nil {
		m.OutputCostPerToken = *v
	}
	if len(p.errs) > errs {
		return m, nil, false
	}
	if id == "" {
		// Deterministic, so that restarts with the same file keep the ids:
		// the model name and how many id-less entries with that name came
		// before (inserting other models does not renumber this one).
		n := ordinal[m.ModelName]
		ordinal[m.ModelName] = n + 1
		sum := sha256.Sum256([]byte("config:" + m.ModelName + "\x00" + strconv.Itoa(n)))
		id = hex.EncodeToString(sum[:])[:32]
	}
	m.ID = id
	return m, idNode, true
}

func cmpOr(a, b *int64) *int64 {
	if a != nil {
		return a
	}
	return b
}

// litellmParams fills m from litellm_params and returns its prices.
func (p *parser) litellmParams(lp pair, path string, m *store.Model) (in, out *int64) {
	ps, _ := p.w.pairs(lp.Val, path)
	params := map[string]any{}
	modelSet := false
	for _, q := range ps {
		qp := path + "." + q.Name
		switch q.Name {
		case "model":
			modelSet = true
			m.UpstreamModel = p.identifier(q, qp, true)
		case "api_key":
			m.APIKey = p.credential(q, qp)
		case "api_base":
			m.APIBase = p.apiBase(q, qp)
		case "api_version":
			m.APIVersion = p.identifier(q, qp, false)
		case "input_cost_per_token":
			in = p.price(q, qp)
		case "output_cost_per_token":
			out = p.price(q, qp)
		case "rpm":
			m.RPM = p.limit(q, qp)
		case "tpm":
			m.TPM = p.limit(q, qp)
		default:
			if q.Name == "litellm_credential_name" {
				p.warnAt(q.Key, "%s: credential_list is not supported; set api_key (os.environ/NAME) on the model", qp)
			}
			v, _ := p.w.value(q.Val, qp, 1)
			params[q.Name] = v
		}
	}
	if !modelSet {
		p.errLine(lp.Key, "%s.model is required", path)
	}
	if len(params) > 0 {
		m.Params, _ = json.Marshal(params)
	}
	return in, out
}

// modelInfo fills m from model_info and returns the id pair and prices.
func (p *parser) modelInfo(mi pair, path string, m *store.Model) (id *pair, in, out *int64) {
	ps, _ := p.w.pairs(mi.Val, path)
	for j := range ps {
		q := ps[j]
		qp := path + "." + q.Name
		switch q.Name {
		case "id":
			if !isNull(q.Val) {
				id = &ps[j]
			}
		case "access_groups":
			m.AccessGroups = p.stringList(q, qp)
		case "input_cost_per_token":
			in = p.price(q, qp)
		case "output_cost_per_token":
			out = p.price(q, qp)
		case "mode", "base_model":
			p.identifier(q, qp, false)
		}
	}
	m.ModelInfo, _ = p.w.rawJSON(mi.Val, path)
	return id, in, out
}

// str returns a scalar's text; null gives "". Anything else is an error.
func (p *parser) str(q pair, path string) (string, bool) {
	if isNull(q.Val) {
		return "", true
	}
	if q.Val.Kind != yaml.ScalarNode {
		p.errAt(at(q), "%s must be a string, not %s", path, kindName(q.Val))
		return "", false
	}
	return q.Val.Value, true
}

// identifier is a name-like string: at most 256 bytes, no control
// characters; when required, not empty or null.
func (p *parser) identifier(q pair, path string, required bool) string {
	s, ok := p.str(q, path)
	if !ok {
		return ""
	}
	switch {
	case s == "" && required:
		p.errAt(at(q), "%s must be a non-empty string", path)
	case len(s) > maxIDLen:
		p.errAt(at(q), "%s must be at most %d bytes", path, maxIDLen)
	case hasControl(s):
		p.errAt(at(q), "%s must not contain control characters", path)
	default:
		return s
	}
	return ""
}

// credential is a model's api_key: kept as written. Literals are accepted
// with a warning, since they end up in the database and on every proxy.
func (p *parser) credential(q pair, path string) string {
	s, ok := p.str(q, path)
	if !ok || s == "" {
		return ""
	}
	switch name, ref := strings.CutPrefix(s, envPrefix); {
	case len(s) > maxSecretLen:
		p.errAt(at(q), "%s must be at most %d bytes", path, maxSecretLen)
	case hasControl(s):
		p.errAt(at(q), "%s must not contain control characters", path)
	case ref && name == "":
		p.errAt(at(q), "%s: %s needs a variable name (os.environ/NAME)", path, envPrefix)
	default:
		if !ref {
			p.warnAt(q.Val, "%s is a literal secret: it will be stored in the database and sent to every proxy; prefer os.environ/NAME", path)
		}
		return s
	}
	return ""
}

// apiBase is an http(s) URL, or an os.environ/NAME reference resolved by
// the data plane like api_key.
func (p *parser) apiBase(q pair, path string) string {
	s, ok := p.str(q, path)
	if !ok || s == "" {
		return ""
	}
	if name, ref := strings.CutPrefix(s, envPrefix); ref {
		if name == "" || hasControl(name) {
			p.errAt(at(q), "%s: %s needs a variable name (os.environ/NAME)", path, envPrefix)
			return ""
		}
		return s
	}
	if len(s) > maxURLLen || hasControl(s) || !httpURL.MatchString(s) {
		p.errAt(at(q), "%s must be an http(s) URL or os.environ/NAME", path)
		return ""
	}
	return s
}

var httpURL = regexp.MustCompile(`^https?://[^/?#\s]+`)

// price converts a USD-per-token number to pico-USD; nil when null.
func (p *parser) price(q pair, path string) *int64 {
	if isNull(q.Val) {
		return nil
	}
	var f float64
	if !isNumber(q.Val) || q.Val.Decode(&f) != nil {
		p.errAt(at(q), "%s must be a non-negative number (USD per token), not %s", path, kindName(q.Val))
		return nil
	}
	pico, err := money.PriceFromUSD(f)
	if err != nil {
		p.errAt(at(q), "%s must be a non-negative number (USD per token, at most 1000)", path)
		return nil
	}
	return &pico
}

// limit is a non-negative integer (rpm, tpm); nil when null.
func (p *parser) limit(q pair, path string) *int64 {
	if isNull(q.Val) {
		return nil
	}
	var n int64
	ok := false
	switch q.Val.ShortTag() {
	case "!!int":
		ok = q.Val.Decode(&n) == nil
	case "!!float":
		var f float64
		if q.Val.Decode(&f) == nil && f == float64(int64(f)) && f < 1<<53 {
			n, ok = int64(f), true
		}
	}
	if !ok || n < 0 {
		p.errAt(at(q), "%s must be a non-negative integer", path)
		return nil
	}
	return &n
}

// stringList is a list of non-empty identifiers; nil when null.
func (p *parser) stringList(q pair, path string) []string {
	if isNull(q.Val) {
		return nil
	}
	if q.Val.Kind != yaml.SequenceNode {
		p.errAt(at(q), "%s must be a list of strings, not %s", path, kindName(q.Val))
		return nil
	}
	out := make([]string, 0, len(q.Val.Content))
	for i, c := range q.Val.Content {
		ip := indexPath(path, i)
		c = deref(c)
		if c.Kind != yaml.ScalarNode {
			p.errAt(c, "%s must be a string, not %s", ip, kindName(c))
			continue
		}
		if isNull(c) || c.Value == "" {
			p.errAt(c, "%s must be a non-empty string", ip)
			continue
		}
		if len(c.Value) > maxIDLen || hasControl(c.Value) {
			p.errAt(c, "%s must be at most %d bytes without control characters", ip, maxIDLen)
			continue
		}
		out = append(out, c.Value)
	}
	return out
}

// general builds GeneralSettings from general_settings and LiteLLM's
// litellm_settings.key_generation_settings and max_end_user_budget, and
// resolves the secrets.
func (p *parser) general(cfg *Config, gen, lit *pair, envNames map[string]bool) {
	type source struct {
		q      pair
		prefix string
	}
	fields := map[string]any{}
	src := map[string]source{}
	present := false
	errs := len(p.errs)
	var where *yaml.Node // the section errors without a better place point at
	if gen != nil {
		where = gen.Key
	} else if lit != nil {
		where = lit.Key
	}
	if gen != nil && !isNull(gen.Val) {
		if gen.Val.Kind != yaml.MappingNode {
			p.errAt(at(*gen), "general_settings must be a mapping, not %s", kindName(gen.Val))
			return
		}
		present = true
		ps, _ := p.w.pairs(gen.Val, "general_settings")
		for _, q := range ps {
			qp := "general_settings." + q.Name
			switch q.Name {
			case "master_key":
				cfg.MasterKey = p.secret(q, qp, envNames)
				if cfg.MasterKey != "" && !strings.HasPrefix(q.Val.Value, envPrefix) {
					p.warnAt(q.Val, "%s is written in the config file; prefer os.environ/NAME or --master-key", qp)
				}
				continue
			case "database_url":
				cfg.DatabaseURL = p.secret(q, qp, envNames)
				continue
			}
			fields[q.Name], _ = p.w.value(q.Val, qp, 1)
			src[q.Name] = source{q, "general_settings"}
		}
	}
	if lit != nil && lit.Val.Kind == yaml.MappingNode {
		ps, _ := p.w.pairs(lit.Val, "litellm_settings")
		for _, q := range ps {
			// LiteLLM documents these under litellm_settings; Tollgate
			// keeps them with the other proxy-wide settings.
			if (q.Name != "key_generation_settings" && q.Name != "max_end_user_budget") || isNull(q.Val) {
				continue
			}
			lp := "litellm_settings." + q.Name
			v, _ := p.w.value(q.Val, lp, 1)
			if g, dup := src[q.Name]; dup {
				a, _ := json.Marshal(v)
				b, _ := json.Marshal(fields[q.Name])
				if !bytes.Equal(a, b) {
					p.errAt(q.Key, "%s conflicts with general_settings.%s (line %d); keep one", lp, q.Name, g.q.Key.Line)
				}
				continue
			}
			present = true
			fields[q.Name] = v
			src[q.Name] = source{q, "litellm_settings"}
			p.warnAt(q.Key, "%s is applied as general_settings.%s", lp, q.Name)
		}
	}
	if !present {
		return
	}
	raw, err := json.Marshal(fields)
	if err != nil {
		p.errAt(where, "general_settings cannot be represented as JSON")
		return
	}
	if len(p.errs) > errs {
		return
	}
	if err := settings.Validate(raw); err != nil {
		var se *settings.Error
		if !errors.As(err, &se) {
			p.errAt(where, "%v", err)
			return
		}
		segs := splitPath(se.Path)
		s, ok := src[segs[0].key]
		if !ok {
			p.errAt(where, "%s", se.Error())
			return
		}
		msg := se.Error()
		if s.prefix != "general_settings" {
			msg = s.prefix + "." + strings.TrimPrefix(msg, "general_settings.")
		}
		q := p.locate(s.q, segs[1:])
		n := at(q)
		if strings.HasPrefix(se.Msg, "is not a known field") && q.Key != nil {
			n = q.Key
		}
		p.errAt(n, "%s", msg)
		return
	}
	cfg.GeneralSettings = raw
}

// secret reads master_key or database_url, resolving os.environ/NAME.
func (p *parser) secret(q pair, path string, envNames map[string]bool) string {
	s, ok := p.str(q, path)
	if !ok || s == "" {
		return ""
	}
	name, ref := strings.CutPrefix(s, envPrefix)
	if !ref {
		return s
	}
	if name == "" {
		p.errAt(at(q), "%s: %s needs a variable name (os.environ/NAME)", path, envPrefix)
		return ""
	}
	v, set := os.LookupEnv(name)
	if !set || v == "" {
		hint := ""
		if envNames[name] {
			hint = " (environment_variables in the config are not applied to the environment)"
		}
		p.errAt(at(q), "%s refers to environment variable %s, which is not set%s", path, name, hint)
		return ""
	}
	return v
}

type segment struct {
	key   string
	index int // -1 for a key
}

// splitPath splits "a.b[1].c" into a, b, [1], c.
func splitPath(path string) []segment {
	var out []segment
	for _, part := range strings.Split(path, ".") {
		name, rest, _ := strings.Cut(part, "[")
		out = append(out, segment{key: name, index: -1})
		for rest != "" {
			num, after, _ := strings.Cut(rest, "]")
			i, err := strconv.Atoi(num)
			if err != nil {
				break
			}
			out = append(out, segment{index: i})
			_, rest, _ = strings.Cut(after, "[")
		}
	}
	return out
}

// locate walks segs down from q and returns the deepest pair it reaches.
func (p *parser) locate(q pair, segs []segment) pair {
	for _, s := range segs {
		if s.index >= 0 {
			if q.Val.Kind != yaml.SequenceNode || s.index >= len(q.Val.Content) {
				return q
			}
			item := q.Val.Content[s.index]
			q = pair{Raw: item, Val: deref(item)}
			continue
		}
		if q.Val.Kind != yaml.MappingNode {
			return q
		}
		ps, _ := p.w.pairs(q.Val, "")
		found := false
		for _, c := range ps {
			if c.Name == s.key {
				q, found = c, true
				break
			}
		}
		if !found {
			return q
		}
	}
	return q
}

func isNumber(n *yaml.Node) bool {
	t := n.ShortTag()
	return n.Kind == yaml.ScalarNode && (t == "!!int" || t == "!!float")
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// hint returns `; did you mean "x"?` when got is a near miss of one of
// known, else ` (expected one of: ...)` listing expected.
func hint(got string, known, expected []string) string {
	best, bestD := "", 4
	for _, k := range known {
		if len(got) > 64 {
			break
		}
		d := editDistance(strings.ToLower(got), k)
		if d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" || bestD > len(best)/3+1 {
		return " (expected one of: " + strings.Join(expected, ", ") + ")"
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var (
	syntaxLine    = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	unknownAnchor = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)
	quoted        = regexp.MustCompile("`[^`]*`")
)

// parserProblems are yaml.v3's parser (not scanner) errors, which it reports
// with a 0-based line number.
var parserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// syntaxError turns a yaml.v3 error into an *Error with the right line.
// yaml.v3 omits the line for problems on the first line.
func syntaxError(file string, err error, data []byte) *Error {
	msg := err.Error()
	if m := syntaxLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		fallback := line
		if parserProblems[m[2]] {
			fallback = line + 1
		}
		return &Error{File: file, Line: problemLine(data, line-1, fallback, m[2]), Msg: "invalid YAML: " + m[2]}
	}
	// "cannot decode !!str `<value>` as a !!int" would echo the value,
	// which may be a secret.
	problem := quoted.ReplaceAllString(strings.TrimPrefix(msg, "yaml: "), "a value")
	e := &Error{File: file, Msg: "invalid YAML: " + problem}
	switch m := unknownAnchor.FindStringSubmatch(problem); {
	case m != nil:
		e.Line = aliasLine(data, m[1])
	case strings.HasPrefix(problem, "cannot decode"), strings.HasPrefix(problem, "attempted to go past"):
	default:
		e.Line = problemLine(data, 1, 1, problem)
	}
	return e
}

// problemLine finds the line of a syntax error. yaml.v3 reports the line
// where the enclosing construct starts, which can be far above the
// offending line, omits line 1, and counts from 0 for parser (as opposed to
// scanner) errors. The offending line is the first, from line from on,
// where the file cut after that line already fails with the same problem.
// After maxProblemScan lines it gives up and returns fallback.
func problemLine(data []byte, from, fallback int, problem string) int {
	const maxProblemScan = 500
	lines := bytes.SplitAfter(data, []byte("\n"))
	from = max(from, 1)
	for n := from; n <= len(lines) && n < from+maxProblemScan; n++ {
		err := parseAll(bytes.Join(lines[:n], nil))
		if err != nil && strings.HasSuffix(err.Error(), ": "+problem) || err != nil && err.Error() == "yaml: "+problem {
			return n
		}
	}
	return fallback
}

// parseAll parses every document in data.
func parseAll(data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// aliasLine finds the line of the first "*name" alias in data (0 if none).
func aliasLine(data []byte, name string) int {
	re := regexp.MustCompile(`\*` + regexp.QuoteMeta(name) + `(?:[\s,\]}]|$)`)
	if loc := re.FindIndex(data); loc != nil {
		return bytes.Count(data[:loc[0]], []byte("\n")) + 1
	}
	return 0
}

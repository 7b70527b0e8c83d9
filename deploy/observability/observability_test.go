package observability

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

var promql = parser.NewParser(parser.Options{})

// metricNames parses expr and returns every metric name it selects.
func metricNames(t *testing.T, where, expr string) []string {
	t.Helper()
	e, err := promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q does not parse: %v", where, expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			if vs.Name == "" {
				t.Errorf("%s: selector without a metric name in %q", where, expr)
			}
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

func checkDocumented(t *testing.T, where string, names []string, used map[string]bool) {
	t.Helper()
	for _, n := range names {
		s, ok := Lookup(n)
		if !ok {
			t.Errorf("%s uses %s, which is not a documented series", where, n)
			continue
		}
		if s.Type == "histogram" && s.Name == n {
			t.Errorf("%s uses histogram %s without _bucket, _sum or _count", where, n)
		}
		used[s.Name] = true
	}
}

// TestPrometheusRules parses prometheus-rules.yaml the way Prometheus does
// (rulefmt with strict fields, every expr through the PromQL parser) and
// requires the alerts the README promises, on documented series only.
func TestPrometheusRules(t *testing.T) {
	groups, errs := rulefmt.ParseFile("prometheus-rules.yaml", false, model.UTF8Validation, promql, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, err := range errs {
		t.Error(err)
	}
	if groups == nil {
		t.FailNow()
	}
	alerts := map[string]bool{}
	used := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule that is not an alert", g.Name)
				continue
			}
			alerts[r.Alert] = true
			checkDocumented(t, "alert "+r.Alert, metricNames(t, "alert "+r.Alert, r.Expr), used)
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %s lacks a severity label or a summary", r.Alert)
			}
		}
	}
	for _, want := range []string{"TollgateProxyStale", "TollgateSpendOutboxBackingUp", "TollgateControlPlaneUnreachable", "TollgateWebhookFailing"} {
		if !alerts[want] {
			t.Errorf("no alert %s", want)
		}
	}
}

var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$instance", ".*")

// TestGrafanaDashboard requires valid JSON, a PromQL query in every panel
// that parses (with Grafana's variables substituted) and uses documented
// series only, and a panel for every documented series.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatal("grafana-dashboard.json is not valid JSON")
	}
	var dash struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&dash); err != nil {
		t.Fatal(err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Fatal("dashboard without title or uid")
	}
	used := map[string]bool{}
	n := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		n++
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			where := "panel " + p.Title
			checkDocumented(t, where, metricNames(t, where, grafanaVars.Replace(tg.Expr)), used)
		}
	}
	labelValues := regexp.MustCompile(`^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*),`)
	for _, v := range dash.Templating.List {
		if m := labelValues.FindStringSubmatch(v.Definition); m != nil {
			checkDocumented(t, "variable "+v.Name, []string{m[1]}, used)
		}
	}
	if n < 10 {
		t.Errorf("only %d panels", n)
	}
	for _, s := range Documented {
		if !used[s.Name] {
			t.Errorf("no dashboard panel shows %s", s.Name)
		}
	}
}

// TestSeriesDocumentedInREADME keeps the README's metric tables in step
// with Documented.
func TestSeriesDocumentedInREADME(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, s := range Documented {
		if !strings.Contains(readme, "`"+s.Name+"`") {
			t.Errorf("README does not document `%s`", s.Name)
		}
	}
}

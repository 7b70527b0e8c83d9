// Package helm_test checks the Helm chart in deploy/helm/tollgate: `helm lint --strict` and
// `helm template` (helm pinned in go.mod as a tool) with the default values, values-full.yaml
// and a few variants, then validates every rendered manifest offline.
//
// Validation: each document is decoded strictly into its typed Kubernetes object (k8s.io/api
// through an apimachinery scheme with strict decoding: unknown or duplicate fields, wrong types
// and unregistered kinds are errors — the schema check `kubectl apply` does server-side, without a
// cluster or downloaded JSON schemas), then cross-checked: names are DNS labels, selectors
// match pod labels, probes and Services use declared ports, mounts have volumes, every container
// runs non-root on a read-only root filesystem with resource requests. On top of that the test
// asserts the chart's promises: no secret value inlined by default, probes on the documented
// paths, the NetworkPolicy, the migration hook, preStop + grace for draining proxies.
package helm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "tollgate"
	kubeVersion = "1.34.0" // any version the chart's kubeVersion constraint (>=1.30) allows
)

var (
	helmOnce sync.Once
	helmErr  error
	helmHome string
)

// helm runs the pinned `go tool helm` with a throwaway HOME so nothing outside the test is read
// or written. The first call compiles helm (minutes on a cold build cache, then cached).
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	helmOnce.Do(func() {
		helmHome, helmErr = os.MkdirTemp("", "tollgate-helm-home")
		if helmErr == nil {
			_, helmErr = runHelm("version", "--short")
		}
	})
	if helmErr != nil {
		t.Fatalf("go tool helm: %v", helmErr)
	}
	return runHelm(args...)
}

func runHelm(args ...string) (string, error) {
	cmd := exec.Command("go", append([]string{"tool", "helm"}, args...)...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(helmHome, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(helmHome, "config"),
		"HELM_DATA_HOME="+filepath.Join(helmHome, "data"),
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if helmHome != "" {
		os.RemoveAll(helmHome)
	}
	os.Exit(code)
}

// variants are rendered and validated; each is also linted.
var variants = []struct {
	name string
	args []string
}{
	{"default", nil},
	{"full", []string{"-f", filepath.Join(chartDir, "values-full.yaml")}},
	{"embedded", []string{"--set", "database.enabled=false", "--set", "controlPlane.replicaCount=1"}},
	{"embedded-ephemeral", []string{"--set", "database.enabled=false", "--set", "controlPlane.replicaCount=1",
		"--set", "controlPlane.persistence.enabled=false", "--set", "networkPolicy.enabled=false",
		"--set", "proxy.autoscaling.enabled=false", "--set", "proxy.podDisruptionBudget.enabled=false",
		"--set", "config.create=false", "--set", "config.existingConfigMap=my-config",
		"--set", "serviceAccount.create=false"}},
	{"tls", []string{"-f", filepath.Join("testdata", "values-tls.yaml")}},
	{"dev-secret", []string{"--set", "secrets.createDevSecret=true",
		"--set", "secrets.devValues.masterKey=sk-dev-master-0123456789",
		"--set", "secrets.devValues.syncToken=sk-dev-sync-0123456789",
		"--set", "secrets.devValues.databaseUrl=postgres://tollgate:devpass@pg:5432/tollgate"}},
}

func TestChart(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	helm(t, "version") // compile once before the parallel subtests
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			lint := append([]string{"lint", "--strict", chartDir, "--kube-version", kubeVersion}, v.args...)
			if out, err := helm(t, lint...); err != nil {
				t.Fatalf("lint: %v", err)
			} else if !strings.Contains(out, "0 chart(s) failed") {
				t.Fatalf("lint output: %s", out)
			}
			out, err := helm(t, append([]string{"template", "rel", chartDir, "--namespace", "llm",
				"--kube-version", kubeVersion}, v.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			objs := decodeAll(t, out)
			checkConsistency(t, objs)
			switch v.name {
			case "default":
				checkDefault(t, out, objs)
			case "full":
				checkFull(t, objs)
			case "embedded", "embedded-ephemeral":
				checkEmbedded(t, objs, v.name == "embedded")
			case "dev-secret":
				checkDevSecret(t, out, objs)
			case "tls":
				checkTLS(t, objs, "tollgate-cp-cert", "tollgate-cp-cert", "tollgate-proxy-cert", "tollgate-proxy-cert")
			}
			if (v.name == "tls" || v.name == "full") != (len(objs.promRules) == 1) {
				t.Errorf("%d PrometheusRule(s) rendered", len(objs.promRules))
			}
		})
	}
}

// TestChartRefusesBadCombinations: invalid values fail at template time with a clear message.
func TestChartRefusesBadCombinations(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--set", "database.enabled=false"}, "needs Postgres"},
		{[]string{"--set", "proxy.terminationGracePeriodSeconds=20"}, "terminationGracePeriodSeconds must cover"},
		{[]string{"--set", "proxy.podDisruptionBudget.minAvailable=1"}, "not both"},
		{[]string{"--set", "secrets.masterKey.existingSecret="}, "secrets.masterKey.existingSecret is required"},
		{[]string{"--set", "secrets.createDevSecret=true"}, "secrets.devValues.masterKey is required"},
		{[]string{"--set", "tls.enabled=true"}, "tls.controlPlane.existingSecret is required"},
		{[]string{"--set", "tls.enabled=true", "--set", "tls.controlPlane.existingSecret=x", "--set", "tls.mutual.enabled=true"}, "tls.mutual.proxy.existingSecret is required"},
	}
	for _, c := range cases {
		out, err := helm(t, append([]string{"template", "rel", chartDir, "--kube-version", kubeVersion}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: want an error containing %q, got err=%v out=%.200s", c.args, c.want, err, out)
		}
	}
}

// ---- decoding ----

var codecs = func() serializer.CodecFactory {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, autoscalingv2.AddToScheme,
		policyv1.AddToScheme, networkingv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict)
}()

type rendered struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	configMaps  []*corev1.ConfigMap
	secrets     []*corev1.Secret
	jobs        []*batchv1.Job
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
	pdbs        []*policyv1.PodDisruptionBudget
	netpols     []*networkingv1.NetworkPolicy
	pvcs        []*corev1.PersistentVolumeClaim
	sas         []*corev1.ServiceAccount
	ingresses   []*networkingv1.Ingress
	promRules   []*rulefmt.RuleGroups
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

func decodeAll(t *testing.T, manifest string) *rendered {
	t.Helper()
	r := &rendered{}
	dec := codecs.UniversalDeserializer()
	n := 0
	for _, doc := range docSep.Split(manifest, -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		n++
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err == nil && head.Kind == "PrometheusRule" {
			r.promRules = append(r.promRules, decodePrometheusRule(t, doc))
			continue
		}
		obj, gvk, err := dec.Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Errorf("strict decode failed: %v\n%s", err, doc)
			continue
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			r.deployments = append(r.deployments, o)
		case *corev1.Service:
			r.services = append(r.services, o)
		case *corev1.ConfigMap:
			r.configMaps = append(r.configMaps, o)
		case *corev1.Secret:
			r.secrets = append(r.secrets, o)
		case *batchv1.Job:
			r.jobs = append(r.jobs, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			r.hpas = append(r.hpas, o)
		case *policyv1.PodDisruptionBudget:
			r.pdbs = append(r.pdbs, o)
		case *networkingv1.NetworkPolicy:
			r.netpols = append(r.netpols, o)
		case *corev1.PersistentVolumeClaim:
			r.pvcs = append(r.pvcs, o)
		case *corev1.ServiceAccount:
			r.sas = append(r.sas, o)
		case *networkingv1.Ingress:
			r.ingresses = append(r.ingresses, o)
		default:
			t.Errorf("unexpected kind %v", gvk)
		}
	}
	if n == 0 {
		t.Fatal("helm template rendered nothing")
	}
	return r
}

// decodePrometheusRule decodes the Prometheus Operator's PrometheusRule (a CRD, so not in
// k8s.io/api) strictly, and its spec the way Prometheus parses a rules file.
func decodePrometheusRule(t *testing.T, doc string) *rulefmt.RuleGroups {
	t.Helper()
	var pr struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec json.RawMessage `json:"spec"`
	}
	if err := yaml.UnmarshalStrict([]byte(doc), &pr); err != nil {
		t.Fatalf("PrometheusRule: %v", err)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Metadata.Name == "" {
		t.Errorf("PrometheusRule apiVersion %q name %q", pr.APIVersion, pr.Metadata.Name)
	}
	spec, err := yaml.JSONToYAML(pr.Spec)
	if err != nil {
		t.Fatal(err)
	}
	groups, errs := rulefmt.Parse(spec, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, err := range errs {
		t.Errorf("PrometheusRule spec: %v", err)
	}
	if groups == nil {
		t.FailNow()
	}
	return groups
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// ---- checks that hold for every rendering ----

type podOwner struct {
	kind, name string
	labels     map[string]string
	spec       *corev1.PodSpec
}

func (r *rendered) pods() []podOwner {
	var ps []podOwner
	for _, d := range r.deployments {
		ps = append(ps, podOwner{"Deployment", d.Name, d.Spec.Template.Labels, &d.Spec.Template.Spec})
	}
	for _, j := range r.jobs {
		ps = append(ps, podOwner{"Job", j.Name, j.Spec.Template.Labels, &j.Spec.Template.Spec})
	}
	return ps
}

func checkConsistency(t *testing.T, r *rendered) {
	t.Helper()
	names := func(kind, name string) {
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			t.Errorf("%s %q: %v", kind, name, errs)
		}
	}
	for _, s := range r.services {
		if errs := validation.IsDNS1035Label(s.Name); len(errs) > 0 {
			t.Errorf("Service %q: %v", s.Name, errs)
		}
	}
	cms := map[string]bool{}
	for _, c := range r.configMaps {
		names("ConfigMap", c.Name)
		cms[c.Name] = true
	}
	pvcs := map[string]bool{}
	for _, p := range r.pvcs {
		pvcs[p.Name] = true
	}
	for _, d := range r.deployments {
		names("Deployment", d.Name)
		sel, err := metaSelector(d.Spec.Selector.MatchLabels)
		if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("Deployment %s: selector %v does not match its pod labels %v", d.Name, d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
		}
	}
	for _, p := range r.pods() {
		checkPod(t, p, cms, pvcs)
	}
	// Services, PDBs, NetworkPolicies select pods that exist and use ports they declare.
	for _, s := range r.services {
		pod := matchPod(r, s.Spec.Selector)
		if pod == nil {
			t.Errorf("Service %s selects no rendered pod (%v)", s.Name, s.Spec.Selector)
			continue
		}
		for _, sp := range s.Spec.Ports {
			if sp.TargetPort.StrVal != "" && !hasPort(pod.spec, sp.TargetPort.StrVal) {
				t.Errorf("Service %s: targetPort %q not declared by %s", s.Name, sp.TargetPort.StrVal, pod.name)
			}
		}
	}
	for _, b := range r.pdbs {
		if matchPod(r, b.Spec.Selector.MatchLabels) == nil {
			t.Errorf("PDB %s selects no rendered pod", b.Name)
		}
		if (b.Spec.MinAvailable == nil) == (b.Spec.MaxUnavailable == nil) {
			t.Errorf("PDB %s: exactly one of minAvailable/maxUnavailable", b.Name)
		}
	}
	for _, n := range r.netpols {
		pod := matchPod(r, n.Spec.PodSelector.MatchLabels)
		if pod == nil {
			t.Errorf("NetworkPolicy %s selects no rendered pod", n.Name)
			continue
		}
		for _, in := range n.Spec.Ingress {
			for _, p := range in.Ports {
				if p.Port != nil && p.Port.StrVal != "" && !hasPort(pod.spec, p.Port.StrVal) {
					t.Errorf("NetworkPolicy %s: port %q not declared by %s", n.Name, p.Port.StrVal, pod.name)
				}
			}
		}
	}
	for _, h := range r.hpas {
		ok := false
		for _, d := range r.deployments {
			ok = ok || (h.Spec.ScaleTargetRef.Kind == "Deployment" && h.Spec.ScaleTargetRef.Name == d.Name)
		}
		if !ok {
			t.Errorf("HPA %s targets %v, not a rendered Deployment", h.Name, h.Spec.ScaleTargetRef)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas > h.Spec.MaxReplicas {
			t.Errorf("HPA %s: bad replica bounds", h.Name)
		}
	}
	for _, i := range r.ingresses {
		for _, rule := range i.Spec.Rules {
			for _, p := range rule.HTTP.Paths {
				found := false
				for _, s := range r.services {
					found = found || s.Name == p.Backend.Service.Name
				}
				if !found {
					t.Errorf("Ingress %s: backend %s is not a rendered Service", i.Name, p.Backend.Service.Name)
				}
			}
		}
	}
}

func checkPod(t *testing.T, p podOwner, cms, pvcs map[string]bool) {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range p.spec.Volumes {
		vols[v.Name] = v
		if v.ConfigMap != nil && !cms[v.ConfigMap.Name] && v.ConfigMap.Name != "my-config" {
			t.Errorf("%s %s: volume %s uses ConfigMap %s that is not rendered", p.kind, p.name, v.Name, v.ConfigMap.Name)
		}
		if v.PersistentVolumeClaim != nil && !pvcs[v.PersistentVolumeClaim.ClaimName] {
			t.Errorf("%s %s: volume %s uses PVC %s that is not rendered", p.kind, p.name, v.Name, v.PersistentVolumeClaim.ClaimName)
		}
	}
	psc := p.spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("%s %s: pod must run as a non-root UID", p.kind, p.name)
	}
	if p.spec.AutomountServiceAccountToken == nil || *p.spec.AutomountServiceAccountToken {
		t.Errorf("%s %s: service account token should not be mounted", p.kind, p.name)
	}
	for _, c := range p.spec.Containers {
		where := fmt.Sprintf("%s %s container %s", p.kind, p.name, c.Name)
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.Capabilities == nil || len(sc.Capabilities.Drop) == 0 {
			t.Errorf("%s: needs readOnlyRootFilesystem, no privilege escalation, dropped capabilities", where)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s: cpu and memory requests required", where)
		}
		for _, m := range c.VolumeMounts {
			if _, ok := vols[m.Name]; !ok {
				t.Errorf("%s: mount %s has no volume", where, m.Name)
			}
		}
		for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
			if pr != nil && pr.HTTPGet != nil && pr.HTTPGet.Port.StrVal != "" && !hasPort(p.spec, pr.HTTPGet.Port.StrVal) {
				t.Errorf("%s: probe port %q not declared", where, pr.HTTPGet.Port.StrVal)
			}
		}
		for _, e := range c.Env {
			if looksSecret(e.Name) && e.Value != "" {
				t.Errorf("%s: %s is inlined; it must come from a secretKeyRef", where, e.Name)
			}
		}
	}
}

func looksSecret(name string) bool {
	for _, s := range []string{"KEY", "TOKEN", "PASSWORD", "DATABASE_URL", "SECRET"} {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

func metaSelector(m map[string]string) (labels.Selector, error) {
	if len(m) == 0 {
		return nil, fmt.Errorf("empty selector")
	}
	return labels.SelectorFromSet(m), nil
}

func matchPod(r *rendered, sel map[string]string) *podOwner {
	s, err := metaSelector(sel)
	if err != nil {
		return nil
	}
	for _, p := range r.pods() {
		if p.kind == "Deployment" && s.Matches(labels.Set(p.labels)) {
			return &p
		}
	}
	return nil
}

func hasPort(spec *corev1.PodSpec, name string) bool {
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if p.Name == name {
				return true
			}
		}
	}
	return false
}

// ---- the chart's promises ----

func component(r *rendered, c string) *appsv1.Deployment {
	for _, d := range r.deployments {
		if d.Spec.Template.Labels["app.kubernetes.io/component"] == c {
			return d
		}
	}
	return nil
}

func envVar(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func checkSecretRef(t *testing.T, c corev1.Container, env, secret, key string) {
	t.Helper()
	e := envVar(c, env)
	if e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		t.Errorf("container %s: %s must come from a secretKeyRef, got %+v", c.Name, env, e)
		return
	}
	if ref := e.ValueFrom.SecretKeyRef; ref.Name != secret || ref.Key != key {
		t.Errorf("container %s: %s from %s/%s, want %s/%s", c.Name, env, ref.Name, ref.Key, secret, key)
	}
}

func checkProbe(t *testing.T, where string, p *corev1.Probe, path string) {
	t.Helper()
	if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.StrVal != "http" {
		t.Errorf("%s: want an httpGet probe on %s (port http), got %+v", where, path, p)
	}
}

func checkDefault(t *testing.T, manifest string, r *rendered) {
	if len(r.secrets) != 0 {
		t.Errorf("default values render %d Secret(s); credentials must come from existing Secrets", len(r.secrets))
	}
	if strings.Contains(manifest, "sk-") || strings.Contains(manifest, "postgres://") {
		t.Error("default manifest contains something that looks like a key or a database URL")
	}
	cp, px := component(r, "controlplane"), component(r, "proxy")
	if cp == nil || px == nil {
		t.Fatalf("want controlplane and proxy Deployments, got %d Deployments", len(r.deployments))
	}
	if *cp.Spec.Replicas != 2 {
		t.Errorf("control plane replicas %d, want 2", *cp.Spec.Replicas)
	}
	cpc, pxc := cp.Spec.Template.Spec.Containers[0], px.Spec.Template.Spec.Containers[0]
	checkSecretRef(t, cpc, "TOLLGATE_MASTER_KEY", "tollgate", "master-key")
	checkSecretRef(t, cpc, "TOLLGATE_SYNC_TOKEN", "tollgate", "sync-token")
	checkSecretRef(t, cpc, "TOLLGATE_DATABASE_URL", "tollgate", "database-url")
	checkSecretRef(t, pxc, "TOLLGATE_SYNC_TOKEN", "tollgate", "sync-token")
	if envVar(pxc, "TOLLGATE_MASTER_KEY") != nil || envVar(pxc, "TOLLGATE_DATABASE_URL") != nil {
		t.Error("the proxy must not receive the master key or the database URL")
	}
	checkProbe(t, "control plane readiness", cpc.ReadinessProbe, "/health")
	checkProbe(t, "control plane liveness", cpc.LivenessProbe, "/health")
	checkProbe(t, "proxy readiness", pxc.ReadinessProbe, "/health/readiness")
	checkProbe(t, "proxy liveness", pxc.LivenessProbe, "/health/liveliness")
	if !contains(cpc.Args, "--config=/etc/tollgate/config.yaml") || !contains(cpc.Args, "--grpc-addr=:50051") {
		t.Errorf("control plane args %v", cpc.Args)
	}
	if !contains(pxc.Args, "--control-plane=rel-tollgate-controlplane:50051") {
		t.Errorf("proxy args %v: must dial the control plane Service's gRPC port", pxc.Args)
	}
	// Draining: preStop sleep, then SIGTERM; grace covers the sleep, HTTP drain and outbox shipping.
	ps := pxc.Lifecycle
	if ps == nil || ps.PreStop == nil || ps.PreStop.Sleep == nil || ps.PreStop.Sleep.Seconds < 5 {
		t.Errorf("proxy needs a preStop sleep, got %+v", ps)
	} else if g := px.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g < ps.PreStop.Sleep.Seconds+35 {
		t.Errorf("proxy terminationGracePeriodSeconds %v too short for preStop %ds + 35 s", g, ps.PreStop.Sleep.Seconds)
	}
	// The cache (and the spend outbox next to it) on an emptyDir.
	cacheVol := ""
	for _, m := range pxc.VolumeMounts {
		if contains(pxc.Args, "--cache="+m.MountPath+"/proxy.db") {
			cacheVol = m.Name
		}
	}
	found := false
	for _, v := range px.Spec.Template.Spec.Volumes {
		found = found || (v.Name == cacheVol && v.EmptyDir != nil)
	}
	if !found {
		t.Errorf("proxy --cache must live on an emptyDir mount (args %v)", pxc.Args)
	}
	if q := pxc.Resources.Requests.Cpu().String(); q != "100m" {
		t.Errorf("proxy cpu request %s, want 100m", q)
	}
	if q := cpc.Resources.Requests.Cpu().String(); q != "200m" {
		t.Errorf("control plane cpu request %s, want 200m", q)
	}
	// Only proxies reach the gRPC port.
	if len(r.netpols) != 1 {
		t.Fatalf("want 1 NetworkPolicy, got %d", len(r.netpols))
	}
	np := r.netpols[0]
	if !labels.SelectorFromSet(np.Spec.PodSelector.MatchLabels).Matches(labels.Set(cp.Spec.Template.Labels)) {
		t.Error("NetworkPolicy must select the control-plane pods")
	}
	grpcRule := false
	for _, in := range np.Spec.Ingress {
		if len(in.Ports) == 1 && in.Ports[0].Port.StrVal == "grpc" {
			grpcRule = true
			if len(in.From) != 1 || in.From[0].PodSelector == nil ||
				!labels.SelectorFromSet(in.From[0].PodSelector.MatchLabels).Matches(labels.Set(px.Spec.Template.Labels)) ||
				labels.SelectorFromSet(in.From[0].PodSelector.MatchLabels).Matches(labels.Set(cp.Spec.Template.Labels)) {
				t.Errorf("gRPC ingress must come from proxy pods only: %+v", in.From)
			}
		}
	}
	if !grpcRule {
		t.Error("NetworkPolicy has no gRPC rule")
	}
	if len(r.hpas) != 1 || len(r.pdbs) != 2 {
		t.Errorf("want 1 HPA (proxy) and 2 PDBs, got %d and %d", len(r.hpas), len(r.pdbs))
	}
	if px.Spec.Replicas != nil {
		t.Error("with the HPA on, the proxy Deployment must not set replicas")
	}
	if len(r.jobs) != 1 || r.jobs[0].Annotations["helm.sh/hook"] != "pre-install,pre-upgrade" ||
		r.jobs[0].Spec.Template.Spec.Containers[0].Args[0] != "migrate" {
		t.Errorf("want one pre-install/pre-upgrade Job running `controlplane migrate`")
	} else {
		checkSecretRef(t, r.jobs[0].Spec.Template.Spec.Containers[0], "TOLLGATE_DATABASE_URL", "tollgate", "database-url")
	}
	if len(r.configMaps) != 1 || r.configMaps[0].Data["config.yaml"] == "" {
		t.Error("want the config ConfigMap with config.yaml")
	}
}

func checkFull(t *testing.T, r *rendered) {
	cp, px := component(r, "controlplane"), component(r, "proxy")
	if cp == nil || px == nil {
		t.Fatal("missing Deployments")
	}
	cpc, pxc := cp.Spec.Template.Spec.Containers[0], px.Spec.Template.Spec.Containers[0]
	checkSecretRef(t, cpc, "TOLLGATE_MASTER_KEY", "tollgate-admin", "master-key")
	checkSecretRef(t, cpc, "TOLLGATE_SYNC_TOKEN", "tollgate-sync", "token")
	checkSecretRef(t, cpc, "TOLLGATE_DATABASE_URL", "tollgate-pg-app", "uri")
	checkSecretRef(t, pxc, "OPENAI_API_KEY", "openai", "api-key")
	if len(r.secrets) != 0 {
		t.Error("full values render a Secret")
	}
	if len(r.ingresses) != 1 || len(r.hpas[0].Spec.Metrics) != 2 {
		t.Error("want the Ingress and a CPU+memory HPA")
	}
	if !contains(pxc.Args, "--control-plane=tollgate-full-controlplane:50051") || !contains(pxc.Args, "--listen=:4001") {
		t.Errorf("proxy args %v", pxc.Args)
	}
	if len(r.netpols[0].Spec.Ingress[0].From) != 2 || len(r.netpols[0].Spec.Ingress[1].From) != 2 {
		t.Errorf("NetworkPolicy extra peers missing: %+v", r.netpols[0].Spec.Ingress)
	}
	checkTLS(t, r, "tollgate-controlplane-tls", "tollgate-ca", "tollgate-proxy-tls", "tollgate-ca")
}

func checkEmbedded(t *testing.T, r *rendered, persistent bool) {
	cp := component(r, "controlplane")
	if cp == nil {
		t.Fatal("no control plane")
	}
	c := cp.Spec.Template.Spec.Containers[0]
	if *cp.Spec.Replicas != 1 || cp.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Error("embedded store: one replica, Recreate strategy")
	}
	if envVar(c, "TOLLGATE_DATABASE_URL") != nil || !contains(c.Args, "--data-dir=/var/lib/tollgate") {
		t.Errorf("embedded store: no database URL, --data-dir set; args %v", c.Args)
	}
	if len(r.jobs) != 0 {
		t.Error("no migration Job without Postgres")
	}
	if persistent != (len(r.pvcs) == 1) {
		t.Errorf("persistence=%v but %d PVCs", persistent, len(r.pvcs))
	}
	for _, p := range r.pdbs {
		if p.Name == cp.Name {
			t.Error("no control-plane PDB for a single replica")
		}
	}
}

func checkDevSecret(t *testing.T, manifest string, r *rendered) {
	if len(r.secrets) != 1 {
		t.Fatalf("want the dev Secret, got %d", len(r.secrets))
	}
	s := r.secrets[0]
	if s.StringData["master-key"] != "sk-dev-master-0123456789" || s.Annotations["helm.sh/hook"] == "" {
		t.Errorf("dev Secret %+v", s)
	}
	// The values appear in the Secret and nowhere else.
	if n := strings.Count(manifest, "sk-dev-master-0123456789"); n != 1 {
		t.Errorf("master key appears %d times in the manifest", n)
	}
	for _, d := range r.deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name != s.Name {
					t.Errorf("%s: %s refers to %s, want the dev Secret", d.Name, e.Name, e.ValueFrom.SecretKeyRef.Name)
				}
			}
		}
	}
}

// checkTLS: the control plane serves TLS from the server Secret (and verifies proxies against
// the client CA), probes use HTTPS, and proxies verify the control plane with the CA and present
// their client certificate; every flag names a file that a read-only Secret mount provides.
func checkTLS(t *testing.T, r *rendered, serverSecret, caSecret, clientSecret, clientCASecret string) {
	t.Helper()
	cp, px := component(r, "controlplane"), component(r, "proxy")
	if cp == nil || px == nil {
		t.Fatal("missing Deployments")
	}
	cpc, pxc := cp.Spec.Template.Spec.Containers[0], px.Spec.Template.Spec.Containers[0]
	for _, pr := range []*corev1.Probe{cpc.ReadinessProbe, cpc.LivenessProbe} {
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			t.Errorf("control plane probe must use HTTPS with TLS on: %+v", pr)
		}
	}
	if cp.Spec.Template.Annotations["prometheus.io/scheme"] != "https" {
		t.Errorf("control plane scrape scheme %q", cp.Spec.Template.Annotations["prometheus.io/scheme"])
	}
	checkFileFlag(t, cp, cpc, "--tls-cert", serverSecret, "tls.crt")
	checkFileFlag(t, cp, cpc, "--tls-key", serverSecret, "tls.key")
	checkFileFlag(t, cp, cpc, "--client-ca", clientCASecret, "ca.crt")
	checkFileFlag(t, px, pxc, "--tls-ca", caSecret, "ca.crt")
	checkFileFlag(t, px, pxc, "--tls-cert", clientSecret, "tls.crt")
	checkFileFlag(t, px, pxc, "--tls-key", clientSecret, "tls.key")
	for _, c := range []corev1.Container{cpc, pxc} {
		if !contains(c.Args, "--log-format=json") || !contains(c.Args, "--otlp-endpoint=http://otel-collector.observability:4318") {
			t.Errorf("%s args %v: want --log-format=json and --otlp-endpoint", c.Name, c.Args)
		}
	}
	want, err := os.ReadFile(filepath.Join("..", "observability", "prometheus-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ref, errs := rulefmt.Parse(want, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if len(errs) > 0 || len(r.promRules) != 1 {
		t.Fatalf("rules: %v, %d PrometheusRules", errs, len(r.promRules))
	}
	got := r.promRules[0]
	if len(got.Groups) != len(ref.Groups) {
		t.Fatalf("PrometheusRule has %d groups, deploy/observability %d", len(got.Groups), len(ref.Groups))
	}
	for i := range ref.Groups {
		if len(got.Groups[i].Rules) != len(ref.Groups[i].Rules) {
			t.Errorf("group %s: %d rules, want %d", ref.Groups[i].Name, len(got.Groups[i].Rules), len(ref.Groups[i].Rules))
			continue
		}
		for j, rr := range ref.Groups[i].Rules {
			if g := got.Groups[i].Rules[j]; g.Alert != rr.Alert || g.Expr != rr.Expr || g.Annotations["summary"] != rr.Annotations["summary"] {
				t.Errorf("rule %s differs from deploy/observability", rr.Alert)
			}
		}
	}
}

// checkFileFlag finds --flag=<dir>/<file> in c's args and requires a read-only mount of dir from a
// volume of Secret secret that projects file.
func checkFileFlag(t *testing.T, d *appsv1.Deployment, c corev1.Container, flag, secret, file string) {
	t.Helper()
	var path string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			path = v
		}
	}
	if path == "" {
		t.Errorf("%s: no %s in %v", c.Name, flag, c.Args)
		return
	}
	dir, name := filepath.Dir(path), filepath.Base(path)
	if name != file {
		t.Errorf("%s %s=%s: want a file named %s", c.Name, flag, path, file)
	}
	for _, m := range c.VolumeMounts {
		if m.MountPath != dir {
			continue
		}
		if !m.ReadOnly {
			t.Errorf("%s: %s must be mounted read-only", c.Name, dir)
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name != m.Name {
				continue
			}
			if v.Secret == nil || v.Secret.SecretName != secret {
				t.Errorf("%s %s: volume %s is not Secret %s", c.Name, flag, v.Name, secret)
				return
			}
			for _, it := range v.Secret.Items {
				if it.Path == name {
					return
				}
			}
			t.Errorf("%s %s: Secret volume %s projects no %s", c.Name, flag, v.Name, name)
			return
		}
	}
	t.Errorf("%s %s: no volume mounted at %s", c.Name, flag, dir)
}

// TestChartRulesMatchDeploy keeps the chart's copy of the alert rules identical to
// deploy/observability/prometheus-rules.yaml (Helm cannot read files outside the chart).
func TestChartRulesMatchDeploy(t *testing.T) {
	a, err := os.ReadFile(filepath.Join(chartDir, "files", "prometheus-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("..", "observability", "prometheus-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("deploy/helm/tollgate/files/prometheus-rules.yaml differs from deploy/observability/prometheus-rules.yaml: copy it")
	}
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

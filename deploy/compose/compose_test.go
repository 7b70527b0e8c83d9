// Package compose_test checks deploy/compose.yaml without a Docker engine (none runs here): the
// file parses, every reference (depends_on, build Dockerfiles, mounted files, HAProxy servers)
// points at something that exists, and secrets come from the environment, not the file.
package compose_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

type service struct {
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Environment map[string]string         `yaml:"environment"`
	DependsOn   map[string]map[string]any `yaml:"depends_on"`
	Volumes     []string                  `yaml:"volumes"`
	Command     []string                  `yaml:"command"`
}

func TestCompose(t *testing.T) {
	raw, err := os.ReadFile("../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]service `yaml:"services"`
		Volumes  map[string]any     `yaml:"volumes"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for _, want := range []string{"postgres", "migrate", "controlplane-1", "controlplane-2", "proxy-1", "proxy-2", "proxy-3", "lb"} {
		if _, ok := f.Services[want]; !ok {
			t.Errorf("service %s missing", want)
		}
	}
	if c := f.Services["migrate"].Command; len(c) != 1 || c[0] != "migrate" {
		t.Errorf("migrate runs %v", c)
	}
	for name, s := range f.Services {
		for dep := range s.DependsOn {
			if _, ok := f.Services[dep]; !ok {
				t.Errorf("%s depends on unknown service %s", name, dep)
			}
		}
		if s.Build != nil {
			if _, err := os.Stat(filepath.Join("..", s.Build.Context, s.Build.Dockerfile)); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		for _, v := range s.Volumes {
			src := strings.SplitN(v, ":", 2)[0]
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join("..", src)); err != nil {
					t.Errorf("%s mounts %s: %v", name, src, err)
				}
			} else if _, ok := f.Volumes[src]; !ok {
				t.Errorf("%s uses undeclared volume %s", name, src)
			}
		}
		for k, v := range s.Environment {
			if (strings.Contains(k, "KEY") || strings.Contains(k, "TOKEN")) && !strings.HasPrefix(v, "${") {
				t.Errorf("%s: %s must come from the environment, not the file", name, k)
			}
		}
		if strings.HasPrefix(name, "proxy-") && s.Environment["TOLLGATE_MASTER_KEY"] != "" {
			t.Errorf("%s receives the master key", name)
		}
	}
	cfg, err := os.ReadFile("haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^\s*server \S+ ([a-z0-9-]+):\d+`).FindAllStringSubmatch(string(cfg), -1) {
		if _, ok := f.Services[m[1]]; !ok {
			t.Errorf("haproxy.cfg targets unknown service %s", m[1])
		}
	}
	for _, path := range []string{"/health/readiness", "GET /health\n", "bind :50051"} {
		if !strings.Contains(string(cfg), path) {
			t.Errorf("haproxy.cfg lacks %q", path)
		}
	}
}

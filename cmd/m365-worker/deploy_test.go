package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"
)

// The compose file and the NATS configs cannot run here (no Docker engine),
// so they are parsed and checked.

func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
			Build       struct {
				Context    string `yaml:"context"`
				Dockerfile string `yaml:"dockerfile"`
			} `yaml:"build"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	w, ok := c.Services["worker"]
	if !ok {
		t.Fatal("no worker service")
	}
	if w.Command[0] != "worker" || w.Environment["M365_NATS"] != "nats://nats:4222" {
		t.Errorf("worker service: %+v", w)
	}
	if _, err := os.Stat(filepath.Join("../..", w.Build.Context, w.Build.Dockerfile)); err != nil {
		t.Errorf("worker build: %v", err)
	}
	// Every M365_* variable the compose file sets is one the CLI reads.
	help, _ := os.ReadFile("main.go")
	for k := range w.Environment {
		flagName := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k, "M365_")), "_", "-")
		if !strings.Contains(string(help), `"`+flagName+`"`) {
			t.Errorf("compose sets %s but there is no --%s flag", k, flagName)
		}
	}
	n := c.Services["nats"]
	if !strings.HasPrefix(n.Image, "nats:2.1") {
		t.Errorf("nats image %q", n.Image)
	}
	for _, v := range n.Volumes {
		host, _, _ := strings.Cut(v, ":")
		if strings.HasPrefix(host, "./") {
			if _, err := os.Stat(filepath.Join("../..", host)); err != nil {
				t.Errorf("nats volume %s: %v", v, err)
			}
		}
	}
}

func TestNATSConfigs(t *testing.T) {
	files, _ := filepath.Glob("../../deploy/nats/*.conf")
	if len(files) == 0 {
		t.Fatal("no NATS configs under deploy/nats")
	}
	for _, f := range files {
		opts, err := server.ProcessConfigFile(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if !opts.JetStream || !opts.SyncAlways {
			t.Errorf("%s: JetStream %v, sync_interval always %v: jobs and state need both", f, opts.JetStream, opts.SyncAlways)
		}
	}
}

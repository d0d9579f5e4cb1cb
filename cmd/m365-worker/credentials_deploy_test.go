package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The workers' pod carries the pool's federated token: a projected
// service-account token with Entra's audience, mounted where
// M365_FEDERATED_TOKEN_FILE points, under a service account of its own.
func TestWorkerManifestMountsTheFederatedToken(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/k8s/worker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type mount struct{ Name, MountPath string }
	var sa, deploy bool
	var tokenFile string
	var mounts []mount
	var projected []map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	for {
		var d struct {
			Kind                         string
			Metadata                     struct{ Name string }
			AutomountServiceAccountToken *bool `yaml:"automountServiceAccountToken"`
			Spec                         struct {
				Template struct {
					Spec struct {
						ServiceAccountName string `yaml:"serviceAccountName"`
						Containers         []struct {
							Env []struct {
								Name, Value string
							}
							VolumeMounts []mount `yaml:"volumeMounts"`
						}
						Volumes []struct {
							Name      string
							Projected struct {
								Sources []map[string]any
							}
						}
					}
				}
			}
		}
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		switch d.Kind {
		case "ServiceAccount":
			sa = d.Metadata.Name == "m365-worker" && d.AutomountServiceAccountToken != nil && !*d.AutomountServiceAccountToken
		case "Deployment":
			ps := d.Spec.Template.Spec
			deploy = ps.ServiceAccountName == "m365-worker"
			for _, e := range ps.Containers[0].Env {
				if e.Name == "M365_FEDERATED_TOKEN_FILE" {
					tokenFile = e.Value
				}
			}
			mounts = ps.Containers[0].VolumeMounts
			for _, v := range ps.Volumes {
				if v.Name == "federated-token" {
					projected = v.Projected.Sources
				}
			}
		}
	}
	if !sa || !deploy {
		t.Fatalf("service account m365-worker (no API token automounted) %v, used by the deployment %v", sa, deploy)
	}
	if len(projected) != 1 {
		t.Fatalf("the federated-token volume: %v", projected)
	}
	sat, _ := projected[0]["serviceAccountToken"].(map[string]any)
	if sat["audience"] != "api://AzureADTokenExchange" || sat["path"] != "token" {
		t.Errorf("the projected token: %v (want audience api://AzureADTokenExchange, path token)", sat)
	}
	ok := false
	for _, m := range mounts {
		ok = ok || m.Name == "federated-token" && strings.HasPrefix(tokenFile, m.MountPath+"/") && strings.HasSuffix(tokenFile, "/token")
	}
	if !ok {
		t.Errorf("M365_FEDERATED_TOKEN_FILE %q is not the mounted token (mounts %v)", tokenFile, mounts)
	}
}

package redact_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tevyra/m365-worker/internal/redact"
)

func TestSecretsAndPersonalData(t *testing.T) {
	var job any
	_ = json.Unmarshal([]byte(`{"id":"job-1","instance":"acme","action":"microsoft-365.create_user",
		"params":{"user_principal_name":"adele.vance@contoso.com","display_name":"Adele Vance","password":"Hunter2!","sku":"ENTERPRISEPACK",
		"client_secret":{"box":"x","recipient":"XAB"},"reply_key":"XCD","members":["alex@contoso.com"]}}`), &job)

	masked, paths := redact.Secrets(job)
	b, _ := json.Marshal(masked)
	if strings.Contains(string(b), "Hunter2") || !strings.Contains(string(b), "adele.vance@contoso.com") || !strings.Contains(string(b), `"box":"x"`) {
		t.Errorf("Secrets: %s", b)
	}
	if strings.Join(paths, ",") != "job.params.password" {
		t.Errorf("Secrets masked %v, want the password only (a sealed secret and reply_key stay)", paths)
	}

	masked, paths = redact.Personal(job)
	b, _ = json.Marshal(masked)
	for _, gone := range []string{"Hunter2", "adele.vance@", "Adele Vance", "alex@"} {
		if strings.Contains(string(b), gone) {
			t.Errorf("Personal left %q: %s", gone, b)
		}
	}
	for _, kept := range []string{`"sku":"ENTERPRISEPACK"`, `"id":"job-1"`, `"instance":"acme"`, `"reply_key":"XCD"`, `a•••@contoso.com`} {
		if !strings.Contains(string(b), kept) {
			t.Errorf("Personal lost %s: %s", kept, b)
		}
	}
	if len(paths) < 4 {
		t.Errorf("Personal names what it masked: %v", paths)
	}
	if got := redact.Text("user adele.vance@contoso.com does not exist"); got != "user a•••@contoso.com does not exist" {
		t.Errorf("Text: %q", got)
	}
}

package graphsim

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"strings"
	"time"
)

// GET /applications(appId='{appId}'): the app registration, with its
// client secrets (passwordCredentials: hint, the secret's first three
// characters, and endDateTime) and certificates (keyCredentials:
// customKeyIdentifier, the SHA-1 thumbprint, and endDateTime). Needs
// Application.Read.All (or Application.ReadWrite.All, Directory.Read.All).

var applicationDefaults = []string{"appId", "displayName", "keyCredentials", "passwordCredentials"}

// appIDOf reads the appId of an applications(appId='…') segment.
func appIDOf(seg string) (string, bool) {
	rest, ok := strings.CutPrefix(seg, "applications(appId=")
	if !ok || !strings.HasSuffix(rest, ")") {
		return "", false
	}
	return strings.Trim(strings.TrimSuffix(rest, ")"), "'"), true
}

func (c *gctx) getApplication(appID string) (*response, *apiError) {
	if e := c.require("Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"); e != nil {
		return nil, e
	}
	app := c.t.apps[appID]
	if app == nil {
		return nil, notFound("application", appID)
	}
	p, e := project(applicationProps(app), c.q.selects, applicationDefaults, "application")
	if e != nil {
		return nil, e
	}
	p["@odata.context"] = c.context("applications/$entity")
	c.objects = 1
	return &response{status: 200, body: p}, nil
}

// guidOf is a stable GUID derived from s.
func guidOf(s string) string {
	h := sha256.Sum256([]byte(s))
	x := fmt.Sprintf("%x", h[:16])
	return x[0:8] + "-" + x[8:12] + "-4" + x[13:16] + "-8" + x[17:20] + "-" + x[20:32]
}

func applicationProps(app *App) map[string]any {
	passwords := []any{}
	for i, s := range app.secrets() {
		ends := s.Ends
		if ends.IsZero() {
			ends = time.Date(2299, 12, 31, 0, 0, 0, 0, time.UTC)
		}
		hint := s.Value
		if len(hint) > 3 {
			hint = hint[:3]
		}
		passwords = append(passwords, map[string]any{"customKeyIdentifier": nil, "displayName": fmt.Sprintf("secret %d", i+1),
			"endDateTime": ends.UTC().Format(time.RFC3339), "hint": hint, "keyId": guidOf(app.ClientID + "/secret/" + s.Value),
			"secretText": nil, "startDateTime": ends.AddDate(-2, 0, 0).UTC().Format(time.RFC3339)})
	}
	keys := []any{}
	if blk, _ := pem.Decode(app.CertPEM); blk != nil {
		if cert, err := x509.ParseCertificate(blk.Bytes); err == nil {
			thumb := sha1.Sum(cert.Raw)
			keys = append(keys, map[string]any{"customKeyIdentifier": base64.StdEncoding.EncodeToString(thumb[:]), "displayName": "CN=" + cert.Subject.CommonName,
				"endDateTime": cert.NotAfter.UTC().Format(time.RFC3339), "keyId": guidOf(app.ClientID + "/cert"), "startDateTime": cert.NotBefore.UTC().Format(time.RFC3339),
				"type": "AsymmetricX509Cert", "usage": "Verify"})
		}
	}
	return map[string]any{"id": guidOf(app.ClientID + "/object"), "appId": app.ClientID, "displayName": "Tevyra m365-worker",
		"passwordCredentials": passwords, "keyCredentials": keys}
}

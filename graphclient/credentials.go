package graphclient

import (
	"context"
	"crypto/sha1"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"time"

	"github.com/microsoftgraph/msgraph-sdk-go/applicationswithappid"
)

// AppCredential is one credential of the app registration as Graph lists
// it: a client secret (its hint, the secret's first three characters) or
// a certificate (its SHA-1 thumbprint), with its end.
type AppCredential struct {
	Secret     bool
	Hint       string // client secrets
	Thumbprint []byte // certificates
	Ends       time.Time
}

// AppCredentials reads the app registration's client secrets and
// certificates: GET /applications(appId='…')?$select=passwordCredentials,
// keyCredentials. It needs Application.Read.All (or Directory.Read.All),
// an optional grant: without it the error matches ErrForbidden.
func (c *Client) AppCredentials(ctx context.Context) ([]AppCredential, error) {
	appID := c.cfg.ClientID
	app, err := c.Graph.ApplicationsWithAppId(&appID).Get(ctx, &applicationswithappid.ApplicationsWithAppIdRequestBuilderGetRequestConfiguration{
		QueryParameters: &applicationswithappid.ApplicationsWithAppIdRequestBuilderGetQueryParameters{Select: []string{"passwordCredentials", "keyCredentials"}}})
	if err != nil {
		return nil, fromSDK("read the app registration's credentials", err)
	}
	if app == nil {
		return nil, noContent("read the app registration's credentials")
	}
	var out []AppCredential
	for _, p := range app.GetPasswordCredentials() {
		if p != nil && p.GetEndDateTime() != nil {
			out = append(out, AppCredential{Secret: true, Hint: str(p.GetHint()), Ends: *p.GetEndDateTime()})
		}
	}
	for _, k := range app.GetKeyCredentials() {
		if k != nil && k.GetEndDateTime() != nil {
			out = append(out, AppCredential{Thumbprint: k.GetCustomKeyIdentifier(), Ends: *k.GetEndDateTime()})
		}
	}
	return out, nil
}

// CertificateExpiry reads the end of a PEM certificate's validity.
func CertificateExpiry(certPEM []byte) (time.Time, []byte, error) {
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		return time.Time{}, nil, errors.New("the certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return time.Time{}, nil, err
	}
	thumb := sha1.Sum(cert.Raw)
	return cert.NotAfter, thumb[:], nil
}

// CredentialExpiry is when the credential this client uses ends, read from
// the app registration (AppCredentials): the client secret whose hint is
// its first three characters, or the certificate with its thumbprint.
// found is false when none matches (several secrets sharing a hint are
// not told apart: the earliest end is taken).
func (c *Client) CredentialExpiry(ctx context.Context) (ends time.Time, found bool, err error) {
	creds, err := c.AppCredentials(ctx)
	if err != nil {
		return time.Time{}, false, err
	}
	var thumb []byte
	if len(c.cfg.CertificatePEM) > 0 {
		_, thumb, _ = CertificateExpiry(c.cfg.CertificatePEM)
	}
	for _, cr := range creds {
		var match bool
		switch {
		case cr.Secret && len(c.cfg.ClientSecret) >= 3:
			match = cr.Hint == c.cfg.ClientSecret[:3]
		case !cr.Secret && thumb != nil:
			match = string(cr.Thumbprint) == string(thumb)
		}
		if match && (!found || cr.Ends.Before(ends)) {
			ends, found = cr.Ends, true
		}
	}
	return ends, found, nil
}

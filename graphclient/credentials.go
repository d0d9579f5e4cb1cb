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

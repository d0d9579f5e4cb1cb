// Package console is the operator console behind `m365-worker console` and
// the one `m365-worker run` serves on loopback: server-rendered pages of
// the pool, its instances, jobs, failures and the audit of operator
// actions, with OpenID Connect sign-in and two roles (docs/console.md).
package console

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tevyra/m365-worker/worker"
)

// Roles a signed-in person has in the console.
const (
	RoleViewer   = "viewer"   // reads every page; personal data stays masked
	RoleOperator = "operator" // also replays, syncs now and reveals (audited)
)

// EntraIssuer is the issuer of a Microsoft Entra ID tenant's ID tokens.
func EntraIssuer(tenant string) string {
	return "https://login.microsoftonline.com/" + tenant + "/v2.0"
}

// OIDCConfig is how people sign in: OpenID Connect, authorization code
// with PKCE, at Entra ID or any issuer.
type OIDCConfig struct {
	// Issuer is the issuer URL (its discovery document is at
	// Issuer/.well-known/openid-configuration); EntraIssuer(tenant) for
	// Entra ID. Empty: no sign-in by OIDC (only a one-time link).
	Issuer string
	// ClientID is the console's app registration; ClientSecret its secret
	// (optional: PKCE protects the code; Entra's web apps have one).
	ClientID, ClientSecret string
	// RoleClaim is the ID token claim roles come from. Default "roles"
	// (Entra's app roles); "groups" for group object ids.
	RoleClaim string
	// Operators and Viewers are the claim values that make a person an
	// operator or a viewer. Defaults: M365Worker.Operator, M365Worker.Viewer.
	Operators, Viewers []string
	// HTTPClient talks to the issuer. Default: a client with a 10 s timeout.
	HTTPClient *http.Client
}

// Config of a console.
type Config struct {
	// URL is where browsers reach the console (http://127.0.0.1:9470): the
	// sign-in's redirect URI is URL + "/auth/callback". Required.
	URL string
	// OIDC is the sign-in; see OIDCConfig.
	OIDC OIDCConfig
	// Topology names the streams and buckets. Its SitePools are customer
	// sites' pools: the console follows each one's own jobs stream and
	// reads its backlog there.
	Topology worker.Topology
	// SessionTTL is how long a sign-in lasts. Default 8h.
	SessionTTL time.Duration
	// Refresh is how often the one watcher reads instances' sync state and
	// the pools' backlog. Default 5s.
	Refresh time.Duration
	// MaxJobs is how many recent jobs and results the watcher remembers
	// for "where is job X". Default 200,000.
	MaxJobs int
}

// WithDefaults fills in the defaults.
func (c Config) WithDefaults() Config {
	if c.SessionTTL <= 0 {
		c.SessionTTL = 8 * time.Hour
	}
	if c.Refresh <= 0 {
		c.Refresh = 5 * time.Second
	}
	if c.MaxJobs <= 0 {
		c.MaxJobs = 200_000
	}
	c.URL = strings.TrimRight(c.URL, "/")
	o := &c.OIDC
	if o.RoleClaim == "" {
		o.RoleClaim = "roles"
	}
	if len(o.Operators) == 0 {
		o.Operators = []string{"M365Worker.Operator"}
	}
	if len(o.Viewers) == 0 {
		o.Viewers = []string{"M365Worker.Viewer"}
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	return c
}

func (c Config) validate() error {
	if c.URL == "" {
		return errors.New("console: Config.URL is required (where browsers reach the console)")
	}
	if c.OIDC.Issuer != "" && c.OIDC.ClientID == "" {
		return fmt.Errorf("console: the OIDC issuer %s needs the console's client id (--oidc-client-id)", c.OIDC.Issuer)
	}
	return nil
}

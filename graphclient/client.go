// Package graphclient is the only code that speaks Microsoft Graph. It builds
// msgraph-sdk-go clients per instance (tenant) with azidentity credentials
// (client secret or certificate, any national cloud), paces them against
// Graph's throttling budgets with one retry layer of its own, returns typed
// errors, and offers the typed operations the sync and the actions need.
package graphclient

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	auth "github.com/microsoft/kiota-authentication-azure-go"
	khttp "github.com/microsoft/kiota-http-go"
	msgraph "github.com/microsoftgraph/msgraph-sdk-go"
	msgraphcore "github.com/microsoftgraph/msgraph-sdk-go-core"
)

// Config is one instance's connection to Graph.
type Config struct {
	// Instance names the instance in logs and metrics.
	Instance string
	TenantID string
	ClientID string
	// ClientSecret, or CertificatePEM with PrivateKeyPEM, or Federated.
	// Never logged.
	ClientSecret   string
	CertificatePEM []byte
	PrivateKeyPEM  []byte
	// Federated: the app trusts the pool's own identity (workload identity
	// federation): the pool's federated token (PoolConfig.FederatedTokenFile)
	// is the client assertion, and no secret exists.
	Federated bool
	// Cloud is global (default), usgov, usgov-dod or china.
	Cloud string
	// Authority and GraphRoot override the cloud's (the simulator).
	Authority string
	GraphRoot string
	// CAPEM adds trusted roots (the simulator's CA).
	CAPEM []byte
	// HTTPProxy sends Graph and token traffic through a forward proxy
	// (HTTP CONNECT). Empty: the standard proxy environment variables.
	HTTPProxy string
	// Users is the tenant's user count when known: it sets the size class
	// (S under 50, M to 500, L above). Default 0 (class S, the safest).
	Users int
}

// String redacts the secrets.
func (c Config) String() string {
	return fmt.Sprintf("graphclient.Config{Instance:%s TenantID:%s ClientID:%s Cloud:%s}", c.Instance, c.TenantID, c.ClientID, c.Cloud)
}

// LogValue redacts the secrets.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("instance", c.Instance), slog.String("tenant_id", c.TenantID), slog.String("client_id", c.ClientID))
}

func (c Config) fingerprint() string {
	h := sha256.New()
	for _, s := range []string{c.TenantID, c.ClientID, c.ClientSecret, string(c.CertificatePEM), string(c.PrivateKeyPEM), fmt.Sprint(c.Federated), c.Cloud, c.Authority, c.GraphRoot, string(c.CAPEM), c.HTTPProxy} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// PoolConfig configures a Pool. Zero values take the defaults.
type PoolConfig struct {
	// Workers returns the live number of workers sharing each tenant's
	// budget; each takes its share. Default: always 1.
	Workers func() int
	// MaxWait is the longest a call waits for a budget or a Retry-After;
	// beyond it the call returns an *Error carrying the wait
	// (errors.Is(err, ErrThrottled)). Default 30s.
	MaxWait time.Duration
	// MaxConcurrency caps requests in flight per tenant. Default 16.
	MaxConcurrency int
	// MaxAttempts per request (throttling, 5xx, network). Default 5.
	MaxAttempts int
	// TimeScale speeds the budgets up to match a simulator run with the
	// same time scale. Default 1.
	TimeScale float64
	// AuthBackoff is the first pause after a credential failure, doubling
	// up to 30 minutes; calls in between fail at once. Default 30s.
	AuthBackoff time.Duration
	// MaxPages caps the pages of one walk (a list or a delta round);
	// beyond it the walk fails with ErrBadResponse. A walk also fails when
	// Graph links to a page it already served. Default DefaultMaxPages
	// (100,000).
	MaxPages int
	// MaxPageBytes caps a successful response's body; reading past it
	// fails with ErrBadResponse. Default DefaultMaxPageBytes (64 MiB).
	MaxPageBytes int64
	// MaxErrorBytes caps an error response's body; a longer one becomes an
	// *Error with its status and the start of its text. Default
	// DefaultMaxErrorBytes (64 KiB).
	MaxErrorBytes int64
	// AllowEndpointOverrides lets an instance's Config set Authority,
	// GraphRoot and CAPEM (a simulator, a test tenant). Default false:
	// such a Config is refused with an *EndpointOverrideError (matching
	// ErrEndpointOverride), since it would send the instance's client
	// secret and tokens to a server of the record's choosing. Cloud (the
	// national clouds' built-in endpoints) and HTTPProxy always work.
	AllowEndpointOverrides bool
	// FederatedTokenFile is the pool's federated token: a projected
	// service-account token (audience api://AzureADTokenExchange, rotated by
	// the kubelet) or a file a managed identity's token is written to. It
	// is read at each token request and presented as the client assertion
	// of instances with a federated credential. Default: none (such
	// instances fail with ErrAuth).
	FederatedTokenFile string
	// FederatedManagedIdentity takes the pool's federated token from the
	// managed identity of the machine the pool runs on instead (a token for
	// api://AzureADTokenExchange; azidentity's ManagedIdentityCredential:
	// App Service, Azure Arc, IMDS…): "system" for its system-assigned
	// identity, or a user-assigned identity's client id. Default: none.
	FederatedManagedIdentity string
	Logger                   *slog.Logger
}

// Pool hands out clients per instance and holds the app-wide budgets.
type Pool struct {
	cfg     PoolConfig
	mu      sync.Mutex
	apps    map[string]*pacer // by client id
	clients map[string]*Client
	// networks are the HTTP transports (connection pools) by TLS roots and
	// proxy: instances that reach Graph the same way share one, so a pool
	// of thousands of instances keeps a few connection pools, not
	// thousands.
	networks map[string]*http.Transport
}

// NewPool returns an empty pool.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.Workers == nil {
		cfg.Workers = func() int { return 1 }
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 30 * time.Second
	}
	if cfg.MaxConcurrency <= 0 {
		cfg.MaxConcurrency = 16
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.TimeScale <= 0 {
		cfg.TimeScale = 1
	}
	if cfg.AuthBackoff <= 0 {
		cfg.AuthBackoff = 30 * time.Second
	}
	if cfg.MaxPages <= 0 {
		cfg.MaxPages = DefaultMaxPages
	}
	if cfg.MaxPageBytes <= 0 {
		cfg.MaxPageBytes = DefaultMaxPageBytes
	}
	if cfg.MaxErrorBytes <= 0 {
		cfg.MaxErrorBytes = DefaultMaxErrorBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Pool{cfg: cfg, apps: map[string]*pacer{}, clients: map[string]*Client{}, networks: map[string]*http.Transport{}}
}

// Client is a paced Graph client for one instance.
type Client struct {
	cfg      Config
	fp       string
	Graph    *msgraph.GraphServiceClient
	adapter  *msgraph.GraphRequestAdapter
	tenant   *pacer
	counters Counters
	cred     *guardedCredential
	graphURL string
	// graphHost is the Graph root's host:port (port 443 when implied), the
	// only host that gets the token.
	graphHost string
	http      *http.Client // the paced client, for raw requests ($batch)
	limits    limits
	log       *slog.Logger
	skus      skuNames
}

// Client returns the instance's client, building it on first use and again
// when its configuration changed.
func (p *Pool) Client(cfg Config) (*Client, error) {
	key := cfg.Instance
	if key == "" {
		key = cfg.TenantID + "/" + cfg.ClientID
	}
	if err := p.checkOverrides(cfg); err != nil {
		return nil, err
	}
	fp := cfg.fingerprint()
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[key]; ok && c.fp == fp {
		if cfg.Users > 0 {
			c.tenant.setRUBudget(RUBudget(cfg.Users))
		}
		return c, nil
	}
	app := p.apps[cfg.ClientID]
	if app == nil {
		app = newAppPacer(p.cfg.Workers(), p.cfg.TimeScale)
		p.apps[cfg.ClientID] = app
	}
	nk := networkKey(cfg)
	network := p.networks[nk]
	if network == nil {
		var err error
		if network, err = baseTransport(cfg); err != nil {
			return nil, err
		}
		p.networks[nk] = network
	}
	c, err := newClient(cfg, fp, app, network, p.cfg)
	if err != nil {
		return nil, err
	}
	p.clients[key] = c
	return c, nil
}

// networkKey tells apart the ways of reaching Graph: the extra TLS roots
// and the proxy (with its credentials).
func networkKey(cfg Config) string {
	h := sha256.Sum256(cfg.CAPEM)
	return cfg.HTTPProxy + "\x00" + hex.EncodeToString(h[:])
}

// checkOverrides refuses a Config that sets endpoint overrides unless the
// pool allows them.
func (p *Pool) checkOverrides(cfg Config) error {
	if p.cfg.AllowEndpointOverrides {
		return nil
	}
	var fields []string
	if cfg.Authority != "" {
		fields = append(fields, "authority")
	}
	if cfg.GraphRoot != "" {
		fields = append(fields, "graph_root")
	}
	if len(cfg.CAPEM) > 0 {
		fields = append(fields, "ca_pem")
	}
	if fields == nil {
		return nil
	}
	inst := cfg.Instance
	if inst == "" {
		inst = cfg.TenantID
	}
	return &EndpointOverrideError{Instance: inst, Fields: fields}
}

// Stats returns the traffic counters of every client, by instance.
func (p *Pool) Stats() map[string]Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]Stats, len(p.clients))
	for k, c := range p.clients {
		out[k] = c.Stats()
	}
	return out
}

// Forget drops an instance's client (its configuration was removed).
func (p *Pool) Forget(instance string) {
	p.mu.Lock()
	delete(p.clients, instance)
	p.mu.Unlock()
}

func newClient(cfg Config, fp string, app *pacer, network *http.Transport, pc PoolConfig) (*Client, error) {
	cl, err := LookupCloud(cfg.Cloud)
	if err != nil {
		return nil, err
	}
	authority, graphRoot := strings.TrimRight(cl.Authority, "/"), strings.TrimRight(cl.GraphRoot, "/")
	if cfg.Authority != "" {
		authority = strings.TrimRight(cfg.Authority, "/")
	}
	if cfg.GraphRoot != "" {
		graphRoot = strings.TrimRight(cfg.GraphRoot, "/")
	}
	gu, err := url.Parse(graphRoot)
	if err != nil || gu.Scheme != "https" || gu.Host == "" {
		return nil, fmt.Errorf("graph root %q must be an https URL", graphRoot)
	}
	lim := limits{pages: pc.MaxPages, pageBytes: pc.MaxPageBytes, errorBytes: pc.MaxErrorBytes}
	base := &bodyCap{next: network, lim: lim}
	log := pc.Logger.With("instance", cfg.Instance, "tenant_id", cfg.TenantID)
	cred, err := newCredential(cfg, authority, base, pc)
	if err != nil {
		return nil, err
	}
	ap, err := auth.NewAzureIdentityAuthenticationProviderWithScopesAndValidHosts(cred, []string{graphRoot + "/.default"}, []string{gu.Hostname()})
	if err != nil {
		return nil, err
	}
	tenant := newTenantPacer(cfg.Users, pc.Workers(), pc.TimeScale, pc.MaxConcurrency)
	c := &Client{cfg: cfg, fp: fp, tenant: tenant, cred: cred, graphURL: graphRoot + "/v1.0", graphHost: hostPort(gu), limits: lim, log: log}
	tr := &transport{base: base, tenant: tenant, app: app, workers: pc.Workers, maxWait: pc.MaxWait, maxAttempts: pc.MaxAttempts, counters: &c.counters, log: log}
	// Every Graph request, the SDK's and ours, passes the host guard: none
	// leaves for another host or over plain http.
	guard := &hostGuard{next: tr, c: c}
	// The SDK's default middleware without its retry and redirect
	// handlers: ours is the only retry layer, and redirects are followed
	// by the http.Client under checkRedirect, like the raw requests'. Its
	// compression handler is replaced by one that leaves small bodies
	// alone (compress.go).
	var mws []khttp.Middleware
	for _, m := range msgraphcore.GetDefaultMiddlewaresWithOptions(&msgraphcore.GraphClientOptions{}) {
		switch m.(type) {
		case *khttp.RetryHandler, *khttp.RedirectHandler:
		case *khttp.CompressionHandler:
			mws = append(mws, bodyCompression{})
		default:
			mws = append(mws, m)
		}
	}
	hc := &http.Client{Transport: khttp.NewCustomTransportWithParentTransport(guard, mws...), CheckRedirect: c.checkRedirect}
	// The SDK registers its serializers in process-wide defaults while it
	// builds an adapter and a client (kiota's EnableBackingStore writes a
	// global): build one at a time.
	sdkInit.Lock()
	adapter, err := msgraph.NewGraphRequestAdapterWithParseNodeFactoryAndSerializationWriterFactoryAndHttpClient(ap, nil, nil, hc)
	if err != nil {
		sdkInit.Unlock()
		return nil, err
	}
	adapter.SetBaseUrl(c.graphURL)
	c.adapter = adapter
	c.Graph = msgraph.NewGraphServiceClient(adapter)
	sdkInit.Unlock()
	c.http = &http.Client{Transport: &authTransport{next: guard, c: c, cred: cred, scope: graphRoot + "/.default"}, CheckRedirect: c.checkRedirect}
	return c, nil
}

// maxRedirects is how many redirects one Graph request follows, each on the
// instance's Graph host over https.
const maxRedirects = 3

// hostPort is u's host and port, lower case, the port 443 when implied.
func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// owns reports whether u is https on the instance's Graph host, without
// user info.
func (c *Client) owns(u *url.URL) bool {
	return u != nil && u.Scheme == "https" && u.User == nil && u.Host != "" && hostPort(u) == c.graphHost
}

// OwnsLink reports whether link is a URL this client sends requests and its
// token to: https on the instance's Graph host (the cloud's, or the
// allowed GraphRoot override).
func (c *Client) OwnsLink(link string) bool {
	u, err := url.Parse(link)
	return err == nil && c.owns(u)
}

// where names u's scheme and host only (a link's query may hold a token).
func where(u *url.URL) string {
	if u == nil {
		return "(no URL)"
	}
	return u.Scheme + "://" + u.Host
}

// foreignErr is the refusal of a request to u.
func (c *Client) foreignErr(u *url.URL, what string) *Error {
	return &Error{Message: fmt.Sprintf("%s %s refused: only https://%s (the instance's Graph host) gets requests and the token", what, where(u), strings.TrimSuffix(c.graphHost, ":443")), foreign: true}
}

// checkRedirect follows at most maxRedirects redirects, each to the
// instance's Graph host over https.
func (c *Client) checkRedirect(req *http.Request, via []*http.Request) error {
	if !c.owns(req.URL) {
		return c.foreignErr(req.URL, "Graph's redirect to")
	}
	if len(via) > maxRedirects {
		return badResponse("", 0, fmt.Sprintf("Graph redirected more than %d times", maxRedirects))
	}
	return nil
}

// hostGuard refuses any request that is not https on the instance's Graph
// host before it is paced or sent: the last check under both the SDK's
// pipeline and the raw requests.
type hostGuard struct {
	next http.RoundTripper
	c    *Client
}

func (g *hostGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if !g.c.owns(req.URL) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, g.c.foreignErr(req.URL, "a request to")
	}
	return g.next.RoundTrip(req)
}

var sdkInit sync.Mutex

// baseTransport is the HTTP transport under everything: TLS roots and proxy.
func baseTransport(cfg Config) (*http.Transport, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	// Shared by every instance that reaches Graph this way (Pool.networks).
	t.MaxIdleConns, t.MaxIdleConnsPerHost = 512, 256
	if len(cfg.CAPEM) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(cfg.CAPEM) {
			return nil, errors.New("the CA certificate is not PEM")
		}
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if cfg.HTTPProxy != "" {
		pu, err := url.Parse(cfg.HTTPProxy)
		if err != nil || pu.Host == "" {
			return nil, fmt.Errorf("http_proxy %q is not a URL", cfg.HTTPProxy)
		}
		t.Proxy = http.ProxyURL(pu)
	} else {
		t.Proxy = http.ProxyFromEnvironment
	}
	return t, nil
}

// Stats returns the client's traffic counters.
func (c *Client) Stats() Stats { return c.counters.Snapshot() }

// SetUsers updates the tenant's size class from its user count.
func (c *Client) SetUsers(n int) { c.tenant.setRUBudget(RUBudget(n)) }

// --- credentials -------------------------------------------------------

var aadstsRE = regexp.MustCompile(`AADSTS(\d+)`)

// guardedCredential wraps azidentity: after a credential failure it fails
// every call at once until a backoff passes, so a bad secret never makes a
// worker hammer the token endpoint.
type guardedCredential struct {
	inner   azcore.TokenCredential
	check   func() *Error // before each token request (a federated token's file)
	first   time.Duration
	mu      sync.Mutex
	failErr *Error
	until   time.Time
	next    time.Duration
}

func newCredential(cfg Config, authority string, base http.RoundTripper, pc PoolConfig) (*guardedCredential, error) {
	co := azcore.ClientOptions{Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: authority + "/"}, Transport: &http.Client{Transport: base}}
	// azcore retries throttled and failed token requests by itself; keep
	// that small.
	co.Retry = policy.RetryOptions{MaxRetries: 2}
	var inner azcore.TokenCredential
	var err error
	switch {
	case cfg.ClientSecret != "":
		inner, err = azidentity.NewClientSecretCredential(cfg.TenantID, cfg.ClientID, cfg.ClientSecret, &azidentity.ClientSecretCredentialOptions{ClientOptions: co, DisableInstanceDiscovery: true})
	case len(cfg.CertificatePEM) > 0:
		certs, key, perr := azidentity.ParseCertificates(append(append([]byte{}, cfg.CertificatePEM...), cfg.PrivateKeyPEM...), nil)
		if perr != nil {
			return nil, fmt.Errorf("certificate: %w", perr)
		}
		inner, err = azidentity.NewClientCertificateCredential(cfg.TenantID, cfg.ClientID, certs, key, &azidentity.ClientCertificateCredentialOptions{ClientOptions: co, DisableInstanceDiscovery: true})
	case cfg.Federated && pc.FederatedManagedIdentity != "":
		var assertion func(context.Context) (string, error)
		if assertion, err = managedIdentityToken(pc.FederatedManagedIdentity); err == nil {
			inner, err = azidentity.NewClientAssertionCredential(cfg.TenantID, cfg.ClientID, assertion,
				&azidentity.ClientAssertionCredentialOptions{ClientOptions: co, DisableInstanceDiscovery: true})
		}
	case cfg.Federated:
		inner, err = azidentity.NewClientAssertionCredential(cfg.TenantID, cfg.ClientID, func(context.Context) (string, error) {
			tok, ferr := federatedToken(pc.FederatedTokenFile)
			if ferr != nil {
				return "", ferr
			}
			return tok, nil
		}, &azidentity.ClientAssertionCredentialOptions{ClientOptions: co, DisableInstanceDiscovery: true})
	default:
		return nil, errors.New("no client secret, certificate or federated credential configured")
	}
	if err != nil {
		return nil, err
	}
	g := &guardedCredential{inner: inner, first: pc.AuthBackoff, next: pc.AuthBackoff}
	if cfg.Federated && pc.FederatedManagedIdentity == "" {
		// azidentity does not wrap the assertion callback's error: the
		// token file is checked first, so its failure keeps its meaning.
		g.check = func() *Error {
			_, err := federatedToken(pc.FederatedTokenFile)
			return err
		}
	}
	return g, nil
}

// managedIdentityToken is the assertion of a federated credential taken
// from a managed identity: its token for api://AzureADTokenExchange
// (azidentity caches and renews it).
func managedIdentityToken(id string) (func(context.Context) (string, error), error) {
	var opts azidentity.ManagedIdentityCredentialOptions
	if id != "system" {
		opts.ID = azidentity.ClientID(id)
	}
	mi, err := azidentity.NewManagedIdentityCredential(&opts)
	if err != nil {
		return nil, fmt.Errorf("managed identity: %w", err)
	}
	return func(ctx context.Context) (string, error) {
		tok, err := mi.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{"api://AzureADTokenExchange/.default"}})
		return tok.Token, err
	}, nil
}

// federatedToken reads the pool's federated token at each token request
// (the kubelet rotates a projected token in place).
func federatedToken(path string) (string, *Error) {
	if path == "" {
		return "", &Error{Op: "get token", Code: "no_federated_token", Message: "the instance has a federated credential and the pool has no federated token: run the workers with --federated-token-file (M365_FEDERATED_TOKEN_FILE, or AZURE_FEDERATED_TOKEN_FILE as the workload identity webhook sets it)", reason: ErrAuth}
	}
	b, err := os.ReadFile(path)
	if err != nil || len(strings.TrimSpace(string(b))) == 0 {
		msg := "the pool's federated token file is empty"
		if err != nil {
			msg = "read the pool's federated token: " + err.Error()
		}
		return "", &Error{Op: "get token", Code: "no_federated_token", Message: msg, reason: ErrAuth}
	}
	return strings.TrimSpace(string(b)), nil
}

func (g *guardedCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	g.mu.Lock()
	if g.failErr != nil && time.Now().Before(g.until) {
		e := *g.failErr
		e.RetryAfter = time.Until(g.until)
		g.mu.Unlock()
		return azcore.AccessToken{}, &e
	}
	g.mu.Unlock()
	var tok azcore.AccessToken
	var err error
	if g.check != nil {
		if own := g.check(); own != nil {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.failErr, g.until = own, time.Now().Add(g.next)
			g.next = min(g.next*2, 30*time.Minute)
			return tok, own
		}
	}
	tok, err = g.inner.GetToken(ctx, opts)
	g.mu.Lock()
	defer g.mu.Unlock()
	if err == nil {
		g.failErr, g.next = nil, g.first
		return tok, nil
	}
	var af *azidentity.AuthenticationFailedError
	if !errors.As(err, &af) || af.RawResponse == nil || af.RawResponse.StatusCode >= 500 {
		return tok, &Error{Op: "get token", Message: err.Error(), err: err}
	}
	e := authError(err, af.RawResponse.StatusCode)
	g.failErr, g.until = e, time.Now().Add(g.next)
	g.next = min(g.next*2, 30*time.Minute)
	return tok, e
}

// authError turns a token failure into an *Error named by its AADSTS code.
func authError(err error, status int) *Error {
	e := &Error{Op: "get token", Status: status, Message: err.Error(), err: err}
	if m := aadstsRE.FindStringSubmatch(err.Error()); m != nil {
		e.Code = "AADSTS" + m[1]
	}
	switch e.Code {
	case "AADSTS7000215":
		e.Hint = "the client secret is wrong: copy the secret's Value (not its ID) from the app registration's Certificates & secrets page"
	case "AADSTS7000222":
		e.Hint = "the client secret has expired: create a new one in the app registration"
	case "AADSTS700016":
		e.Hint = "no app with this client id in the tenant: check the client id, or grant admin consent in the tenant"
	case "AADSTS90002":
		e.Hint = "the tenant does not exist: check the tenant id"
	case "AADSTS7000112":
		e.Hint = "the app registration is disabled in the tenant"
	case "AADSTS700027":
		e.Hint = "the assertion's signature does not verify: the certificate does not match the one uploaded to the app registration, or the federated token's issuer does not publish its key"
	case "AADSTS700211", "AADSTS700212", "AADSTS700213":
		e.Hint = "the app registration has no federated credential for the pool's token: add one (Certificates & secrets → Federated credentials) with the issuer, subject and audience api://AzureADTokenExchange that Tevyra publishes"
	case "AADSTS700024":
		e.Hint = "the pool's federated token has expired: the token file is not being refreshed (check the projected service-account token volume)"
	case "AADSTS50166":
		e.Hint = "Entra cannot read the federated token issuer's keys: the issuer's /.well-known/openid-configuration must be publicly reachable"
	}
	if i := strings.Index(e.Message, e.Code+":"); e.Code != "" && i >= 0 {
		// Keep azidentity's AADSTS sentence, without the request dump.
		msg := e.Message[i:]
		if j := strings.Index(msg, " Trace ID:"); j > 0 {
			msg = msg[:j]
		}
		e.Message = msg
	}
	return e
}

// authTransport adds the bearer token for raw requests (the bulk reads,
// $batch), only to https requests on the instance's Graph host.
type authTransport struct {
	next  http.RoundTripper
	c     *Client
	cred  azcore.TokenCredential
	scope string
}

func (a *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !a.c.owns(req.URL) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, a.c.foreignErr(req.URL, "a request to")
	}
	tok, err := a.cred.GetToken(req.Context(), policy.TokenRequestOptions{Scopes: []string{a.scope}})
	if err != nil {
		return nil, err
	}
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", "Bearer "+tok.Token)
	return a.next.RoundTrip(r)
}

// Grants are what the app's token says it may do.
type Grants struct {
	// Roles are the granted application permissions.
	Roles []string `json:"roles"`
	// DirectoryRoles are the template ids of the app's directory roles.
	DirectoryRoles []string `json:"directory_roles"`
}

// Has reports whether any of the permissions is granted.
func (g Grants) Has(perms ...string) bool {
	for _, p := range perms {
		for _, r := range g.Roles {
			if strings.EqualFold(r, p) {
				return true
			}
		}
	}
	return false
}

// HasDirectoryRole reports whether the app holds a directory role.
func (g Grants) HasDirectoryRole(templateID string) bool {
	for _, r := range g.DirectoryRoles {
		if strings.EqualFold(r, templateID) {
			return true
		}
	}
	return false
}

// Directory role template ids.
const (
	RoleUserAdministrator                     = "fe930be7-5e62-47db-91af-98c3a49a38b1"
	RolePrivilegedAuthenticationAdministrator = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13"
)

// Grants gets a token and reads the permissions and directory roles it
// carries (the claims are read, not verified: Graph verifies them).
func (c *Client) Grants(ctx context.Context) (Grants, error) {
	tok, err := c.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{strings.TrimSuffix(c.graphURL, "/v1.0") + "/.default"}})
	if err != nil {
		return Grants{}, err
	}
	parts := strings.Split(tok.Token, ".")
	if len(parts) != 3 {
		return Grants{}, errors.New("the access token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return Grants{}, fmt.Errorf("read the access token: %w", err)
	}
	var claims struct {
		Roles []string `json:"roles"`
		Wids  []string `json:"wids"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return Grants{}, fmt.Errorf("read the access token: %w", err)
	}
	return Grants{Roles: claims.Roles, DirectoryRoles: claims.Wids}, nil
}

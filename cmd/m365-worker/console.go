package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/internal/console"
	"github.com/tevyra/m365-worker/internal/httpserve"
	"github.com/tevyra/m365-worker/worker"
)

// oidcFlags are the console's sign-in flags.
type oidcFlags struct {
	issuer, tenant, clientID, secretFile, roleClaim, operators, viewers, caFile *string
}

func addOIDCFlags(fs *flagSet) *oidcFlags {
	return &oidcFlags{
		tenant:     fs.String("oidc-tenant", "", "sign in with this Entra ID tenant (id or domain): the issuer https://login.microsoftonline.com/<tenant>/v2.0"),
		issuer:     fs.String("oidc-issuer", "", "sign in with this OpenID Connect issuer instead of Entra ID (its discovery document at <issuer>/.well-known/openid-configuration)"),
		clientID:   fs.String("oidc-client-id", "", "the console's app registration (client id) at the issuer; its redirect URI is <url>/auth/callback"),
		secretFile: fs.String("oidc-client-secret-file", "", "file with the app registration's client secret (optional: the code is protected by PKCE)"),
		roleClaim:  fs.String("oidc-role-claim", "roles", "the ID token claim the roles come from: roles (Entra app roles) or groups (group object ids)"),
		operators:  fs.String("oidc-operators", "M365Worker.Operator", "claim values (comma-separated) that make a person an operator: replays, sync now, reveal"),
		viewers:    fs.String("oidc-viewers", "M365Worker.Viewer", "claim values (comma-separated) that make a person a viewer (read only)"),
		caFile:     fs.String("oidc-ca-file", "", "CA file to verify the issuer with (a private issuer or the Graph simulator); default: the system's roots"),
	}
}

// config is the console's sign-in configuration from the flags.
func (o *oidcFlags) config() (console.OIDCConfig, error) {
	c := console.OIDCConfig{Issuer: *o.issuer, ClientID: *o.clientID, RoleClaim: *o.roleClaim,
		Operators: splitList(*o.operators), Viewers: splitList(*o.viewers)}
	if c.Issuer == "" && *o.tenant != "" {
		c.Issuer = console.EntraIssuer(*o.tenant)
	}
	if *o.secretFile != "" {
		b, err := os.ReadFile(*o.secretFile)
		if err != nil {
			return c, fmt.Errorf("read --oidc-client-secret-file: %w", err)
		}
		c.ClientSecret = strings.TrimSpace(string(b))
	}
	if *o.caFile != "" {
		pem, err := os.ReadFile(*o.caFile)
		if err != nil {
			return c, fmt.Errorf("read --oidc-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return c, fmt.Errorf("--oidc-ca-file %s holds no PEM certificate", *o.caFile)
		}
		c.HTTPClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	}
	return c, nil
}

// cmdConsole is `m365-worker console`: the operator console as its own
// process, with the NATS role console (deploy/nats/accounts.inc).
func cmdConsole(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("console", "Serve the operator console (docs/console.md): the pool, its instances, jobs, failures and\n"+
		"the audit in a browser. People sign in with OpenID Connect (Entra ID by default); the roles\n"+
		"viewer and operator come from a claim. Off loopback it serves HTTPS only.", stderr)
	cf := addConnFlags(fs)
	listen := fs.String("listen", "127.0.0.1:9470", "host:port to serve the console on")
	publicURL := fs.String("url", "", "where browsers reach the console (default: http(s)://<listen>)")
	certFile := fs.String("tls-cert-file", "", "serve HTTPS with this certificate (required off loopback)")
	keyFile := fs.String("tls-key-file", "", "the certificate's key")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	sitePools := fs.String("site-pools", "", "customer sites' pools, comma-separated, as given to setup --site-pools: the console follows each one's own jobs stream (M365_JOBS_<pool>) and reads its backlog there; its NATS role needs each site's lines (docs/console.md)")
	of := addOIDCFlags(fs)
	if err := fs.parse(args); err != nil {
		return err
	}
	oc, err := of.config()
	if err != nil {
		return err
	}
	if oc.Issuer == "" || oc.ClientID == "" {
		return usageError{errors.New("the console needs sign-in: --oidc-tenant (Entra ID) or --oidc-issuer, and --oidc-client-id")}
	}
	tlsOn := *certFile != "" || *keyFile != ""
	if err := consoleListenOK(*listen, tlsOn); err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return usageError{fmt.Errorf("--log-level %q: %w", *logLevel, err)}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	nc, js, topo, err := cf.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	topo.SitePools = splitList(*sitePools)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("console: listen on %s: %w", *listen, err)
	}
	url := consoleURL(*publicURL, ln.Addr().String(), tlsOn)
	srv, err := console.New(ctx, console.Config{URL: url, OIDC: oc, Topology: topo}, js, log)
	if err != nil {
		ln.Close()
		return err
	}
	fmt.Fprintf(stdout, "console at %s (sign-in: %s, client %s)\n", url, oc.Issuer, oc.ClientID)
	return serveConsole(ctx, srv, ln, *certFile, *keyFile, log)
}

// consoleListenOK refuses plain HTTP off loopback: cookies and sign-in
// codes would cross the network in clear.
func consoleListenOK(listen string, tlsOn bool) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return usageError{fmt.Errorf("console listen address %q: want host:port", listen)}
	}
	ip := net.ParseIP(host)
	if !tlsOn && host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return usageError{fmt.Errorf("the console on %s would serve plain HTTP off loopback: give --tls-cert-file and --tls-key-file", listen)}
	}
	return nil
}

func consoleURL(public, addr string, tlsOn bool) string {
	if public != "" {
		return strings.TrimRight(public, "/")
	}
	if tlsOn {
		return "https://" + addr
	}
	return "http://" + addr
}

// serveConsole serves until ctx ends, then shuts down within 5 s.
func serveConsole(ctx context.Context, h http.Handler, ln net.Listener, certFile, keyFile string, log *slog.Logger) error {
	hs := httpserve.Server(h, httpserve.Limits{Write: 30 * time.Second, Idle: 2 * time.Minute}, log)
	errc := make(chan error, 1)
	go func() {
		if certFile != "" {
			errc <- hs.ServeTLS(ln, certFile, keyFile)
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	return nil
}

// runConsoleFlags are run's console flags.
type runConsoleFlags struct {
	listen *string
	oidc   *oidcFlags
}

func addRunConsoleFlags(fs *flagSet) *runConsoleFlags {
	return &runConsoleFlags{listen: fs.String("console-listen", "127.0.0.1:9470", "serve the operator console here, on loopback (off when empty); its URL and a one-time sign-in link are printed"), oidc: addOIDCFlags(fs)}
}

// startRunConsole serves run's console on loopback and prints its URL with
// a one-time sign-in link. With the demo, people also sign in through the
// simulator's tenant (its first user an operator, its second a viewer). A
// console that cannot listen is reported and run goes on without it.
func startRunConsole(ctx context.Context, js jetstream.JetStream, topo worker.Topology, f *runConsoleFlags, sim *graphsim.Server, log *slog.Logger, stdout io.Writer) error {
	if *f.listen == "" {
		return nil
	}
	if err := consoleListenOK(*f.listen, false); err != nil {
		return usageError{fmt.Errorf("--console-listen: run serves the console on loopback only (m365-worker console serves it elsewhere, with TLS): %w", err)}
	}
	oc, err := f.oidc.config()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *f.listen)
	if err != nil {
		fmt.Fprintf(stdout, "Console not served: %v (set --console-listen)\n", err)
		return nil
	}
	url := consoleURL("", ln.Addr().String(), false)
	// run's own topology, with the customer sites' pools an operator has
	// set up on this NATS (setup --site-pools) for the configured instances:
	// the console follows their own jobs streams.
	topo = worker.WithSitePools(ctx, js, topo, setupPools(ctx, js, topo, "")...)
	var who string
	if sim != nil && oc.Issuer == "" {
		oc, who, err = demoSignIn(sim, url)
		if err != nil {
			ln.Close()
			return err
		}
	}
	srv, err := console.New(ctx, console.Config{URL: url, OIDC: oc, Topology: topo}, js, log)
	if err != nil {
		ln.Close()
		return err
	}
	go func() {
		if err := serveConsole(ctx, srv, ln, "", "", log); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("console", "error", err)
		}
	}()
	fmt.Fprintf(stdout, "Console at %s; sign in once, within 10 minutes, with %s\n", url, srv.OneTimeLink(10*time.Minute))
	if who != "" {
		fmt.Fprintf(stdout, "  or through the simulator's tenant as %s\n", who)
	}
	return nil
}

// demoSignIn registers the console with the demo tenant for sign-in: its
// first user is an operator, its second a viewer.
func demoSignIn(sim *graphsim.Server, url string) (console.OIDCConfig, string, error) {
	cred := sim.Credentials()[0]
	snap, err := sim.Export(cred.TenantID)
	if err != nil {
		return console.OIDCConfig{}, "", err
	}
	var upns []string
	for _, u := range snap.Users {
		if u.AccountEnabled && len(upns) < 2 {
			upns = append(upns, u.UserPrincipalName)
		}
	}
	if len(upns) < 2 {
		return console.OIDCConfig{}, "", errors.New("the demo tenant has fewer than two enabled users to sign in to the console with")
	}
	const clientID = "m365-worker-console"
	app := graphsim.SignInApp{ClientID: clientID, RedirectURIs: []string{url + "/auth/callback"},
		Roles: map[string][]string{strings.ToLower(upns[0]): {"M365Worker.Operator"}, strings.ToLower(upns[1]): {"M365Worker.Viewer"}}}
	if err := sim.AddSignInApp(cred.TenantID, app); err != nil {
		return console.OIDCConfig{}, "", err
	}
	oc := console.OIDCConfig{Issuer: sim.SignInIssuer(cred.TenantID), ClientID: clientID, HTTPClient: sim.Client()}
	return oc, upns[0] + " (operator) or " + upns[1] + " (viewer)", nil
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/tevyra/m365-worker/graphsim"
)

func cmdGraphsim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("graphsim", "Serve the Microsoft Graph simulator over HTTPS with seeded tenants, for tests, demos and\nbenchmarks. It writes its CA certificate and the tenants' app credentials to files.", stderr)
	listen := fs.String("listen", "127.0.0.1:8443", "host:port to serve on (port 0 picks one)")
	tenants := fs.Int("tenants", 1, "tenants to seed")
	users := fs.Int("users", 1000, "users per tenant")
	groups := fs.Int("groups", 100, "groups per tenant")
	seed := fs.Int("seed", 1, "seed for tenants, secrets and faults")
	caOut := fs.String("ca-out", "graphsim-ca.pem", "write the CA certificate (PEM) here")
	credsOut := fs.String("credentials-out", "graphsim-tenants.json", "write the tenants' credentials (JSON array) here")
	timeScale := fs.Float64("time-scale", 1, "run throttling windows, token lifetimes and delta-token expiry this many times faster")
	noThrottling := fs.Bool("no-throttling", false, "turn the throttling model off")
	latency := fs.String("latency", "none", "latency profile: none, or realistic (GRAPH.md §12: 100 ms + 0.5 ms/object reads, 150 ms writes)")
	f500 := fs.Float64("fault-500", 0, "rate (0..1) of 500 responses")
	f502 := fs.Float64("fault-502", 0, "rate of 502 responses")
	f503 := fs.Float64("fault-503", 0, "rate of 503 responses")
	f504 := fs.Float64("fault-504", 0, "rate of 504 responses")
	fRetry := fs.Duration("fault-retry-after", 0, "Retry-After sent with 503/504 faults (0: none)")
	fDrop := fs.Float64("fault-drop", 0, "rate of dropped connections")
	fSlow := fs.Float64("fault-slow", 0, "rate of slow responses")
	fSlowDelay := fs.Duration("fault-slow-delay", 5*time.Second, "delay of a slow response")
	consistency := fs.Duration("consistency-delay", 0, "hide objects created in the last interval from reads")
	deltaTTL := fs.Duration("delta-token-ttl", 7*24*time.Hour, "lifetime of delta tokens")
	readOnly := fs.Bool("read-only", false, "grant seeded apps only the read permissions")
	noUserAdmin := fs.Bool("no-user-admin-role", false, "seeded apps lack the User Administrator role (password resets fail)")
	fedSubject := fs.String("federated-subject", "", "serve a test issuer, give every seeded app a federated credential for this subject (e.g. system:serviceaccount:m365:m365-worker) and write a token for it to --federated-token-out")
	fedOut := fs.String("federated-token-out", "graphsim-federated-token", "with --federated-subject: the token file (valid 24 h; point the workers' --federated-token-file at it)")
	secretEnds := fs.String("secret-ends", "", "when the seeded apps' client secrets expire (2027-06-30; default two years after the seed day), as their registrations report it")
	conformance := fs.Bool("conformance", false, "check every request and answer against Graph v1.0's description and print each one outside it on stderr (docs/graphsim.md)")
	if err := fs.parse(args); err != nil {
		return err
	}
	opts := graphsim.Options{
		Tenants: *tenants, Users: *users, Groups: *groups, Seed: int64(*seed), Listen: *listen,
		TimeScale: *timeScale, NoThrottling: *noThrottling,
		Faults: graphsim.Faults{Rate500: *f500, Rate502: *f502, Rate503: *f503, Rate504: *f504,
			RetryAfter: *fRetry, DropRate: *fDrop, SlowRate: *fSlow, SlowDelay: *fSlowDelay},
		ConsistencyDelay: *consistency, DeltaTokenTTL: *deltaTTL, ReadOnly: *readOnly, NoUserAdminRole: *noUserAdmin,
		Conformance: *conformance,
	}
	if *conformance {
		var mu sync.Mutex
		opts.OnViolation = func(v graphsim.Violation) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(stderr, "graphsim: outside Graph's description: %s\n", v)
		}
	}
	switch *latency {
	case "none":
	case "realistic":
		opts.Latency = graphsim.RealisticLatency
	default:
		return usageError{fmt.Errorf("--latency %q: use none or realistic", *latency)}
	}
	t0 := time.Now()
	sim, err := graphsim.Start(opts)
	if err != nil {
		return err
	}
	defer sim.Close()
	if err := os.WriteFile(*caOut, sim.CAPEM(), 0o644); err != nil {
		return fmt.Errorf("write CA: %w", err)
	}
	if *secretEnds != "" {
		ends, err := parseDay(*secretEnds)
		if err != nil {
			return usageError{fmt.Errorf("--secret-ends: %v", err)}
		}
		for _, c := range sim.Credentials() {
			_ = sim.Mutate(c.TenantID, func(a *graphsim.Admin) error { a.App(c.ClientID).SecretEnds = ends; return nil })
		}
	}
	if *fedSubject != "" {
		if err := federate(sim, *fedSubject, *fedOut); err != nil {
			return err
		}
	}
	creds, _ := json.MarshalIndent(sim.Credentials(), "", "  ")
	if err := os.WriteFile(*credsOut, append(creds, '\n'), 0o600); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	fmt.Fprintf(stdout, "graphsim listening on %s (%d tenants × %d users, %d groups, seeded in %s)\n", sim.URL(), *tenants, *users, *groups, time.Since(t0).Round(time.Millisecond))
	fmt.Fprintf(stdout, "CA certificate: %s\ncredentials: %s\nGraph: %s/v1.0   token: %s/{tenant}/oauth2/v2.0/token   admin: %s/_admin/tenants\n", *caOut, *credsOut, sim.URL(), sim.URL(), sim.URL())
	<-ctx.Done()
	if *conformance {
		r := sim.Conformance()
		fmt.Fprintf(stdout, "conformance: %d requests and %d answers checked (%d operations, %d property values), %d outside Graph's description\n",
			r.Requests, r.Answers, len(r.Operations), r.Values, len(r.Violations))
	}
	return nil
}

// federate serves a test issuer, trusts it for subject in every seeded app
// and writes a token it signed for subject to out.
func federate(sim *graphsim.Server, subject, out string) error {
	iss, err := sim.NewIssuer("cluster")
	if err != nil {
		return err
	}
	for _, c := range sim.Credentials() {
		if err := sim.Mutate(c.TenantID, func(a *graphsim.Admin) error {
			a.App(c.ClientID).Federated = []graphsim.FederatedCredential{{Issuer: iss.URL(), Subject: subject, Audiences: []string{graphsim.FederationAudience}}}
			return nil
		}); err != nil {
			return err
		}
	}
	return os.WriteFile(out, []byte(iss.Mint(subject, []string{graphsim.FederationAudience}, 24*time.Hour)), 0o600)
}

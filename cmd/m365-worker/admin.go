package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// connFlags are the flags of the commands that talk to a running system.
type connFlags struct {
	url, creds, prefix, output, jsDomain, inbox *string
	jsAPIPrefix, tlsCA, tlsCert, tlsKey         *string
}

func addConnFlags(fs *flagSet) *connFlags {
	return &connFlags{
		url:         fs.String("nats", "nats://127.0.0.1:4222", "NATS server URL"),
		creds:       fs.String("creds", "", "NATS credentials file"),
		prefix:      fs.String("prefix", jobs.DefaultPrefix, "subject prefix of the deployment"),
		output:      fs.String("o", "text", "output: text or json"),
		jsDomain:    fs.String("js-domain", "", "JetStream domain of the hub, when connected to a leaf node"),
		jsAPIPrefix: fs.String("js-api-prefix", "", "JetStream API prefix, when the account imports the hub's services (a site's account)"),
		inbox:       fs.String("inbox-prefix", "", "this role's own reply-subject prefix (e.g. _INBOX_operator), when NATS permissions give each role its own"),
		tlsCA:       fs.String("tls-ca", "", "CA file to verify the NATS servers"),
		tlsCert:     fs.String("tls-cert", "", "client certificate file for NATS"),
		tlsKey:      fs.String("tls-key", "", "client key file for NATS"),
	}
}

// natsOptions are the connection's credentials, inbox prefix and TLS.
func (c *connFlags) natsOptions(name string) []nats.Option {
	opts := []nats.Option{nats.Name(name)}
	if *c.creds != "" {
		opts = append(opts, nats.UserCredentials(*c.creds))
	}
	if *c.inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(*c.inbox))
	}
	if *c.tlsCA != "" {
		opts = append(opts, nats.RootCAs(*c.tlsCA))
	}
	if *c.tlsCert != "" || *c.tlsKey != "" {
		opts = append(opts, nats.ClientCert(*c.tlsCert, *c.tlsKey))
	}
	return opts
}

func (c *connFlags) connect() (*nats.Conn, jetstream.JetStream, worker.Topology, error) {
	nc, err := nats.Connect(*c.url, c.natsOptions("m365-worker cli")...)
	if err != nil {
		return nil, nil, worker.Topology{}, fmt.Errorf("connect to NATS at %s: %w (is m365-worker run or a NATS server up? set --nats)", *c.url, err)
	}
	js, err := newJetStream(nc, *c.jsDomain, *c.jsAPIPrefix)
	if err != nil {
		nc.Close()
		return nil, nil, worker.Topology{}, err
	}
	return nc, js, worker.Topology{Subjects: jobs.Subjects{Prefix: *c.prefix}}, nil
}

// instances connects and opens the instances bucket.
func (c *connFlags) instances(ctx context.Context) (*nats.Conn, jetstream.JetStream, worker.Topology, *worker.Instances, error) {
	nc, js, topo, err := c.connect()
	if err != nil {
		return nil, nil, topo, nil, err
	}
	store, err := worker.OpenInstances(ctx, js, topo)
	if err != nil {
		nc.Close()
		return nil, nil, topo, nil, err
	}
	return nc, js, topo, store, nil
}

func (c *connFlags) json() bool { return *c.output == "json" }

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func subcommand(args []string, usage string, stderr io.Writer) (string, []string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprint(stderr, usage)
			return "", nil, flag.ErrHelp
		}
		return "", nil, usageError{errors.New(strings.TrimSpace(usage))}
	}
	return args[0], args[1:], nil
}

// --- pool ------------------------------------------------------------------

func cmdPool(args []string, stdout, stderr io.Writer) error {
	sub, rest, err := subcommand(args, "usage: m365-worker pool keygen --out FILE | pool notify-key --pool P --master-key-file MASTER --out FILE\n", stderr)
	if err != nil {
		return err
	}
	switch sub {
	case "keygen":
		return cmdPoolKeygen(rest, stdout, stderr)
	case "notify-key":
		return cmdPoolNotifyKey(rest, stdout, stderr)
	}
	return usageError{fmt.Errorf("unknown pool command %q (want keygen or notify-key)", sub)}
}

func cmdPoolKeygen(rest []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pool keygen", "Create a curve key pair for sealing a pool's secrets. The seed (private) goes to --out\n(mode 0600); the public key is printed: give it to whoever seals secrets for the pool.", stderr)
	out := fs.String("out", "", "file for the private seed (required; keep it on the pool's site)")
	if err := fs.parse(rest); err != nil {
		return err
	}
	if *out == "" {
		return usageError{errors.New("--out FILE is required: the private seed is never printed")}
	}
	kp, err := nkeys.CreateCurveKeys()
	if err != nil {
		return err
	}
	seed, _ := kp.Seed()
	if err := os.WriteFile(*out, append(seed, '\n'), 0o600); err != nil {
		return err
	}
	pub, _ := kp.PublicKey()
	fmt.Fprintf(stdout, "public key: %s\nprivate seed written to %s (give it to the pool's workers as --pool-key-file or M365_POOL_KEY)\n", pub, *out)
	return nil
}

// cmdPoolNotifyKey derives a pool's change-notification key from the
// receiver's master key: the pool's workers get it (--notify-key-file),
// never the master.
func cmdPoolNotifyKey(rest []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pool notify-key", "Derive a pool's change-notification key from the receiver's master key (docs/notify.md).\n"+
		"The pool's workers get this key (--notify-key-file); only the receiver holds the master.", stderr)
	pool := fs.String("pool", jobs.DefaultPool, "the pool")
	secretFile := fs.String("master-key-file", "", "the receiver's master key file (required)")
	out := fs.String("out", "", "file for the pool's key (required, mode 0600)")
	if err := fs.parse(rest); err != nil {
		return err
	}
	if *secretFile == "" || *out == "" {
		return usageError{errors.New("--master-key-file and --out are required")}
	}
	master, err := os.ReadFile(*secretFile)
	if err != nil {
		return err
	}
	if master = bytes.TrimSpace(master); len(master) < notify.MinMasterKey {
		return fmt.Errorf("the master key has %d bytes; it needs at least %d", len(master), notify.MinMasterKey)
	}
	key := base64.RawURLEncoding.EncodeToString(notify.PoolKey(master, *pool))
	if err := os.WriteFile(*out, []byte(key+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "the notification key of pool %s is written to %s (give it to the pool's workers as --notify-key-file)\n", *pool, *out)
	return nil
}

// --- instance ----------------------------------------------------------------

const instanceUsage = `usage: m365-worker instance add|update|remove|list|show [flags]
`

func cmdInstance(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub, rest, err := subcommand(args, instanceUsage, stderr)
	if err != nil {
		return err
	}
	switch sub {
	case "add", "update":
		return instancePut(ctx, sub, rest, stdout, stderr)
	case "test":
		return instanceTest(ctx, rest, stdout, stderr)
	case "remove", "list", "show":
		fs := newFlagSet("instance "+sub, map[string]string{
			"remove": "Remove an instance: its configuration and its sync schedule. Its sync state stays, so\nadding it back resumes incrementally.",
			"list":   "List the instances (secrets are never shown).",
			"show":   "Show one instance's configuration (secrets are never shown, only whether one is set).",
		}[sub], stderr)
		cf := addConnFlags(fs)
		var id string
		if sub != "list" {
			if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
				return usageError{fmt.Errorf("usage: m365-worker instance %s ID", sub)}
			}
			id, rest = rest[0], rest[1:]
		}
		if err := fs.parse(rest); err != nil {
			return err
		}
		nc, _, _, store, err := cf.instances(ctx)
		if err != nil {
			return err
		}
		defer nc.Close()
		switch sub {
		case "remove":
			if err := store.Delete(ctx, id); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "instance %s removed (its schedule too)\n", id)
			return nil
		case "show":
			in, err := store.Get(ctx, id)
			if err != nil {
				return err
			}
			if cf.json() {
				return printJSON(stdout, in)
			}
			return showInstance(stdout, in)
		}
		list, err := store.List(ctx)
		if err != nil {
			return err
		}
		if cf.json() {
			return printJSON(stdout, list)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tPOOL\tTENANT\tCLIENT\tCLOUD\tINTERVAL")
		for _, in := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", in.ID, in.Pool, in.TenantID, in.ClientID, in.Cloud, time.Duration(in.SyncInterval))
		}
		return tw.Flush()
	}
	return usageError{fmt.Errorf("unknown instance command %q", sub)}
}

func showInstance(w io.Writer, in *worker.Instance) error {
	secret := "none"
	switch {
	case in.ClientSecret != nil:
		secret = "client secret " + in.ClientSecret.String()
		if in.ClientSecretExpiresAt != nil {
			secret += ", expires " + in.ClientSecretExpiresAt.Format("2006-01-02")
		}
	case in.CertificateKey != nil:
		secret = "certificate, key " + in.CertificateKey.String()
		if ends, _, err := graphclient.CertificateExpiry([]byte(in.Certificate)); err == nil {
			secret += ", expires " + ends.Format("2006-01-02")
		}
	case in.FederatedCredential:
		secret = "federated (no secret: the app trusts the pool's identity)"
	}
	proxy := in.HTTPProxy
	if in.ProxyCredentials != nil {
		proxy += " (credentials " + in.ProxyCredentials.String() + ")"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, kv := range [][2]string{{"id", in.ID}, {"pool", in.Pool}, {"tenant_id", in.TenantID}, {"client_id", in.ClientID}, {"credential", secret},
		{"cloud", in.Cloud}, {"authority", in.Authority}, {"graph_root", in.GraphRoot}, {"http_proxy", proxy},
		{"sync_interval", time.Duration(in.SyncInterval).String()}, {"updated_at", in.UpdatedAt.Format(time.RFC3339)}} {
		if kv[1] != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
		}
	}
	return tw.Flush()
}

// tevyraConfig is the module configuration as Tevyra documents it.
type tevyraConfig struct {
	TenantID     string `json:"tenant_id"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
}

func instancePut(ctx context.Context, sub string, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usageError{fmt.Errorf("usage: m365-worker instance %s ID [flags]", sub)}
	}
	id, rest := args[0], args[1:]
	fs := newFlagSet("instance "+sub, "Add or change an instance. Secrets are read from a file or standard input, never from a flag,\nand sealed with the pool's public key before they are stored.", stderr)
	cf := addConnFlags(fs)
	tenant := fs.String("tenant-id", "", "directory (tenant) id")
	client := fs.String("client-id", "", "application (client) id")
	secretFile := fs.String("secret-file", "", "file holding the client secret ('-' for standard input)")
	certFile := fs.String("certificate", "", "certificate file (PEM), with --certificate-key")
	keyFile := fs.String("certificate-key", "", "certificate private key file (PEM)")
	federated := fs.Bool("federated-credential", false, "no secret: the app registration trusts the pool's identity (a federated credential with the issuer and subject Tevyra publishes); replaces a secret or certificate")
	secretExpires := fs.String("secret-expires", "", "the client secret's expiry as the Azure portal shows it (2027-06-30), for status, metrics and warnings when the app may not read its registration")
	config := fs.String("config", "", "the module configuration as Tevyra documents it: {\"tenant_id\",\"client_id\",\"client_secret\"} ('-' for standard input)")
	cloud := fs.String("cloud", "", "global, usgov, usgov-dod or china")
	pool := fs.String("pool", "", "worker pool serving the instance (default: default)")
	interval := fs.Duration("sync-interval", 0, "time between scheduled syncs (default 5m)")
	proxy := fs.String("http-proxy", "", "forward proxy for this instance's Graph traffic")
	authority := fs.String("authority", "", "token authority override (a simulator)")
	graphRoot := fs.String("graph-root", "", "Graph root override (a simulator)")
	caFile := fs.String("ca-file", "", "extra trusted CA (PEM) for authority and Graph root")
	poolPub := fs.String("pool-public-key", "", "the pool's public key (X...); default: derived from --pool-key-file or M365_POOL_KEY")
	poolKeyFile := fs.String("pool-key-file", "", "the pool's private seed, to derive its public key")
	if err := fs.parse(rest); err != nil {
		return err
	}
	nc, js, topo, store, err := cf.instances(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	var in, prev worker.Instance
	if sub == "update" {
		cur, err := store.Get(ctx, id)
		if err != nil {
			return err
		}
		in, prev = *cur, *cur
	} else if _, err := store.Get(ctx, id); err == nil {
		return fmt.Errorf("instance %s exists: use instance update", id)
	}
	in.ID = id
	readIn := func(path string) ([]byte, error) {
		if path == "-" {
			return io.ReadAll(bufio.NewReader(os.Stdin))
		}
		return os.ReadFile(path)
	}
	var secret []byte
	if *config != "" {
		b, err := readIn(*config)
		if err != nil {
			return err
		}
		var tc tevyraConfig
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&tc); err != nil {
			return usageError{fmt.Errorf("--config: %v (want {\"tenant_id\",\"client_id\",\"client_secret\"})", err)}
		}
		in.TenantID, in.ClientID, secret = tc.TenantID, tc.ClientID, []byte(tc.ClientSecret)
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&in.TenantID, *tenant)
	set(&in.ClientID, *client)
	set(&in.Cloud, *cloud)
	set(&in.Pool, *pool)
	set(&in.HTTPProxy, *proxy)
	set(&in.Authority, *authority)
	set(&in.GraphRoot, *graphRoot)
	if *interval > 0 {
		in.SyncInterval = worker.Duration(*interval)
	}
	if *caFile != "" {
		b, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		in.CAPEM = string(b)
	}
	if *secretFile != "" {
		if secret, err = readIn(*secretFile); err != nil {
			return err
		}
	}
	pf := &poolFlags{poolKeyFile: poolKeyFile}
	kp, err := pf.poolKey()
	if err != nil {
		return err
	}
	pub := *poolPub
	if pub == "" && kp != nil {
		pub, _ = kp.PublicKey()
	}
	if pub == "" && (len(secret) > 0 || *keyFile != "") {
		return usageError{errors.New("the pool's public key is needed to seal the secret: give --pool-public-key, --pool-key-file or M365_POOL_KEY")}
	}
	if s := strings.TrimSpace(string(secret)); s != "" {
		if in.ClientSecret, err = jobs.SealFor([]byte(s), pub, in.SecretBinding(worker.FieldClientSecret)); err != nil {
			return err
		}
		in.CertificateKey, in.Certificate, in.FederatedCredential, in.ClientSecretExpiresAt = nil, "", false, nil
	}
	if *federated {
		if len(secret) > 0 || *keyFile != "" {
			return usageError{errors.New("--federated-credential replaces a secret: give no --secret-file, --config secret or --certificate-key with it")}
		}
		in.FederatedCredential, in.ClientSecret, in.CertificateKey, in.Certificate, in.ClientSecretExpiresAt = true, nil, nil, "", nil
	}
	if *secretExpires != "" {
		t, err := parseDay(*secretExpires)
		if err != nil {
			return usageError{fmt.Errorf("--secret-expires: %v", err)}
		}
		in.ClientSecretExpiresAt = &t
	}
	if *certFile != "" || *keyFile != "" {
		cert, err := os.ReadFile(*certFile)
		if err != nil {
			return fmt.Errorf("--certificate: %w", err)
		}
		key, err := os.ReadFile(*keyFile)
		if err != nil {
			return fmt.Errorf("--certificate-key: %w", err)
		}
		if in.CertificateKey, err = jobs.SealFor(key, pub, in.SecretBinding(worker.FieldCertificateKey)); err != nil {
			return err
		}
		in.Certificate, in.ClientSecret, in.FederatedCredential, in.ClientSecretExpiresAt = string(cert), nil, false, nil
	}
	if err := sealProxyCredentials(&in, pub, *proxy != ""); err != nil {
		return err
	}
	if err := resealStale(&in, &prev, kp, pub); err != nil {
		return err
	}
	saved, firstSync, err := store.Apply(ctx, in)
	if err != nil {
		return err
	}
	if err := ensurePoolConsumer(ctx, js, topo, saved.Pool); err != nil {
		return fmt.Errorf("set up the consumer of pool %s: %w", saved.Pool, err)
	}
	fmt.Fprintf(stdout, "instance %s %sed in pool %s; syncs every %s", saved.ID, strings.TrimSuffix(sub, "e"), saved.Pool, time.Duration(saved.SyncInterval))
	if firstSync != "" {
		fmt.Fprintf(stdout, "; syncing now (job %s)", firstSync)
	}
	fmt.Fprintln(stdout)
	return nil
}

// parseDay reads a date (2027-06-30, the end of that day UTC) or an
// RFC 3339 time.
func parseDay(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	d, err := time.Parse("2006-01-02", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a date (2027-06-30) or an RFC 3339 time", s)
	}
	return d.Add(24*time.Hour - time.Second), nil
}

// sealProxyCredentials moves credentials given in --http-proxy
// (http://user:password@host) into a sealed field: they never sit in clear
// in the bucket.
func sealProxyCredentials(in *worker.Instance, pub string, given bool) error {
	u, err := url.Parse(in.HTTPProxy)
	if in.HTTPProxy == "" || err != nil || u.User == nil {
		if given {
			in.ProxyCredentials = nil // a new proxy without credentials
		}
		return nil
	}
	if pub == "" {
		return usageError{errors.New("the proxy's credentials are sealed with the pool's public key: give --pool-public-key, --pool-key-file or M365_POOL_KEY")}
	}
	pass, _ := u.User.Password()
	sealed, err := jobs.SealFor([]byte(u.User.Username()+":"+pass), pub, in.SecretBinding(worker.FieldProxy))
	if err != nil {
		return err
	}
	u.User = nil
	in.HTTPProxy, in.ProxyCredentials = u.String(), sealed
	return nil
}

// resealStale seals again, for the instance as it now is and to the pool
// public key pub, a secret sealed for what it was (another tenant or app
// id), sealed before seals were bound, or sealed to another pool key (the
// pool's key is being rotated: kp is then the old key, pub the new one):
// that needs the private key kp, which opens the old seal.
func resealStale(in, prev *worker.Instance, kp nkeys.KeyPair, pub string) error {
	for _, f := range []struct {
		name string
		s    **jobs.SealedSecret
	}{{worker.FieldClientSecret, &in.ClientSecret}, {worker.FieldCertificateKey, &in.CertificateKey}, {worker.FieldProxy, &in.ProxyCredentials}} {
		s := *f.s
		if s == nil || (s.SealedFor(in.SecretBinding(f.name)) && (pub == "" || s.Recipient == pub)) {
			continue
		}
		if kp == nil {
			return usageError{fmt.Errorf("the %s of %s is sealed for %s, not for %s: give the secret again (--secret-file, --config or --certificate-key), or give the pool's key (--pool-key-file or M365_POOL_KEY) to seal it again", f.name, in.ID, cmp.Or(s.For, "no instance (sealed before seals named their place)"), in.SecretBinding(f.name))}
		}
		if own, _ := kp.PublicKey(); s.Recipient != own {
			return usageError{fmt.Errorf("the %s of %s is sealed to pool key %s, and the key given is %s: give the key it is sealed to (--pool-key-file) and the new public key (--pool-public-key)", f.name, in.ID, s.Recipient, own)}
		}
		var plain []byte
		var err error
		if s.Alg == jobs.SealAlg {
			plain, err = s.Open(kp)
		} else {
			plain, err = s.OpenFor(kp, prev.SecretBinding(f.name))
		}
		if err != nil {
			return fmt.Errorf("seal the %s of %s again: %w", f.name, in.ID, err)
		}
		to := pub
		if to == "" {
			to, _ = kp.PublicKey()
		}
		if *f.s, err = jobs.SealFor(plain, to, in.SecretBinding(f.name)); err != nil {
			return err
		}
	}
	return nil
}

// --- job -----------------------------------------------------------------------

func cmdJob(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub, rest, err := subcommand(args, "usage: m365-worker job submit --instance I --action A --params JSON [--wait]\n", stderr)
	if err != nil {
		return err
	}
	if sub != "submit" {
		return usageError{fmt.Errorf("unknown job command %q (want submit)", sub)}
	}
	fs := newFlagSet("job submit", "Publish a job with a fresh id; with --wait, print its result (exit status 1 when it failed).", stderr)
	cf := addConnFlags(fs)
	instance := fs.String("instance", "", "instance id (required)")
	action := fs.String("action", "", "sync or an action: create_user, disable_user, … (required)")
	params := fs.String("params", "{}", "parameters as JSON")
	pool := fs.String("pool", "", "pool serving the instance (default: the instance's configured pool)")
	dry := fs.Bool("dry-run", false, "validate and resolve without writing")
	wait := fs.Bool("wait", false, "wait for the result and print it")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long --wait waits")
	if err := fs.parse(rest); err != nil {
		return err
	}
	if *instance == "" || *action == "" {
		return usageError{errors.New("--instance and --action are required")}
	}
	nc, js, topo, err := cf.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	if *pool == "" {
		*pool = jobs.DefaultPool
		if store, err := worker.OpenInstances(ctx, js, topo); err == nil {
			if in, err := store.Get(ctx, *instance); err == nil {
				*pool = in.Pool
			} else {
				fmt.Fprintf(stderr, "m365-worker: instance %s is not configured here; submitting to pool %s\n", *instance, *pool)
			}
		}
	}
	j := &jobs.Job{Instance: *instance, Action: jobs.FullAction(*action), Params: json.RawMessage(*params), RequestedBy: "m365-worker cli", DryRun: *dry}
	now := time.Now().UTC()
	j.RequestedAt = &now
	if _, err := worker.Submit(ctx, js, topo.Subjects, *pool, j); err != nil {
		return err
	}
	if !*wait {
		if cf.json() {
			return printJSON(stdout, map[string]string{"job_id": j.ID})
		}
		fmt.Fprintf(stdout, "job %s submitted\n", j.ID)
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	res, err := worker.WaitResult(wctx, js, topo, *instance, j.Action, j.ID)
	if err != nil {
		return err
	}
	if cf.json() {
		_ = printJSON(stdout, res)
	} else if res.Status == jobs.StatusSucceeded {
		fmt.Fprintf(stdout, "job %s succeeded in %s: %s\n", res.JobID, res.FinishedAt.Sub(res.StartedAt).Round(time.Millisecond), res.Output)
	} else {
		fmt.Fprintf(stdout, "job %s failed: %s: %s\n", res.JobID, res.Error.Code, res.Error.Message)
	}
	if res.Status != jobs.StatusSucceeded {
		return errSilent
	}
	return nil
}

// errSilent exits 1 without another message.
var errSilent = errors.New("")

// --- failed --------------------------------------------------------------------

func cmdFailed(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub, rest, err := subcommand(args, "usage: m365-worker failed list|show|replay [flags]\n", stderr)
	if err != nil {
		return err
	}
	fs := newFlagSet("failed "+sub, map[string]string{
		"list":   "List failure records, newest last; filter by instance, action, error code and age.",
		"show":   "Show one failure record with the original job it failed (secrets in jobs stay sealed).",
		"replay": "Replay one failed job, or with --all every failure the filters select, as a new job\nwith its own id and result; the header M365-Replay-Of names the job it replays.",
	}[sub], stderr)
	cf := addConnFlags(fs)
	instance := fs.String("instance", "", "only this instance")
	action := fs.String("action", "", "only this action")
	code := fs.String("code", "", "only this error code")
	since := fs.Duration("since", 0, "only failures within this long (e.g. 24h)")
	all := fs.Bool("all", false, "replay: every failure the filters select")
	dry := fs.Bool("dry-run", false, "replay: say what would be replayed")
	var id string
	if (sub == "show" || sub == "replay") && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		id, rest = rest[0], rest[1:]
	}
	if err := fs.parse(rest); err != nil {
		return err
	}
	if sub == "show" && id == "" || sub == "replay" && id == "" && !*all {
		return usageError{fmt.Errorf("usage: m365-worker failed %s JOB_ID%s", sub, map[bool]string{true: " | --all [filters]", false: ""}[sub == "replay"])}
	}
	nc, js, topo, err := cf.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	filter := worker.FailureFilter{Instance: *instance, Action: *action, Code: *code}
	if *since > 0 {
		filter.Since = time.Now().Add(-*since)
	}
	recs, err := worker.Failures(ctx, js, topo, filter)
	if err != nil {
		return err
	}
	if id != "" {
		var keep []jobs.FailureRecord
		for _, r := range recs {
			if r.JobID == id {
				keep = append(keep, r)
			}
		}
		if len(keep) == 0 {
			return fmt.Errorf("no failure record for job %s", id)
		}
		recs = keep
	}
	switch sub {
	case "list":
		if cf.json() {
			return printJSON(stdout, recs)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FAILED AT\tJOB\tINSTANCE\tACTION\tCODE\tMESSAGE")
		for _, r := range recs {
			msg := r.Error.Message
			if len(msg) > 80 {
				msg = msg[:77] + "..."
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.FailedAt.Format(time.RFC3339), r.JobID, r.Instance, jobs.ShortAction(r.Action), r.Error.Code, msg)
		}
		return tw.Flush()
	case "show":
		r := recs[len(recs)-1]
		orig, err := worker.OriginalJob(ctx, js, topo, &r)
		out := map[string]any{"failure": r}
		if err == nil {
			var env any
			if json.Unmarshal(orig.Data, &env) == nil {
				job, masked := redactClear(env)
				out["job"] = job
				if len(masked) > 0 {
					out["redacted"] = masked
				}
			} else {
				out["job_raw_bytes"] = len(orig.Data)
			}
		} else {
			out["job_error"] = err.Error()
		}
		return printJSON(stdout, out)
	case "replay":
		for _, r := range recs {
			if *dry {
				fmt.Fprintf(stdout, "would replay %s (%s, %s)\n", r.JobID, r.Instance, r.Error.Code)
				continue
			}
			newID, err := worker.Replay(ctx, js, topo, &r)
			if err != nil {
				fmt.Fprintf(stderr, "m365-worker: %v\n", err)
				continue
			}
			fmt.Fprintf(stdout, "replayed %s as %s\n", r.JobID, newID)
		}
		return nil
	}
	return usageError{fmt.Errorf("unknown failed command %q (want list, show or replay)", sub)}
}

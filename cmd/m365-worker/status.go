package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// instanceTest is `instance test ID`: the "test connection" an admin runs
// after the App Registration steps.
func instanceTest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usageError{errors.New("usage: m365-worker instance test ID")}
	}
	id, rest := args[0], args[1:]
	fs := newFlagSet("instance test", "Get a token for the instance, read the permissions granted to its app, and say what works\nand what to grant. Exit status 1 when sync itself cannot work.", stderr)
	cf := addConnFlags(fs)
	keyFile := fs.String("pool-key-file", "", "the pool's private seed (or M365_POOL_KEY), to open the instance's secret")
	allowOverrides := fs.Bool("allow-endpoint-overrides", false, "use the instance record's authority, graph_root and ca_pem (a Graph simulator or test tenant), as the workers do with the same flag")
	tokenFile := fs.String("federated-token-file", os.Getenv("AZURE_FEDERATED_TOKEN_FILE"), "the pool's federated token, to test an instance with a federated credential (as the workers' --federated-token-file)")
	if err := fs.parse(rest); err != nil {
		return err
	}
	keys, err := (&poolFlags{poolKeyFile: keyFile}).poolKeys()
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return usageError{errors.New("the pool key is needed to open the instance's secret: --pool-key-file or M365_POOL_KEY")}
	}
	nc, _, _, store, err := cf.instances(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	in, err := store.Get(ctx, id)
	if err != nil {
		return err
	}
	cfg, err := handlers.ClientConfig(in, worker.OpenWith(keys), 0)
	if err != nil {
		return err
	}
	c, err := graphclient.NewPool(graphclient.PoolConfig{MaxAttempts: 2, MaxWait: 10 * time.Second, AllowEndpointOverrides: *allowOverrides, FederatedTokenFile: *tokenFile}).Client(cfg)
	if errors.Is(err, graphclient.ErrEndpointOverride) {
		return fmt.Errorf("%w; --allow-endpoint-overrides uses them", err)
	}
	if err != nil {
		return err
	}
	g, err := c.Grants(ctx)
	if err != nil {
		fmt.Fprintf(stdout, "✗ token: %v\n", err)
		if in.FederatedCredential {
			fmt.Fprintln(stdout, federatedHint(*tokenFile))
		}
		return errSilent
	}
	fmt.Fprintf(stdout, "✓ token for app %s in tenant %s\n  granted: %s\n", in.ClientID, in.TenantID, strings.Join(g.Roles, ", "))
	cred, credErr := handlers.CredentialOf(ctx, c, in)
	fmt.Fprintf(stdout, "  credential: %s\n", credentialLine(cred, time.Now()))
	if credErr != nil && cred.Kind != jobs.CredentialFederated && cred.Kind != jobs.CredentialCertificate {
		fmt.Fprintln(stdout, "  (optional) grant Application.Read.All to let the workers read the client secret's expiry from the app registration")
	}
	type check struct {
		what  string
		ok    bool
		grant string
	}
	readUsers := g.Has("User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All")
	readGroups := g.Has("Group.Read.All", "Group.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All")
	readSKUs := g.Has("Directory.Read.All", "Directory.ReadWrite.All", "Organization.Read.All", "LicenseAssignment.ReadWrite.All")
	writeUsers := g.Has("User.ReadWrite.All", "Directory.ReadWrite.All")
	writeGroups := g.Has("Group.ReadWrite.All", "Directory.ReadWrite.All")
	userAdmin := g.HasDirectoryRole(graphclient.RoleUserAdministrator) || g.HasDirectoryRole(graphclient.RolePrivilegedAuthenticationAdministrator)
	checks := []check{
		{"sync: users", readUsers, "User.Read.All"},
		{"sync: groups and members", readGroups, "Group.Read.All"},
		{"sync: licences", readSKUs, "Directory.Read.All"},
		{"actions on users (create, update, disable, enable, delete, licences)", writeUsers, "User.ReadWrite.All"},
		{"actions on groups and members", writeGroups, "Group.ReadWrite.All"},
		{"change notifications (with notify-url: fresher than polling)", readUsers && readGroups, "User.Read.All and Group.Read.All"},
		{"reset_password", writeUsers && userAdmin, "the User Administrator directory role (Entra ID → Roles and administrators → User Administrator → add the app)"},
	}
	syncOK := readUsers && readGroups && readSKUs
	var missing []string
	for _, ch := range checks {
		mark := "✓"
		if !ch.ok {
			mark = "✗"
			missing = append(missing, ch.grant)
		}
		fmt.Fprintf(stdout, "%s %s\n", mark, ch.what)
	}
	if syncOK {
		// Prove it with a read.
		if _, err := c.SubscribedSKUs(ctx); err != nil {
			fmt.Fprintf(stdout, "✗ reading the tenant failed: %v\n", err)
			syncOK = false
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(stdout, "To enable the rest, grant in the Azure portal (App registrations → %s → API permissions → Microsoft Graph → Application permissions, then Grant admin consent):\n", in.ClientID)
		for _, m := range missing {
			fmt.Fprintf(stdout, "  - %s\n", m)
		}
	}
	if !syncOK {
		fmt.Fprintln(stdout, "Sync cannot work with these permissions.")
		return errSilent
	}
	return nil
}

// credentialLine is a credential's kind and expiry for people.
func credentialLine(c jobs.CredentialState, now time.Time) string {
	kind := map[string]string{jobs.CredentialClientSecret: "client secret", jobs.CredentialCertificate: "certificate",
		jobs.CredentialFederated: "federated (no secret to expire)"}[c.Kind]
	if kind == "" {
		return "unknown"
	}
	if c.ExpiresAt == nil {
		if c.Kind == jobs.CredentialFederated {
			return kind
		}
		return kind + ", expiry unknown (give --secret-expires, or grant Application.Read.All)"
	}
	from := map[string]string{jobs.ExpiryFromCertificate: "the certificate", jobs.ExpiryFromRecord: "the instance record", jobs.ExpiryFromGraph: "the app registration"}[c.Source]
	left := c.ExpiresAt.Sub(now)
	when := fmt.Sprintf("in %d days", int(left.Hours()/24))
	switch {
	case left <= 0:
		when = "EXPIRED"
	case left <= jobs.CredentialWarning:
		when = fmt.Sprintf("in %d days: renew it", int(left.Hours()/24))
	}
	return fmt.Sprintf("%s, expires %s (%s; from %s)", kind, c.ExpiresAt.UTC().Format("2006-01-02"), when, from)
}

// federatedHint says what a federated credential of the app must name: the
// issuer and subject of the pool's token (read, not verified).
func federatedHint(tokenFile string) string {
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		return "  the pool's federated token is needed to test it: --federated-token-file (the workers' token file)"
	}
	parts := strings.Split(strings.TrimSpace(string(b)), ".")
	var claims struct{ Iss, Sub string }
	if len(parts) == 3 {
		if raw, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil {
			_ = json.Unmarshal(raw, &claims)
		}
	}
	return fmt.Sprintf("  the app registration needs a federated credential (Certificates & secrets → Federated credentials → Other issuer) with\n    issuer:   %s\n    subject:  %s\n    audience: api://AzureADTokenExchange", claims.Iss, claims.Sub)
}

// cmdStatus shows instances and pools.
func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", "Per instance: the last sync, the indicators, credential health and the next scheduled tick.\nPer pool: the live workers and the consumer's backlog.", stderr)
	cf := addConnFlags(fs)
	if err := fs.parse(args); err != nil {
		return err
	}
	nc, js, topo, store, err := cf.instances(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	list, err := store.List(ctx)
	if err != nil {
		return err
	}
	sched := worker.NewSchedules(js, topo)
	type instStatus struct {
		ID         string                 `json:"id"`
		Pool       string                 `json:"pool"`
		Sync       handlers.SyncMeta      `json:"sync"`
		Running    *handlers.SyncProgress `json:"running,omitempty"`
		NextSync   *time.Time             `json:"next_sync,omitempty"`
		Credential string                 `json:"credentials"`
		Expiry     *jobs.CredentialState  `json:"credential,omitempty"`
	}
	type poolStatus struct {
		Pool        string `json:"pool"`
		LiveWorkers int    `json:"live_workers"`
		Backlog     uint64 `json:"backlog"`
		InFlight    int    `json:"in_flight"`
	}
	var insts []instStatus
	pools := map[string]bool{jobs.DefaultPool: true}
	st, err := worker.OpenState(ctx, js, topo)
	if err != nil {
		return err
	}
	running, _ := handlers.ReadSyncProgress(ctx, st)
	for _, in := range list {
		pools[in.Pool] = true
		m, _ := handlers.ReadSyncMeta(ctx, st.For(in.Pool, in.ID))
		m.UserLink, m.GroupLink = "", "" // not for display
		st := instStatus{ID: in.ID, Pool: in.Pool, Sync: m, Credential: "ok"}
		if m.AuthFailed {
			st.Credential = "refused: " + m.AuthError
		} else if m.LastAt.IsZero() {
			st.Credential = "not yet used"
		}
		if m.Credential != nil {
			st.Expiry = &m.Credential.CredentialState
		}
		if p, ok := running[in.ID]; ok {
			st.Running = &p
		}
		if next, err := sched.Next(ctx, in.Pool, in.ID); err == nil && !next.IsZero() {
			st.NextSync = &next
		}
		insts = append(insts, st)
	}
	var ps []poolStatus
	for p := range pools {
		n, _ := worker.LiveWorkers(ctx, js, topo, p)
		s := poolStatus{Pool: p, LiveWorkers: n}
		if c, err := js.Consumer(ctx, worker.WithSitePools(ctx, js, topo, p).PoolJobsStream(p), topo.ConsumerName(p)); err == nil {
			if info, err := c.Info(ctx); err == nil {
				s.Backlog, s.InFlight = info.NumPending, info.NumAckPending
			}
		}
		ps = append(ps, s)
	}
	if cf.json() {
		return printJSON(stdout, map[string]any{"instances": insts, "pools": ps})
	}
	for _, st := range insts {
		fmt.Fprintf(stdout, "instance %s (pool %s)\n", st.ID, st.Pool)
		if st.Sync.LastAt.IsZero() {
			fmt.Fprintln(stdout, "  last sync:   none yet")
		} else {
			fmt.Fprintf(stdout, "  last sync:   %s, %s, %s ago, took %s\n", st.Sync.LastOutcome, st.Sync.LastMode, time.Since(st.Sync.LastAt).Round(time.Second),
				time.Duration(st.Sync.LastDuration).Round(time.Millisecond))
			if len(st.Sync.LastCounts) > 0 {
				fmt.Fprintf(stdout, "               %s; %d Graph requests, %d throttled\n", countsLine(st.Sync.LastCounts), st.Sync.LastRequests, st.Sync.LastThrottled)
			}
		}
		if p := st.Running; p != nil {
			fmt.Fprintf(stdout, "  running:     %s\n", progressLine(*p, time.Now()))
		}
		if ind := st.Sync.Indicators; ind != nil {
			fmt.Fprintf(stdout, "  indicators:  %d users (%d enabled, %d licensed), %d groups, %d of %d licences used\n",
				ind.UsersTotal, ind.UsersEnabled, ind.UsersLicensed, ind.GroupsTotal, ind.LicensesConsumed, ind.LicensesTotal)
		}
		fmt.Fprintf(stdout, "  credentials: %s\n", st.Credential)
		if st.Expiry != nil {
			fmt.Fprintf(stdout, "               %s\n", credentialLine(*st.Expiry, time.Now()))
		}
		if n := st.Sync.Notify; n != nil {
			fmt.Fprintf(stdout, "  notifications: %s\n", notifyLine(n, time.Now()))
		}
		if st.NextSync != nil {
			fmt.Fprintf(stdout, "  next sync:   %s\n", st.NextSync.Format(time.RFC3339))
		}
	}
	for _, p := range ps {
		fmt.Fprintf(stdout, "pool %s: %d live workers, %d jobs waiting, %d in flight\n", p.Pool, p.LiveWorkers, p.Backlog, p.InFlight)
	}
	return nil
}

// countsLine is "m365_user 3 upserts 1 delete, m365_group …".
func countsLine(c map[string]jobs.SyncCounts) string {
	var parts []string
	for _, typ := range []string{jobs.AssetLicense, jobs.AssetUser, jobs.AssetGroup} {
		if n, ok := c[typ]; ok {
			parts = append(parts, fmt.Sprintf("%s %d upserts %d deletes", typ, n.Upserts, n.Deletes))
		}
	}
	return strings.Join(parts, ", ")
}

// progressLine describes a running round.
func progressLine(p handlers.SyncProgress, now time.Time) string {
	line := fmt.Sprintf("%s round %s on %s for %s: users %d in %d pages, groups %d in %d pages, %d objects/s",
		p.Mode, p.SyncID, p.Worker, now.Sub(p.StartedAt).Round(time.Second), p.Users.Objects, p.Users.Pages, p.Groups.Objects, p.Groups.Pages, p.PerSecond)
	if p.Stale(now) {
		line += fmt.Sprintf(" (no news for %s: its worker may have died; the round runs again after the lock expires)", now.Sub(p.UpdatedAt).Round(time.Second))
	}
	return line
}

// notifyLine says how an instance's change notifications are doing.
func notifyLine(n *handlers.NotifyState, now time.Time) string {
	switch {
	case n.Error != "":
		return "✗ " + n.Error + " (polling at the normal interval)"
	case n.Doubt != "":
		return "? " + n.Doubt + " (polling at the normal interval)"
	case !n.Healthy(now):
		return "✗ no live subscription yet (polling at the normal interval)"
	}
	until := n.Users.Expires
	if n.Groups.Expires.Before(until) {
		until = n.Groups.Expires
	}
	line := fmt.Sprintf("✓ users and groups subscribed until %s", until.Format(time.RFC3339))
	if !n.NotifiedAt.IsZero() {
		line += fmt.Sprintf("; last notification %s ago", now.Sub(n.NotifiedAt).Round(time.Second))
	}
	return line + "; scheduled ticks are the backstop"
}

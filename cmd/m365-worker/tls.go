package main

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/tevyra/m365-worker/internal/pki"
)

// cmdTLS makes a development CA and certificates for the NATS configs of
// deploy/nats (compose, a test system); production uses its own CA.
func cmdTLS(args []string, stdout, stderr io.Writer) error {
	sub, rest, err := subcommand(args, "usage: m365-worker tls init --dir DIR [--hosts nats,localhost,127.0.0.1] [--clients operator,tevyra,worker-default,monitor,notify]\n", stderr)
	if err != nil || sub != "init" {
		if err == nil {
			err = usageError{fmt.Errorf("unknown tls command %q (want init)", sub)}
		}
		return err
	}
	fs := newFlagSet("tls init", "Make a CA, a server certificate and client certificates (PEM) for the NATS configs of deploy/nats:\n"+
		"what compose and a test system need. Keys are written 0600. Production deployments use their own CA.", stderr)
	dir := fs.String("dir", "", "directory for the files (required)")
	hosts := fs.String("hosts", "nats,localhost,127.0.0.1", "names and addresses of the servers, comma-separated")
	clients := fs.String("clients", "operator,tevyra,worker-default,monitor,notify", "client certificates to make, one per role, comma-separated")
	validFor := fs.Duration("valid-for", 365*24*time.Hour, "how long the certificates are valid")
	if err := fs.parse(rest); err != nil {
		return err
	}
	if *dir == "" {
		return usageError{errors.New("--dir is required")}
	}
	f, err := pki.Init(*dir, splitList(*hosts), splitList(*clients), *validFor)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "CA:     %s\nserver: %s, %s (NATS_TLS_CA, NATS_TLS_CERT, NATS_TLS_KEY of the servers)\n", f.CA, f.ServerCert, f.ServerKey)
	names := make([]string, 0, len(f.Clients))
	for n := range f.Clients {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(stdout, "client %s: %s, %s (--tls-ca %s --tls-cert %s --tls-key %s)\n", n, f.Clients[n][0], f.Clients[n][1], f.CA, f.Clients[n][0], f.Clients[n][1])
	}
	return nil
}

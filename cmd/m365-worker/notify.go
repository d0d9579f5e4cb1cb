package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tevyra/m365-worker/internal/httpserve"
	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/internal/tracing"
	"github.com/tevyra/m365-worker/jobs"
)

// notifyFlags are the receiver's own flags.
type notifyFlags struct {
	listen, basePath, certFile, keyFile, masterFile, previousFile, metricsListen *string
	insecure                                                                     *bool
	spacing, drain                                                               *time.Duration
	maxConns, maxPerIP, maxBodyReads                                             *int
}

// cmdNotify serves the HTTPS receiver of Graph change notifications: an
// instance's notifications become at most one sync trigger per spacing on
// <prefix>.jobs.<pool>.<instance>.notified (docs/notify.md).
func cmdNotify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("notify", "Receive Microsoft Graph change notifications on https://<host>/<pool>/<instance> (and .../lifecycle) and publish\n"+
		"sync triggers on <prefix>.jobs.<pool>.<instance>.notified, at most one per instance and spacing. clientState values derive\n"+
		"from the master key of --master-key-file, so no database is needed (docs/notify.md).", stderr)
	cf := addConnFlags(fs)
	f := notifyFlags{
		listen:        fs.String("listen", ":8443", "host:port Graph's notifications come to"),
		basePath:      fs.String("base-path", "", "the path of the notification URLs' base, when it has one: /graph for https://hooks.example.com/graph (default: none)"),
		certFile:      fs.String("tls-cert-file", "", "the HTTPS certificate (PEM, with its chain); required unless --insecure-http"),
		keyFile:       fs.String("tls-key-file", "", "the HTTPS certificate's key (PEM)"),
		insecure:      fs.Bool("insecure-http", false, "serve plain HTTP, for a receiver behind an ingress that terminates TLS (Graph calls https only)"),
		masterFile:    fs.String("master-key-file", "", "file with the master key every clientState derives from, at least 32 bytes, surrounding whitespace ignored (required; e.g. openssl rand -base64 48)"),
		previousFile:  fs.String("previous-master-key-file", "", "during a master-key rotation, the old master key: notifications with a clientState derived from it are accepted too"),
		spacing:       fs.Duration("spacing", notify.DefaultSpacing, "the least time between two triggers of one instance; notifications within it make one more trigger when it ends"),
		maxConns:      fs.Int("max-connections", 256, "connections open at once on --listen; past it, the one waiting longest without a request makes room, or the new one is closed"),
		maxPerIP:      fs.Int("max-connections-per-ip", 64, "connections open at once from one address; past it, that address's connection waiting longest makes room (0: no such cap; behind an ingress every connection comes from it)"),
		maxBodyReads:  fs.Int("max-body-reads", notify.DefaultMaxBodyReads, "notification bodies read at once; a POST past it is answered 503 with Retry-After"),
		drain:         fs.Duration("drain", 10*time.Second, "on SIGINT/SIGTERM, how long /readyz fails and notifications are answered 503 before the listener closes (a second signal ends it)"),
		metricsListen: fs.String("metrics-listen", "", "serve /metrics (Prometheus), /healthz and /readyz here, e.g. 127.0.0.1:9466 (off when empty)"),
	}
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := fs.parse(args); err != nil {
		return err
	}
	log, err := (&poolFlags{logLevel: logLevel, logFormat: logFormat}).logger(stderr)
	if err != nil {
		return err
	}
	if err := f.check(*cf.prefix); err != nil {
		return err
	}
	memoryLimitFromContainer(log)
	masters, err := f.masterKeys()
	if err != nil {
		return err
	}
	defer func() {
		for _, m := range masters {
			clear(m)
		}
	}()
	tlsConfig, err := f.tlsConfig()
	if err != nil {
		return err
	}
	nc, err := notifyConnect(cf)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := newJetStream(nc, *cf.jsDomain, *cf.jsAPIPrefix)
	if err != nil {
		return err
	}
	// Traces from the OTEL_* environment, as the workers' (docs/operations.md):
	// nothing is exported unless configured; flushed on exit.
	traces, err := tracing.Setup(ctx, "m365-worker-notify", version, log)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = traces.Shutdown(sctx)
	}()
	rcv, err := notify.New(notify.Config{Master: masters[0], PreviousMasters: masters[1:], JetStream: js, Subjects: jobs.Subjects{Prefix: *cf.prefix},
		BasePath: *f.basePath, Spacing: *f.spacing, MaxBodyReads: *f.maxBodyReads, Logger: log})
	if err != nil {
		return err
	}
	defer rcv.Close()
	return serveNotify(ctx, f, rcv, tlsConfig, nc, log, stdout)
}

func (f notifyFlags) check(prefix string) error {
	switch {
	case *f.masterFile == "":
		return usageError{errors.New("--master-key-file (or M365_MASTER_KEY_FILE) is required: the master key clientState values derive from")}
	case *f.insecure && (*f.certFile != "" || *f.keyFile != ""):
		return usageError{errors.New("--insecure-http excludes --tls-cert-file and --tls-key-file")}
	case !*f.insecure && (*f.certFile == "" || *f.keyFile == ""):
		return usageError{errors.New("--tls-cert-file and --tls-key-file are required (Graph calls https only); behind an ingress that terminates TLS, use --insecure-http")}
	case *f.spacing <= 0:
		return usageError{fmt.Errorf("--spacing %s: must be positive", *f.spacing)}
	case *f.maxConns <= 0 || *f.maxBodyReads <= 0 || *f.maxPerIP < 0:
		return usageError{errors.New("--max-connections and --max-body-reads must be positive, --max-connections-per-ip not negative")}
	case *f.drain < 0:
		return usageError{fmt.Errorf("--drain %s: must not be negative", *f.drain)}
	}
	if err := jobs.CheckToken("--prefix", prefix); err != nil {
		return usageError{err}
	}
	return nil
}

// masterKeys reads the master key and, during a rotation, the previous one.
func (f notifyFlags) masterKeys() ([][]byte, error) {
	files := []string{*f.masterFile}
	if *f.previousFile != "" {
		files = append(files, *f.previousFile)
	}
	var keys [][]byte
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read the master key: %w", err)
		}
		key := bytes.TrimSpace(b)
		if len(key) < notify.MinMasterKey {
			clear(b)
			return nil, fmt.Errorf("the master key in %s is %d bytes; it must be at least %d (e.g. openssl rand -base64 48 > %s)", file, len(key), notify.MinMasterKey, file)
		}
		keys = append(keys, key)
	}
	return keys, nil
}

func (f notifyFlags) tlsConfig() (*tls.Config, error) {
	if *f.insecure {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(*f.certFile, *f.keyFile)
	if err != nil {
		return nil, fmt.Errorf("load the HTTPS certificate: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, nil
}

// serveNotify serves the receiver until ctx ends, then shuts down as
// documented: readiness fails and notifications are answered 503 with
// Retry-After for --drain (or until a second signal), then the listener
// closes, the requests in flight finish and the deferred triggers are
// published.
func serveNotify(ctx context.Context, f notifyFlags, rcv *notify.Receiver, tlsConfig *tls.Config, nc *nats.Conn, log *slog.Logger, stdout io.Writer) error {
	l, err := net.Listen("tcp", *f.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *f.listen, err)
	}
	srv := httpserve.Server(rcv, httpserve.Limits{}, log)
	srv.TLSConfig = tlsConfig
	limited := httpserve.LimitListener(l, httpserve.Caps{Max: *f.maxConns, PerIP: *f.maxPerIP}, srv)
	rcv.ConnectionStats(func() (int64, int64) { return limited.Open(), limited.Refused() })
	served := make(chan error, 2)
	scheme := "https"
	if tlsConfig != nil {
		go func() { served <- srv.ServeTLS(limited, "", "") }()
	} else {
		scheme = "http"
		go func() { served <- srv.Serve(limited) }()
	}
	if *f.metricsListen != "" {
		ml, err := net.Listen("tcp", *f.metricsListen)
		if err != nil {
			_ = srv.Close()
			return fmt.Errorf("--metrics-listen %s: %w", *f.metricsListen, err)
		}
		msrv := httpserve.Server(rcv.MetricsHandler(), httpserve.Limits{}, log)
		go func() { served <- msrv.Serve(httpserve.LimitListener(ml, httpserve.Caps{Max: 32}, msrv)) }()
		defer msrv.Close()
		fmt.Fprintf(stdout, "notify metrics on http://%s/metrics\n", ml.Addr())
	}
	fmt.Fprintf(stdout, "notify listening on %s://%s%s\n", scheme, l.Addr(), strings.TrimRight(*f.basePath, "/"))
	log.Info("notify: serving", "listen", l.Addr().String(), "scheme", scheme, "nats", nc.ConnectedUrlRedacted(), "spacing", f.spacing.String())

	select {
	case <-ctx.Done():
	case err := <-served:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve notifications: %w", err)
		}
	}
	drainNotify(rcv, srv, *f.drain, log)
	s := rcv.Stats()
	log.Info("notify: stopped", "received", s.Received, "refused", s.Refused, "triggers_published", s.Published, "triggers_dropped", s.Dropped)
	return nil
}

// drainNotify is the shutdown: readiness fails and new notifications get
// 503 at once; the listener closes after drain or a second signal.
func drainNotify(rcv *notify.Receiver, srv *http.Server, drain time.Duration, log *slog.Logger) {
	rcv.BeginShutdown()
	srv.SetKeepAlivesEnabled(false)
	log.Info("notify: draining: /readyz fails and notifications are answered 503 with Retry-After", "drain", drain.String())
	again := make(chan os.Signal, 1)
	signal.Notify(again, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(again)
	t := time.NewTimer(drain)
	defer t.Stop()
	select {
	case <-t.C:
	case <-again:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	fctx, fcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer fcancel()
	if err := rcv.Shutdown(fctx); err != nil {
		log.Error("notify: deferred triggers still unpublished at shutdown were abandoned", "error", err)
	}
}

// notifyConnect connects as connFlags.connect does, and for a long-running
// service: reconnecting for ever, waiting for NATS when it is down at
// start, and never buffering a publish while disconnected (the receiver
// answers 503 then; a buffered trigger would be published later, once per
// attempt).
func notifyConnect(c *connFlags) (*nats.Conn, error) {
	opts := append(c.natsOptions("m365-worker notify"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true), nats.ReconnectBufSize(-1))
	nc, err := nats.Connect(*c.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", *c.url, err)
	}
	return nc, nil
}

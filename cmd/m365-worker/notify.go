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
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tevyra/m365-worker/internal/notify"
	"github.com/tevyra/m365-worker/jobs"
)

// cmdNotify serves the HTTPS receiver of Graph change notifications: each
// instance's notifications within a window become one sync trigger on
// <prefix>.jobs.<pool>.<instance>.notified (docs/notify.md).
func cmdNotify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("notify", "Receive Microsoft Graph change notifications on https://<host>/<pool>/<instance> (and .../lifecycle) and publish\n"+
		"one sync trigger per instance and window on <prefix>.jobs.<pool>.<instance>.notified. clientState values derive\n"+
		"from the master key of --master-key-file, so no database is needed (docs/notify.md).", stderr)
	cf := addConnFlags(fs)
	listen := fs.String("listen", ":8443", "host:port Graph's notifications come to")
	basePath := fs.String("base-path", "", "the path of the notification URLs' base, when it has one: /graph for https://hooks.example.com/graph (default: none)")
	certFile := fs.String("tls-cert-file", "", "the HTTPS certificate (PEM, with its chain); required unless --insecure-http")
	keyFile := fs.String("tls-key-file", "", "the HTTPS certificate's key (PEM)")
	insecure := fs.Bool("insecure-http", false, "serve plain HTTP, for a receiver behind an ingress that terminates TLS (Graph calls https only)")
	secretFile := fs.String("master-key-file", "", "file with the master key every clientState derives from, at least 32 bytes, surrounding whitespace ignored (required; e.g. openssl rand -base64 48)")
	window := fs.Duration("window", notify.DefaultSpacing, "an instance's notifications within this time of the first make one trigger")
	metricsListen := fs.String("metrics-listen", "", "serve /metrics (Prometheus), /healthz and /readyz here, e.g. 127.0.0.1:9466 (off when empty)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := fs.parse(args); err != nil {
		return err
	}
	log, err := (&poolFlags{logLevel: logLevel, logFormat: logFormat}).logger(stderr)
	if err != nil {
		return err
	}
	switch {
	case *secretFile == "":
		return usageError{errors.New("--master-key-file (or M365_MASTER_KEY_FILE) is required: the master key clientState values derive from")}
	case *insecure && (*certFile != "" || *keyFile != ""):
		return usageError{errors.New("--insecure-http excludes --tls-cert-file and --tls-key-file")}
	case !*insecure && (*certFile == "" || *keyFile == ""):
		return usageError{errors.New("--tls-cert-file and --tls-key-file are required (Graph calls https only); behind an ingress that terminates TLS, use --insecure-http")}
	case *window <= 0:
		return usageError{fmt.Errorf("--window %s: must be positive", *window)}
	}
	if err := jobs.CheckToken("--prefix", *cf.prefix); err != nil {
		return usageError{err}
	}
	master, err := os.ReadFile(*secretFile)
	if err != nil {
		return fmt.Errorf("read the master key: %w", err)
	}
	key := bytes.TrimSpace(master)
	if len(key) < notify.MinMasterKey {
		clear(master)
		return fmt.Errorf("the master key in %s is %d bytes; it must be at least %d (e.g. openssl rand -base64 48 > %s)", *secretFile, len(key), notify.MinMasterKey, *secretFile)
	}
	var tlsConfig *tls.Config
	if !*insecure {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			clear(master)
			return fmt.Errorf("load the HTTPS certificate: %w", err)
		}
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}

	nc, err := notifyConnect(cf)
	if err != nil {
		clear(master)
		return err
	}
	defer nc.Close()
	js, err := newJetStream(nc, *cf.jsDomain, *cf.jsAPIPrefix)
	if err != nil {
		clear(master)
		return err
	}
	rcv, err := notify.New(notify.Config{Master: key, JetStream: js, Subjects: jobs.Subjects{Prefix: *cf.prefix}, BasePath: *basePath,
		Spacing: *window, Logger: log})
	clear(master) // the receiver keeps its own copy
	if err != nil {
		return err
	}
	defer rcv.Close()

	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	srv := &http.Server{Handler: rcv, TLSConfig: tlsConfig, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
		// Scanners' failed TLS handshakes are noise, not errors.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	served := make(chan error, 2)
	scheme := "https"
	if tlsConfig != nil {
		go func() { served <- srv.ServeTLS(l, "", "") }()
	} else {
		scheme = "http"
		go func() { served <- srv.Serve(l) }()
	}
	if *metricsListen != "" {
		ml, err := net.Listen("tcp", *metricsListen)
		if err != nil {
			_ = srv.Close()
			return fmt.Errorf("--metrics-listen %s: %w", *metricsListen, err)
		}
		msrv := &http.Server{Handler: rcv.MetricsHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { served <- msrv.Serve(ml) }()
		defer msrv.Close()
		fmt.Fprintf(stdout, "notify metrics on http://%s/metrics\n", ml.Addr())
	}
	fmt.Fprintf(stdout, "notify listening on %s://%s%s\n", scheme, l.Addr(), strings.TrimRight(*basePath, "/"))
	log.Info("notify: serving", "listen", l.Addr().String(), "scheme", scheme, "nats", nc.ConnectedUrlRedacted(), "window", window.String())

	select {
	case <-ctx.Done():
	case err := <-served:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve notifications: %w", err)
		}
	}
	// Finish the requests in flight, then publish what is pending.
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	fctx, fcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer fcancel()
	if err := rcv.Shutdown(fctx); err != nil {
		log.Error("notify: triggers still unpublished at shutdown were abandoned", "error", err)
	}
	s := rcv.Stats()
	log.Info("notify: stopped", "received", s.Received, "refused", s.Refused, "triggers_published", s.Published, "publish_failures", s.PublishFailures)
	return nil
}

// notifyConnect connects as connFlags.connect does, and for a long-running
// service: reconnecting for ever, and waiting for NATS when it is down at
// start (triggers published meanwhile are retried, then counted failed).
func notifyConnect(c *connFlags) (*nats.Conn, error) {
	opts := append(c.natsOptions("m365-worker notify"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true))
	nc, err := nats.Connect(*c.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", *c.url, err)
	}
	return nc, nil
}

package worker

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedOptions configure an in-process NATS server with JetStream.
type EmbeddedOptions struct {
	// StoreDir holds JetStream's files. Required.
	StoreDir string
	// Host and Port to listen on. Port 0 means 4222; -1 picks a free port.
	// With DontListen set, no port is opened at all (in-process only).
	Host       string
	Port       int
	DontListen bool
	// ServerName names the server. Default "m365-embedded".
	ServerName string
	// SyncAlways makes JetStream fsync every write (sync_interval: always),
	// slower but it survives power loss.
	SyncAlways bool
}

// StartEmbedded starts an in-process NATS server with JetStream and waits
// until it accepts connections.
func StartEmbedded(o EmbeddedOptions) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, fmt.Errorf("embedded NATS: a store directory is required")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = 4222
	}
	if o.ServerName == "" {
		o.ServerName = "m365-embedded"
	}
	opts := &server.Options{
		ServerName: o.ServerName,
		Host:       o.Host,
		Port:       o.Port,
		DontListen: o.DontListen,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		// The stock limit, as the shipped configs set it: every message
		// m365-worker writes stays within it (batches ≤ 512 KiB, large
		// groups in parts, failures bounded).
		MaxPayload: 1 << 20,
	}
	if o.SyncAlways {
		opts.SyncAlways = true
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not become ready on %s:%d (is the port taken?)", o.Host, o.Port)
	}
	return s, nil
}

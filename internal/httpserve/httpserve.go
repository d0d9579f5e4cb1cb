// Package httpserve makes the HTTP servers of m365-worker: the notification
// receiver (internet-facing) and the metrics and health listeners. Every
// one has read, write and idle timeouts, a small header limit and a cap on
// HTTP/2 streams, and may sit on a listener that caps its connections.
package httpserve

import (
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Limits bound what one server spends on its clients. Zero fields take the
// defaults of Defaults.
type Limits struct {
	// ReadHeader bounds the TLS handshake and the request headers. Default 5 s.
	ReadHeader time.Duration
	// Read bounds a whole request, body included. Default 10 s.
	Read time.Duration
	// Write bounds writing an answer. Default 10 s.
	Write time.Duration
	// Idle closes a kept-alive connection with no request for this long.
	// Default 30 s.
	Idle time.Duration
	// MaxHeaderBytes bounds the request line and headers. Default 8 KiB.
	MaxHeaderBytes int
	// MaxStreams bounds the concurrent HTTP/2 streams of one connection.
	// Default 16.
	MaxStreams int
}

// Defaults are the limits of every listener that serves nothing large.
var Defaults = Limits{ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 10 * time.Second, Idle: 30 * time.Second,
	MaxHeaderBytes: 8 << 10, MaxStreams: 16}

func (l Limits) withDefaults() Limits {
	d := Defaults
	if l.ReadHeader <= 0 {
		l.ReadHeader = d.ReadHeader
	}
	if l.Read <= 0 {
		l.Read = d.Read
	}
	if l.Write <= 0 {
		l.Write = d.Write
	}
	if l.Idle <= 0 {
		l.Idle = d.Idle
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if l.MaxStreams <= 0 {
		l.MaxStreams = d.MaxStreams
	}
	return l
}

// Server is an http.Server for h within the limits; its errors (scanners'
// failed handshakes among them) go to log at debug level.
func Server(h http.Handler, l Limits, log *slog.Logger) *http.Server {
	l = l.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &http.Server{Handler: h, ReadHeaderTimeout: l.ReadHeader, ReadTimeout: l.Read, WriteTimeout: l.Write, IdleTimeout: l.Idle,
		MaxHeaderBytes: l.MaxHeaderBytes, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: l.MaxStreams, MaxReceiveBufferPerStream: 64 << 10, MaxReceiveBufferPerConnection: 1 << 20,
			MaxDecoderHeaderTableSize: 4 << 10, MaxReadFrameSize: 16 << 10}}
}

// LimitListener accepts at most max connections at once; one past it is
// closed as soon as it is accepted (before a TLS handshake or a byte is
// read), so a flood of idle connections costs a file descriptor for an
// instant each, not a goroutine and buffers for ReadHeader. Refused counts
// them.
func LimitListener(l net.Listener, max int) *Limited {
	return &Limited{Listener: l, max: int64(max)}
}

// Limited is a listener with a cap on its open connections.
type Limited struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused atomic.Int64
}

// Refused counts connections closed for the cap.
func (l *Limited) Refused() int64 { return l.refused.Load() }

// Open counts the connections open now.
func (l *Limited) Open() int64 { return l.open.Load() }

// Accept returns the next connection within the cap.
func (l *Limited) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.refused.Add(1)
			_ = c.Close()
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

type countedConn struct {
	net.Conn
	l    *Limited
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}

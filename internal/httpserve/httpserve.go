// Package httpserve makes the HTTP servers of m365-worker: the notification
// receiver (internet-facing) and the metrics and health listeners. Every
// one has read, write and idle timeouts, a small header limit and a cap on
// HTTP/2 streams, and may sit on a listener that caps its connections.
package httpserve

import (
	"crypto/tls"
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

// Caps bound a listener's connections.
type Caps struct {
	// Max is the connections open at once. Required.
	Max int
	// PerIP is the connections open at once from one remote address; 0:
	// no such cap (behind a proxy, every connection comes from it).
	PerIP int
	// Grace is how long a new or idle connection is safe from being closed
	// to make room. Default 1 s: a client that sends its request at once
	// is through its TLS handshake and headers by then, and a flood of
	// connections costs at most Max handshakes a Grace.
	Grace time.Duration
}

// LimitListener accepts connections within caps. When a new one comes at
// a cap (its address's, or the listener's), the connection under that cap
// that has waited longest, and at least Grace, without a request in
// progress (still in its TLS handshake or headers, or idle between
// requests) is closed to make room:
// slow or idle connections cannot keep a client that sends its request at
// once out, and one address competes only with itself. When every
// connection under the cap has a request in progress, the new one is
// closed as soon as it is accepted, before a TLS handshake or a byte is
// read. srv's ConnState tells the listener which connections wait.
func LimitListener(l net.Listener, caps Caps, srv *http.Server) *Limited {
	if caps.Grace <= 0 {
		caps.Grace = time.Second
	}
	ll := &Limited{Listener: l, caps: caps, conns: map[*countedConn]struct{}{}, perIP: map[string]int{}}
	if srv != nil {
		srv.ConnState = ll.connState
	}
	return ll
}

// Limited is a listener with caps on its open connections.
type Limited struct {
	net.Listener
	caps             Caps
	mu               sync.Mutex
	conns            map[*countedConn]struct{}
	perIP            map[string]int
	refused, evicted atomic.Int64
}

// Refused counts connections closed for the caps: new ones when every
// connection had a request in progress, and waiting ones closed to make
// room.
func (l *Limited) Refused() int64 { return l.refused.Load() + l.evicted.Load() }

// Evicted counts the waiting connections closed to make room.
func (l *Limited) Evicted() int64 { return l.evicted.Load() }

// Open counts the connections open now.
func (l *Limited) Open() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int64(len(l.conns))
}

// Accept returns the next connection within the caps.
func (l *Limited) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cc := &countedConn{Conn: c, l: l, ip: remoteIP(c)}
		cc.set(http.StateNew)
		if victim, ok := l.admit(cc); ok {
			if victim != nil {
				_ = victim.Conn.Close()
			}
			return cc, nil
		}
		l.refused.Add(1)
		_ = c.Close()
	}
}

// admit takes cc in, with the connection it displaces (nil if none); false
// when it must be closed.
func (l *Limited) admit(cc *countedConn) (*countedConn, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var victim *countedConn
	switch {
	case l.caps.PerIP > 0 && l.perIP[cc.ip] >= l.caps.PerIP:
		victim = l.longestWaiting(cc.ip)
	case len(l.conns) >= l.caps.Max:
		victim = l.longestWaiting("")
	default:
		l.add(cc)
		return nil, true
	}
	if victim == nil {
		return nil, false
	}
	l.remove(victim)
	l.evicted.Add(1)
	l.add(cc)
	return victim, true
}

func (l *Limited) add(c *countedConn) {
	l.conns[c] = struct{}{}
	l.perIP[c.ip]++
}

func (l *Limited) remove(c *countedConn) {
	if _, ok := l.conns[c]; !ok {
		return
	}
	delete(l.conns, c)
	if l.perIP[c.ip]--; l.perIP[c.ip] <= 0 {
		delete(l.perIP, c.ip)
	}
}

func remoteIP(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// longestWaiting is the connection (of ip, if not empty) without a request
// in progress that has waited longest, nil if none. l.mu is held.
func (l *Limited) longestWaiting(ip string) *countedConn {
	var best *countedConn
	bestSince := time.Now().Add(-l.caps.Grace).UnixNano()
	for c := range l.conns {
		if ip != "" && c.ip != ip {
			continue
		}
		st, since := http.ConnState(c.state.Load()), c.since.Load()
		if st != http.StateNew && st != http.StateIdle {
			continue
		}
		if since <= bestSince {
			best, bestSince = c, since
		}
	}
	return best
}

// connState is the server's ConnState hook.
func (l *Limited) connState(c net.Conn, st http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if cc, ok := c.(*countedConn); ok {
		cc.set(st)
	}
}

type countedConn struct {
	net.Conn
	l     *Limited
	ip    string
	state atomic.Int32 // an http.ConnState
	since atomic.Int64 // when it entered that state, Unix nanoseconds
}

func (c *countedConn) set(st http.ConnState) {
	c.state.Store(int32(st))
	c.since.Store(time.Now().UnixNano())
}

func (c *countedConn) Close() error {
	c.l.mu.Lock()
	c.l.remove(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"
)

// attack runs against p until ctx ends, tallying the answers it gets.
type attack func(ctx context.Context, re *receiverEnv, p *receiverProc, t *tally)

type receiverPhaseSpec struct {
	name    string
	attacks []attack
}

func receiverPhases(o ReceiverOptions) []receiverPhaseSpec {
	bodies := func(n int) attack {
		return func(ctx context.Context, re *receiverEnv, p *receiverProc, t *tally) { hostileBodies(ctx, re, p, t, n) }
	}
	slow := func(ctx context.Context, re *receiverEnv, p *receiverProc, t *tally) {
		slowConns(ctx, re, p, t, o.SlowConns)
	}
	streams := func(ctx context.Context, re *receiverEnv, p *receiverProc, t *tally) {
		h2Streams(ctx, re, p, t, o.Streams)
	}
	return []receiverPhaseSpec{
		{name: "idle"},
		{name: "one 1 MiB hostile body at a time", attacks: []attack{bodies(1)}},
		{name: "eight 1 MiB hostile bodies at a time", attacks: []attack{bodies(8)}},
		{name: fmt.Sprintf("%d slow connections", o.SlowConns), attacks: []attack{slow}},
		{name: fmt.Sprintf("%d HTTP/2 streams with 1 MiB bodies", o.Streams), attacks: []attack{streams}},
		{name: "all of them at once", attacks: []attack{bodies(8), slow, streams}},
	}
}

// tally counts answers by label.
type tally struct {
	mu sync.Mutex
	m  map[string]int
}

func newTally() *tally { return &tally{m: map[string]int{}} }

func (t *tally) add(label string) {
	t.mu.Lock()
	t.m[label]++
	t.mu.Unlock()
}

func (t *tally) answer(resp *http.Response, err error) {
	if err != nil {
		t.add("error")
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	t.add(strconv.Itoa(resp.StatusCode))
}

func (t *tally) snapshot() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]int, len(t.m))
	for k, v := range t.m {
		out[k] = v
	}
	return out
}

// The attackers' address and Graph's.
const (
	attackerAddr = "127.0.0.1"
	graphAddr    = "127.0.0.2"
)

// hostileBody is 1 MiB of {} notifications: the cheapest item to send.
var hostileBody = func() []byte {
	b := bytes.NewBufferString(`{"value":[{}`)
	for b.Len() < 1<<20-4 {
		b.WriteString(",{}")
	}
	b.WriteString("]}")
	return b.Bytes()
}()

// client is an HTTPS client of the receiver from src (127.0.0.1 for the
// attackers, 127.0.0.2 for Graph: they are different addresses).
func (re *receiverEnv) client(h2 bool, src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	tr := &http.Transport{TLSClientConfig: re.tls.Clone(), ForceAttemptHTTP2: h2, MaxIdleConnsPerHost: 64, DialContext: d.DialContext}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// hostileBodies: n senders, each posting 1 MiB bodies of {} one after
// another.
func hostileBodies(ctx context.Context, re *receiverEnv, p *receiverProc, t *tally, n int) {
	for i := range n {
		go func() {
			hc := re.client(false, attackerAddr)
			defer hc.CloseIdleConnections()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "POST", fmt.Sprintf("%s/default/hostile-%d", p.base, i), bytes.NewReader(hostileBody))
				resp, err := hc.Do(req)
				if ctx.Err() == nil {
					t.answer(resp, err)
				}
			}
		}()
	}
}

// slowConns holds n connections that finish the TLS handshake and then
// send a request's headers a byte a second; one the receiver closes is
// opened again a second later.
func slowConns(ctx context.Context, re *receiverEnv, p *receiverProc, t *tally, n int) {
	addr := p.base[len("https://"):]
	for range n {
		go func() {
			for ctx.Err() == nil {
				slowConn(ctx, re, addr)
				t.add("slow connection closed")
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}()
	}
}

func slowConn(ctx context.Context, re *receiverEnv, addr string) {
	d := &tls.Dialer{Config: re.tls.Clone(), NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(attackerAddr)}}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return
	}
	defer c.Close()
	go func() { <-ctx.Done(); c.Close() }()
	if _, err := io.WriteString(c, "POST /default/hostile-slow HTTP/1.1\r\nHost: x\r\nX-Slow: "); err != nil {
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := c.Write([]byte("x")); err != nil {
			return
		}
	}
}

// h2Streams: n HTTP/2 requests at once, each trickling a 1 MiB body of {}
// (16 KiB every 100 ms), one after another.
func h2Streams(ctx context.Context, re *receiverEnv, p *receiverProc, t *tally, n int) {
	hc := re.client(true, attackerAddr)
	for i := range n {
		go func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "POST", fmt.Sprintf("%s/default/hostile-h2-%d", p.base, i), &trickle{ctx: ctx, b: hostileBody})
				resp, err := hc.Do(req)
				if ctx.Err() == nil {
					t.answer(resp, err)
				}
			}
		}()
	}
}

// trickle reads b 16 KiB every 100 ms.
type trickle struct {
	ctx context.Context
	b   []byte
}

func (r *trickle) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	select {
	case <-r.ctx.Done():
		return 0, r.ctx.Err()
	case <-time.After(100 * time.Millisecond):
	}
	n := copy(p[:min(len(p), 16<<10)], r.b)
	r.b = r.b[n:]
	return n, nil
}

// valid sends a valid notification every 20 ms until ctx ends, ten to each
// instance, and measures the answers.
func (re *receiverEnv) valid(ctx context.Context, p *receiverProc) *ReceiverPhase {
	hc := re.client(false, graphAddr)
	defer hc.CloseIdleConnections()
	res := &ReceiverPhase{ValidErrors: map[string]int{}}
	var lat []time.Duration
	accepted := map[string]bool{}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			res.Instances = len(accepted)
			res.P50, res.P99 = percentile(lat, 50), percentile(lat, 99)
			return res
		case <-tick.C:
		}
		inst := fmt.Sprintf("valid-%d", i/10)
		t0 := time.Now()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		req, _ := http.NewRequestWithContext(rctx, "POST", p.base+"/default/"+inst, bytes.NewReader(re.validBody(inst)))
		resp, err := hc.Do(req)
		d := time.Since(t0)
		res.Valid++
		switch {
		case err != nil:
			res.ValidFailed++
			res.ValidErrors["error"]++
		case resp.StatusCode == http.StatusAccepted:
			res.ValidOK++
			lat = append(lat, d)
			accepted[inst] = true
		case resp.StatusCode == http.StatusServiceUnavailable:
			res.Valid503++
		default:
			res.ValidFailed++
			res.ValidErrors[strconv.Itoa(resp.StatusCode)]++
		}
		if resp != nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		cancel()
	}
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, len(s)*p/100)]
}

package graphclient

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
)

// Defaults of the PoolConfig limits on what Graph may send.
const (
	DefaultMaxPages      = 100_000
	DefaultMaxPageBytes  = 64 << 20
	DefaultMaxErrorBytes = 64 << 10
)

// limits bound what one client reads from Graph.
type limits struct {
	pages      int   // pages per walk
	pageBytes  int64 // a successful response's body
	errorBytes int64 // an error response's body
}

// bodyCap caps every response body under the pacing transport (and the
// token requests): an error body over errorBytes is replaced by a short
// Graph error saying so, keeping the status, Graph's code and the start of
// the text; reading a successful body past pageBytes fails with
// ErrBadResponse.
type bodyCap struct {
	next http.RoundTripper
	lim  limits
}

func (b *bodyCap) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := b.next.RoundTrip(req)
	if err != nil || resp.Body == nil {
		return resp, err
	}
	if resp.StatusCode >= 400 {
		return b.capError(resp)
	}
	resp.Body = &cappedBody{ReadCloser: resp.Body, max: b.lim.pageBytes, left: b.lim.pageBytes, resp: resp}
	return resp, nil
}

// errorKeep is how much of an oversized error body's text is kept.
const errorKeep = 1 << 10

var graphCodeRE = regexp.MustCompile(`"code"\s*:\s*"([^"\\]{1,128})"`)

func (b *bodyCap) capError(resp *http.Response) (*http.Response, error) {
	raw, err := io.ReadAll(io.LimitReader(resp.Body, b.lim.errorBytes+1))
	resp.Body.Close()
	if err == nil && int64(len(raw)) > b.lim.errorBytes {
		raw = truncatedError(raw, b.lim.errorBytes)
		resp.Header.Set("Content-Type", "application/json")
	}
	resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(raw)), int64(len(raw))
	resp.Header.Del("Content-Length")
	return resp, nil
}

// truncatedError is the Graph error that stands for an error body over max
// bytes: the original's code when it comes early, the start of its text.
func truncatedError(raw []byte, max int64) []byte {
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if m := graphCodeRE.FindSubmatch(raw); m != nil {
		body.Error.Code = string(m[1])
	}
	body.Error.Message = fmt.Sprintf("Graph's error body exceeds %d bytes (truncated): %s…", max, bytes.ToValidUTF8(raw[:min(len(raw), errorKeep)], nil))
	out, _ := json.Marshal(body)
	return out
}

// cappedBody fails a read past its cap with ErrBadResponse, like
// http.MaxBytesReader.
type cappedBody struct {
	io.ReadCloser
	max, left int64
	resp      *http.Response
}

func (c *cappedBody) Read(p []byte) (int, error) {
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1]
	}
	n, err := c.ReadCloser.Read(p)
	if int64(n) <= c.left {
		c.left -= int64(n)
		return n, err
	}
	n = int(c.left)
	c.left = 0
	e := badResponse("", c.resp.StatusCode, fmt.Sprintf("the response body exceeds %d bytes (the cap, PoolConfig.MaxPageBytes)", c.max))
	e.RequestID = c.resp.Header.Get("request-id")
	return n, e
}

// maxMessage caps the message of an *Error (Graph's are a sentence).
const maxMessage = 4 << 10

// truncate cuts a message longer than maxMessage.
func truncate(msg string) string {
	if len(msg) <= maxMessage {
		return msg
	}
	return strings.ToValidUTF8(msg[:maxMessage], "") + fmt.Sprintf("… (truncated from %d bytes)", len(msg))
}

// walk guards one paging walk (a list or a delta round): at most max
// pages, and no link followed twice, so a broken Graph ends it with
// ErrBadResponse instead of looping forever.
type walk struct {
	op    string
	max   int
	pages int
	seen  map[[sha256.Size]byte]bool
}

// walk starts a walk for op at first (its first URL; "" when the SDK
// builds it).
func (c *Client) walk(op, first string) *walk {
	w := &walk{op: op, max: c.limits.pages, seen: map[[sha256.Size]byte]bool{}}
	w.seen[sha256.Sum256([]byte(first))] = true
	return w
}

// next is called with the nextLink of the page just read, before it is
// requested: it fails past the page cap or when the link was followed
// before.
func (w *walk) next(link string) error {
	w.pages++
	if w.pages >= w.max {
		return badResponse(w.op, 0, fmt.Sprintf("Graph's paging did not end after %d pages (the cap, PoolConfig.MaxPages)", w.pages))
	}
	h := sha256.Sum256([]byte(link))
	if w.seen[h] {
		return badResponse(w.op, 0, fmt.Sprintf("Graph's page %d links to a page already read: its paging loops", w.pages))
	}
	w.seen[h] = true
	return nil
}

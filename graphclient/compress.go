package graphclient

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"sync"

	khttp "github.com/microsoft/kiota-http-go"
)

// compressMinBytes is the smallest request body worth compressing. The
// SDK's compression handler gzips every body: a PATCH of one property
// grows (gzip adds 18 bytes of framing to 40 bytes of JSON), and each one
// costs a fresh compressor, about a megabyte allocated and cleared, which
// made it a fifth of a worker's CPU in `bench overhead`.
const compressMinBytes = 1024

// bodyCompression replaces the SDK's CompressionHandler: bodies from
// compressMinBytes on are gzipped with pooled compressors (Graph accepts
// compressed request bodies, msgraph-sdk-design's CompressionHandler.md),
// smaller ones are sent as they are; a 415 answer to a compressed body is
// retried uncompressed, as the SDK's handler does.
type bodyCompression struct{}

var gzipWriters = sync.Pool{New: func() any { return gzip.NewWriter(io.Discard) }}

func (bodyCompression) Intercept(p khttp.Pipeline, i int, req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody || req.Header.Get("Content-Encoding") != "" || req.Header.Get("Content-Range") != "" ||
		(req.ContentLength >= 0 && req.ContentLength < compressMinBytes) {
		return p.Next(req, i)
	}
	plain, err := io.ReadAll(req.Body)
	_ = req.Body.Close()
	if err != nil {
		return nil, err
	}
	if len(plain) < compressMinBytes {
		setBody(req, plain)
		return p.Next(req, i)
	}
	var buf bytes.Buffer
	zw := gzipWriters.Get().(*gzip.Writer)
	zw.Reset(&buf)
	_, err = zw.Write(plain)
	if err == nil {
		err = zw.Close()
	}
	gzipWriters.Put(zw)
	if err != nil {
		return nil, err
	}
	setBody(req, buf.Bytes())
	req.Header.Set("Content-Encoding", "gzip")
	resp, err := p.Next(req, i)
	if err != nil || resp.StatusCode != http.StatusUnsupportedMediaType {
		return resp, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	req.Header.Del("Content-Encoding")
	setBody(req, plain)
	return p.Next(req, i)
}

func setBody(req *http.Request, b []byte) {
	req.Body = io.NopCloser(bytes.NewReader(b))
	req.ContentLength = int64(len(b))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}

package graphclient

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	khttp "github.com/microsoft/kiota-http-go"
)

// Small bodies go as they are, large ones gzipped, and a server that
// refuses compressed bodies (415) gets the body again uncompressed.
func TestBodyCompression(t *testing.T) {
	type seen struct {
		encoding string
		body     string
	}
	var got []seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		enc := r.Header.Get("Content-Encoding")
		if enc == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(raw))
			if err != nil {
				t.Errorf("not gzip: %v", err)
				return
			}
			raw, _ = io.ReadAll(zr)
		}
		got = append(got, seen{enc, string(raw)})
		if enc == "gzip" && r.URL.Path == "/refuses-gzip" {
			w.WriteHeader(http.StatusUnsupportedMediaType)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	hc := &http.Client{Transport: khttp.NewCustomTransportWithParentTransport(http.DefaultTransport, bodyCompression{})}
	small := `{"jobTitle":"x"}`
	large := `{"requests":[` + strings.Repeat(`{"id":"1","method":"GET","url":"/users"},`, 40) + `{}]}`
	for _, c := range []struct {
		path, body string
		want       []string // the encodings the server saw
	}{
		{"/ok", small, []string{""}},
		{"/ok", large, []string{"gzip"}},
		{"/refuses-gzip", large, []string{"gzip", ""}},
	} {
		got = nil
		resp, err := hc.Post(srv.URL+c.path, "application/json", strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent || len(got) != len(c.want) {
			t.Fatalf("%s, %d bytes: status %d after %d requests %+v", c.path, len(c.body), resp.StatusCode, len(got), got)
		}
		for i, s := range got {
			if s.encoding != c.want[i] || s.body != c.body {
				t.Errorf("%s, %d bytes: request %d arrived with encoding %q and %d bytes, want %q and the body", c.path, len(c.body), i+1, s.encoding, len(s.body), c.want[i])
			}
		}
	}
}

package notify

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzParseBody: whatever a sender writes, the parser never panics, calls
// back for at most maxItems items, and accepts only bodies with one.
func FuzzParseBody(f *testing.F) {
	for _, seed := range []string{
		`{"value":[{"subscriptionId":"s1","changeType":"updated","clientState":"cs","resource":"Users/u1","tenantId":"t"}]}`,
		`{"value":[{"subscriptionId":"s1","lifecycleEvent":"reauthorizationRequired","clientState":"cs"}]}`,
		`{"validationTokens":["x"],"value":[{"clientState":"cs","resourceData":{"id":"u1","@odata.type":"#Microsoft.Graph.User"}}]}`,
		`{"value":[{},{},{},{},{},{}]}`, `{"value":[]}`, `{"value":{}}`, `{"value":[{"clientState":5}]}`, `{"value":[`, `{}`, `[]`, `null`,
		`{"a":[[[[{"b":1}]]]],"value":[{"clientState":null}]}`, `{"value":[{"clientState":"\u0000\ud800"}]} trailing`, "",
	} {
		f.Add([]byte(seed), 3)
	}
	f.Fuzz(func(t *testing.T, body []byte, maxItems int) {
		if maxItems <= 0 || maxItems > 1000 {
			maxItems = 3
		}
		n := 0
		err := parseBody(bytes.NewReader(body), maxItems, func(item) { n++ })
		if n > maxItems {
			t.Fatalf("%d items called back, cap %d", n, maxItems)
		}
		if err == nil && n == 0 {
			t.Fatalf("accepted a body without a notification: %q", body)
		}
		if err != nil && !errors.Is(err, errNotNotification) {
			t.Fatalf("error %v from an in-memory body", err)
		}
	})
}

// The parser stops at the item cap and reads nothing it does not need.
func TestParseBodyStopsAtTheCap(t *testing.T) {
	body := `{"value":[` + strings.Repeat(`{"clientState":"x"},`, 20_000) + `{}]}`
	r := strings.NewReader(body)
	n := 0
	if err := parseBody(r, 4, func(item) { n++ }); err != nil || n != 4 {
		t.Fatalf("%d items, %v", n, err)
	}
	if r.Len() == 0 {
		t.Error("the whole body was read past the cap")
	}
	rec := httptest.NewRecorder()
	limited := http.MaxBytesReader(rec, io.NopCloser(strings.NewReader(`{"value":[{"clientState":"`+strings.Repeat("x", 100)+`"}]}`)), 50)
	var tooLarge *http.MaxBytesError
	if err := parseBody(limited, 4, func(item) {}); !errors.As(err, &tooLarge) {
		t.Errorf("past the limit: %v, want the reader's *http.MaxBytesError", err)
	}
}

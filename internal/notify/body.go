package notify

import (
	"encoding/json"
	"errors"
	"io"
)

// The body of a notification POST is read as a stream, one item at a time,
// before anything about its sender is known: the work it costs is bounded
// by MaxItems items of at most MaxBody bytes in all, whatever the sender
// put in it. Fields other than value, and items past MaxItems, are never
// decoded.

// item is one element of a POST's value array: a change notification or,
// with LifecycleEvent, a lifecycle notification. Other fields are skipped.
type item struct {
	SubscriptionID string  `json:"subscriptionId"`
	ClientState    *string `json:"clientState"`
	LifecycleEvent string  `json:"lifecycleEvent"`
}

// errNotNotification: the body is not {"value":[…]} with at least one item.
var errNotNotification = errors.New(`not a notification: want {"value":[…]} with at least one notification`)

// parseBody reads the notifications of body and calls each for every item,
// up to maxItems of them; past that it stops reading. Errors:
// errNotNotification for a body of another shape, or the reader's error
// (*http.MaxBytesError past the body limit).
func parseBody(body io.Reader, maxItems int, each func(item)) error {
	dec := json.NewDecoder(body)
	if err := expectDelim(dec, '{'); err != nil {
		return err
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return readError(err)
		}
		if key != "value" {
			if err := skipValue(dec); err != nil {
				return err
			}
			continue
		}
		n, err := parseItems(dec, maxItems, each)
		if err != nil {
			return err
		}
		if n == 0 {
			return errNotNotification
		}
		return nil // nothing after the value array is needed
	}
	return errNotNotification
}

// parseItems reads the value array's items, up to maxItems.
func parseItems(dec *json.Decoder, maxItems int, each func(item)) (int, error) {
	if err := expectDelim(dec, '['); err != nil {
		return 0, err
	}
	n := 0
	for dec.More() {
		if n == maxItems {
			return n, nil
		}
		var it item
		if err := dec.Decode(&it); err != nil {
			return n, readError(err)
		}
		n++
		each(it)
	}
	if _, err := dec.Token(); err != nil { // the closing ]
		return n, readError(err)
	}
	return n, nil
}

// skipValue reads past one value without keeping it.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return readError(err)
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return readError(err)
	}
	if tok != want {
		return errNotNotification
	}
	return nil
}

// readError keeps a reader's error (the body limit, a broken connection)
// and makes every syntax error errNotNotification.
func readError(err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	if errors.As(err, &syntax) || errors.As(err, &typ) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return errNotNotification
	}
	return err
}

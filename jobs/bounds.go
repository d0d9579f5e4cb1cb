package jobs

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Bounds on what an Error carries, in bytes unless said otherwise, so that a
// broken or hostile job (a 200 KB object of unknown keys, a megabyte-long
// action name) cannot make the worker publish a huge result or failure
// record. The errors ParseJob and DecodeParams return keep them; Bounded
// applies them to any Error. Cut text ends in "…" and stays valid UTF-8.
const (
	// MaxMessageLen bounds Error.Message and ValidationError.Summary.
	MaxMessageLen = 2048
	// MaxFieldErrors bounds the problems listed in Error.Fields and
	// ValidationError.Fields; messages count the rest ("… and 11,980 more
	// unknown keys").
	MaxFieldErrors = 20
	// MaxFieldNameLen bounds FieldError.Field.
	MaxFieldNameLen = 64
	// MaxProblemLen bounds FieldError.Problem.
	MaxProblemLen = 256
	// MaxCodeLen bounds Error.Code and Error.GraphCode.
	MaxCodeLen = 128
	// MaxRequestIDLen bounds Error.GraphRequestID and
	// Error.GraphClientRequestID.
	MaxRequestIDLen = 128
)

// maxEcho bounds a piece of input (an action name, a subject, a key) quoted
// in an error message.
const maxEcho = 256

const ellipsis = "…"

// Bounded returns a copy of e within the bounds above: Code and GraphCode cut
// to MaxCodeLen, GraphRequestID and GraphClientRequestID to MaxRequestIDLen, Message to MaxMessageLen,
// at most MaxFieldErrors Fields (the message then counts the others), each
// field name and problem cut, all valid UTF-8. The runtime applies it before
// publishing an error in a result or a failure record. Bounded of nil is nil,
// and Bounded of a bounded error is an equal copy.
func (e *Error) Bounded() *Error {
	if e == nil {
		return nil
	}
	b := *e
	b.Code = clip(e.Code, MaxCodeLen)
	b.GraphCode = clip(e.GraphCode, MaxCodeLen)
	b.GraphRequestID = clip(e.GraphRequestID, MaxRequestIDLen)
	b.GraphClientRequestID = clip(e.GraphClientRequestID, MaxRequestIDLen)
	b.Message = clip(e.Message, MaxMessageLen)
	if e.Fields != nil {
		n := min(len(e.Fields), MaxFieldErrors)
		b.Fields = make([]FieldError, n)
		for i, f := range e.Fields[:n] {
			b.Fields[i] = FieldError{Field: clipName(f.Field), Problem: clip(f.Problem, MaxProblemLen)}
		}
		if more := len(e.Fields) - n; more > 0 {
			tail := "; … and " + countOf(more, "more field", "more fields")
			b.Message = clip(e.Message, MaxMessageLen-len(tail)) + tail
		}
	}
	return &b
}

// clip returns s cut to at most n bytes (n ≥ 3) of valid UTF-8, ending in
// "…" when cut. Invalid bytes become U+FFFD.
func clip(s string, n int) string {
	if len(s) <= n && utf8.ValidString(s) {
		return s
	}
	return clipRunes(s, n, false)
}

// clipName clips a field name, which may be any key of the input, to
// MaxFieldNameLen, and replaces control and other unprintable characters with
// U+FFFD so that a message naming the field stays one readable line.
func clipName(s string) string {
	plain := len(s) <= MaxFieldNameLen
	for i := 0; plain && i < len(s); i++ {
		plain = s[i] >= 0x20 && s[i] < 0x7f
	}
	if plain {
		return s
	}
	return clipRunes(s, MaxFieldNameLen, true)
}

// clipRunes copies s rune by rune, invalid bytes (and, if printable is set,
// unprintable runes) as U+FFFD, until n bytes; it reads at most about n
// bytes of s.
func clipRunes(s string, n int, printable bool) string {
	b := make([]byte, 0, n)
	cut := -1 // len(b) when the next rune left no room for the ellipsis
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if printable && r != ' ' && !unicode.IsPrint(r) {
			r = utf8.RuneError
		}
		w := utf8.RuneLen(r)
		if cut < 0 && len(b)+w > n-len(ellipsis) {
			cut = len(b)
		}
		if len(b)+w > n {
			return string(b[:cut]) + ellipsis
		}
		b = utf8.AppendRune(b, r)
	}
	return string(b)
}

// quoteInput quotes a piece of input for an error message, clipped to
// maxEcho first.
func quoteInput(s string) string { return strconv.Quote(clip(s, maxEcho)) }

// countOf writes n with thousands separators and the singular or plural
// noun: "1 more problem", "11,980 more unknown keys".
func countOf(n int, one, many string) string {
	d := strconv.Itoa(n)
	var b strings.Builder
	for i, c := range d {
		if i > 0 && (len(d)-i)%3 == 0 && d[i-1] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if n == 1 {
		return b.String() + " " + one
	}
	return b.String() + " " + many
}

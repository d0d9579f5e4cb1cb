package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"unsafe"

	"github.com/tevyra/m365-worker/graphclient"
)

// An incremental round reads the stored state of every group its changes
// touch, member ids included: at 300,000 users some 1,200 groups and three
// million ids a round. encoding/json spent half of the round's CPU on
// them (validating every byte, then a string for each id, each interned
// and dropped). The states are the worker's own writes, a JSON object of
// a few keys and an array of GUIDs, so they are read here in one pass:
// the keys found by skipping values, the member ids interned straight from
// the stored bytes. Anything unusual (an escaped id, a key of another
// shape) goes through encoding/json as before.

// decodeGroupState reads a stored group state into st, except its member
// ids: members is their JSON array as stored (nil when the state has none).
func decodeGroupState(raw []byte, st *groupState) (members []byte, err error) {
	fields, ok := objectFields(raw)
	if !ok {
		err := slowGroupState(raw, st, &members)
		return members, err
	}
	for _, f := range fields {
		switch f.key {
		case "m":
			if string(f.val) != "null" {
				members = f.val
			}
		case "r":
			if !json.Valid(f.val) {
				return nil, errors.New("stored group record is not JSON")
			}
			st.Record = json.RawMessage(f.val)
		default:
			// The small ones (hash, flags, chunk count): as encoding/json reads them.
			if err := json.Unmarshal(fieldObject(f), st); err != nil {
				return nil, err
			}
		}
	}
	return members, nil
}

// slowGroupState is decodeGroupState through encoding/json.
func slowGroupState(raw []byte, st *groupState, members *[]byte) error {
	var s struct {
		groupState
		Members json.RawMessage `json:"m"`
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return err
	}
	*st = s.groupState
	if len(s.Members) > 0 && string(s.Members) != "null" {
		*members = s.Members
	}
	return nil
}

// field is one key of a JSON object and its value's bytes.
type field struct {
	key string
	val []byte
}

// fieldObject is f alone as a JSON object.
func fieldObject(f field) []byte {
	k, _ := json.Marshal(f.key)
	b := make([]byte, 0, len(k)+len(f.val)+3)
	b = append(append(append(append(b, '{'), k...), ':'), f.val...)
	return append(b, '}')
}

// objectFields splits a JSON object into its keys and values; ok is false
// when b is not an object of plain (unescaped) keys, or is malformed.
func objectFields(b []byte) (fields []field, ok bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return nil, skipSpace(b, i+1) == len(b)
	}
	for {
		key, next, plain := plainString(b, i)
		if !plain {
			return nil, false
		}
		i = skipSpace(b, next)
		if i >= len(b) || b[i] != ':' {
			return nil, false
		}
		start := skipSpace(b, i+1)
		end, ok := skipValue(b, start)
		if !ok {
			return nil, false
		}
		fields = append(fields, field{key: string(key), val: b[start:end]})
		i = skipSpace(b, end)
		if i >= len(b) {
			return nil, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return fields, skipSpace(b, i+1) == len(b)
		default:
			return nil, false
		}
	}
}

// plainString reads the JSON string at b[i] when it holds no escape and no
// control character: its contents, the index after it, and whether it was
// such a string.
func plainString(b []byte, i int) (s []byte, next int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20:
			return nil, i, false
		}
	}
	return nil, i, false
}

// skipValue is the index after the JSON value at b[i], strings' escapes
// and nesting included; ok is false when none is there. It finds where a
// value ends, it does not check it (encoding/json reads the small ones).
func skipValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		for j := i + 1; j < len(b); j++ {
			switch b[j] {
			case '\\':
				j++
			case '"':
				return j + 1, true
			}
		}
		return 0, false
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, ok := skipValue(b, j)
				if !ok {
					return 0, false
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1, true
				}
			}
		}
		return 0, false
	default: // a number or a literal: up to the next delimiter
		j := i
		for j < len(b) && !strings.ContainsRune(",:{}[] \t\n\r", rune(b[j])) {
			j++
		}
		return j, j > i
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// errNotIDArray: a stored member list that is not a JSON array of strings.
var errNotIDArray = errors.New("stored member ids are not a JSON array of strings")

// eachID calls fn with each id of a JSON array of strings as stored: a
// view of arr's bytes, valid during the call only; an empty arr has none.
// An array with an escaped id is read through encoding/json.
func eachID(arr []byte, fn func(id string)) error {
	if len(arr) == 0 {
		return nil // none stored
	}
	i := skipSpace(arr, 0)
	if i >= len(arr) || arr[i] != '[' {
		return slowIDs(arr, fn)
	}
	i = skipSpace(arr, i+1)
	if i < len(arr) && arr[i] == ']' {
		return nil
	}
	// Scanned before any id is handed on: an array read slowly after a
	// few ids went out fast would hand those on twice.
	if !plainIDArray(arr, i) {
		return slowIDs(arr, fn)
	}
	for {
		s, next, _ := plainString(arr, i)
		fn(unsafe.String(unsafe.SliceData(s), len(s)))
		i = skipSpace(arr, next)
		if arr[i] == ']' {
			return nil
		}
		i = skipSpace(arr, i+1)
	}
}

// plainIDArray reports whether arr, from the first element at i, is an
// array of plain strings to its end.
func plainIDArray(arr []byte, i int) bool {
	for {
		_, next, ok := plainString(arr, i)
		if !ok {
			return false
		}
		i = skipSpace(arr, next)
		if i >= len(arr) {
			return false
		}
		switch arr[i] {
		case ']':
			return skipSpace(arr, i+1) == len(arr)
		case ',':
			i = skipSpace(arr, i+1)
		default:
			return false
		}
	}
}

func slowIDs(arr []byte, fn func(string)) error {
	var ids []string
	if err := json.Unmarshal(arr, &ids); err != nil {
		return errNotIDArray
	}
	for _, id := range ids {
		fn(id)
	}
	return nil
}

// Writing: a group's member ids are most of what a round marshals (a
// 300,000-user tenant's groups hold millions), and encoding/json writes
// them through reflection one string at a time. appendIDs writes them as
// encoding/json does, byte for byte (a record's hash is of its bytes).

// appendIDs appends ids to dst as encoding/json marshals a []string.
func appendIDs(dst []byte, ids []string) []byte {
	dst = append(dst, '[')
	for n, id := range ids {
		if n > 0 {
			dst = append(dst, ',')
		}
		if plainForJSON(id) {
			dst = append(append(append(dst, '"'), id...), '"')
			continue
		}
		b, _ := json.Marshal(id) // escapes, HTML characters, invalid UTF-8
		dst = append(dst, b...)
	}
	return append(dst, ']')
}

// plainForJSON reports whether encoding/json writes s as it is, quoted.
func plainForJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20, c >= 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// marshalGroup is json.Marshal(groupAssetOf(g, members)), byte for byte.
func marshalGroup(g *graphclient.Group, members []string, continued bool) []byte {
	a := groupAssetOf(g, nil) // members: [] in the record, a place for them
	a.MembersContinued = continued
	raw, _ := json.Marshal(a)
	const empty = `"members":[]`
	i := bytes.Index(raw, []byte(empty)) // a key: in a string its quotes are escaped
	out := make([]byte, 0, len(raw)+len(members)*39)
	out = append(out, raw[:i+len(empty)-2]...)
	out = appendIDs(out, members)
	return append(out, raw[i+len(empty):]...)
}

// marshalGroupState is a group's stored state: what json.Marshal writes
// for it, read back alike.
func marshalGroupState(st groupState) []byte {
	h, _ := json.Marshal(st.Hash)
	out := make([]byte, 0, len(st.Record)+len(st.Members)*39+64)
	out = append(append(append(out, `{"h":`...), h...), `,"r":`...)
	if st.Record == nil {
		out = append(out, "null"...)
	} else {
		out = append(out, st.Record...)
	}
	out = append(out, `,"m":`...)
	if st.Members == nil {
		out = append(out, "null"...)
	} else {
		out = appendIDs(out, st.Members)
	}
	if st.Uncounted {
		out = append(out, `,"n":true`...)
	}
	if st.MemberChunks != 0 {
		out = append(append(out, `,"mc":`...), strconv.Itoa(st.MemberChunks)...)
	}
	return append(out, '}')
}

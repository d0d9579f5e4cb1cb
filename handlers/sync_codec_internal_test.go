package handlers

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// The one-pass reading of stored group states gives what encoding/json
// gives, for the states a round writes and for odd ones (escaped ids,
// other spacing, keys in another order, unknown keys); what is not a
// group state is an error, never a panic.
func TestStoredGroupStatesReadAsEncodingJSONReadsThem(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	ids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", rng.Uint32(), rng.Uint64()>>16)
		}
		slices.Sort(out)
		return out
	}
	var states [][]byte
	for _, st := range []groupState{
		{Hash: "abc", Record: json.RawMessage(`{"id":"g1","displayName":"Sales \"EU\" <all>","groupTypes":["Unified"]}`), Members: ids(50)},
		{Hash: "refreshed", Record: json.RawMessage(`{"id":"g2"}`), Members: []string{}, Uncounted: true},
		{Hash: "h", Record: json.RawMessage(`{"id":"g3","description":"]}\\\"{["}`), MemberChunks: 3},
		{Hash: "h", Record: json.RawMessage(`{"id":"g4"}`), Members: []string{"plain", `quote"d`, "back\\slash", "tab\t", "<html>&", "ünïcode"}},
		{},
	} {
		b, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		states = append(states, b)
	}
	states = append(states,
		[]byte(` { "m" : [ "b" , "a" ] , "r" : { "id" : "g5" } , "h" : "x" , "n" : true , "mc" : 0 , "other" : [1, {"m": 2}] } `),
		[]byte(`{"h":"x","r":{"id":"g6"},"m":null}`),
		[]byte(`{"\u0068":"escaped key","r":{},"m":["a"]}`),
	)
	for _, raw := range states {
		var want groupState
		if err := json.Unmarshal(raw, &want); err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		var got groupState
		members, err := decodeGroupState(raw, &got)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if err := eachID(members, func(id string) { got.Members = append(got.Members, strings.Clone(id)) }); err != nil {
			t.Fatalf("%s: members: %v", raw, err)
		}
		if got.Members == nil && want.Members != nil {
			got.Members = []string{}
		}
		if got.Hash != want.Hash || got.Uncounted != want.Uncounted || got.MemberChunks != want.MemberChunks ||
			!jsonEqual(got.Record, want.Record) || !slices.Equal(got.Members, want.Members) {
			t.Errorf("%s:\n got %+v\nwant %+v", raw, got, want)
		}
	}
	for _, bad := range []string{``, `[]`, `{`, `{"m":[1,2]}`, `{"m":"x"}`, `{"r":{"id":}`, `{"h":"x"`, `{"m":["a",]}`, `{"m":["a"`, `{"mc":"three"}`, `{"h":1}`, `{"r":{"a":1}}}`} {
		var st groupState
		members, err := decodeGroupState([]byte(bad), &st)
		if err == nil {
			err = eachID(members, func(string) {})
		}
		if err == nil {
			t.Errorf("%q read as a group state", bad)
		}
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return len(a) == 0 && len(b) == 0
	}
	return fmt.Sprint(x) == fmt.Sprint(y)
}

// A stored member list becomes the round's interned ids, the fast way and
// the escaped way alike; the list comes out sorted, each id once, with the
// round's changes merged in (the stored part is not sorted again, so its
// order is checked: a list stored out of order is sorted like any other).
func TestStoredMembersAreInterned(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stored []string // JSON arrays: the record's list, then its chunks
		change func(m *memberList, tab *idTable)
		want   []string
	}{
		{"escaped", []string{`["a\u0041","b","c"]`}, nil, []string{"aA", "b", "c"}},
		{"chunks", []string{`["b","d"]`, `["f","h"]`}, func(m *memberList, tab *idTable) {
			m.add(tab.intern("a"))
			m.add(tab.intern("e"))
			m.add(tab.intern("z"))
			m.add(tab.intern("d")) // already a member
			m.remove(tab.intern("f"))
			m.remove(tab.intern("h"))
			m.add(tab.intern("h"))    // removed, then added again
			m.remove(tab.intern("x")) // never a member
		}, []string{"a", "b", "d", "e", "h", "z"}},
		{"stored out of order", []string{`["d","b","c"]`}, func(m *memberList, tab *idTable) { m.add(tab.intern("a")) }, []string{"a", "b", "c", "d"}},
		{"chunks out of order", []string{`["c","d"]`, `["a","b"]`}, nil, []string{"a", "b", "c", "d"}},
		{"stored twice", []string{`["a","a","b"]`}, nil, []string{"a", "b"}},
		{"nothing stored", nil, func(m *memberList, tab *idTable) { m.add(tab.intern("b")); m.add(tab.intern("a")) }, []string{"a", "b"}},
	} {
		var tab idTable
		// Other groups' ids interned first: the indexes are not in the ids' order.
		for _, id := range []string{"z", "h", "e", "c", "a"} {
			tab.intern(id)
		}
		var m memberList
		for _, arr := range tc.stored {
			if err := m.addStored(&tab, []byte(arr)); err != nil {
				t.Fatal(err)
			}
		}
		if tc.change != nil {
			tc.change(&m, &tab)
		}
		if got := m.strings(&tab); !slices.Equal(got, tc.want) {
			t.Errorf("%s: members %v, want %v", tc.name, got, tc.want)
		}
	}
	var m memberList
	if err := m.addStored(&idTable{}, []byte(`{"m":1}`)); err == nil {
		t.Fatal("an object read as a member list")
	}
}

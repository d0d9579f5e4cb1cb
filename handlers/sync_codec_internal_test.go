package handlers

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
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

// What a round writes of its groups is what encoding/json writes, byte for
// byte where a hash is taken (records, member lists) and alike when read
// back (states), whatever the ids and records hold.
func TestGroupsAreWrittenAsEncodingJSONWritesThem(t *testing.T) {
	odd := []string{"plain", "", "<", ">", "&", `quo"te`, `back\slash`, "<b>&amp;", "tab\tnew\nline", "del\x7f", "ünï", "\u2028sep", "bad\xffutf8", "emoji😀"}
	guids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", i*2654435761, i)
		}
		return out
	}
	for _, ids := range [][]string{nil, {}, odd, guids(3), guids(5000)} {
		want, _ := json.Marshal(ids)
		if ids == nil {
			want = []byte("[]") // appendIDs always writes a list
		}
		if got := appendIDs(nil, ids); string(got) != string(want) {
			t.Errorf("appendIDs(%q) = %s, want %s", ids, got, want)
		}
	}
	desc, mail, vis := `"Sales" <EU> & more`, "sales@contoso.com", "Private"
	created := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, g := range []graphclient.Group{
		{ID: "g1", DisplayName: `members":[] in a name`, Description: &desc, Mail: &mail, MailNickname: "sales", MailEnabled: true, GroupTypes: []string{"Unified"}, Visibility: &vis, CreatedDateTime: &created},
		{ID: "g2"},
	} {
		for _, members := range [][]string{nil, odd, guids(10)} {
			for _, continued := range []bool{false, true} {
				a := groupAssetOf(&g, members)
				a.MembersContinued = continued
				want, _ := json.Marshal(a)
				if got := marshalGroup(&g, members, continued); string(got) != string(want) {
					t.Errorf("marshalGroup:\n got %s\nwant %s", got, want)
				}
			}
		}
	}
	rec, _ := json.Marshal(graphclient.Group{ID: "g1", Description: &desc})
	for _, st := range []groupState{
		{Hash: "abc", Record: rec, Members: odd},
		{Hash: `h"`, Record: rec, Members: []string{}, Uncounted: true, MemberChunks: 4},
		{},
	} {
		var back, want groupState
		if err := json.Unmarshal(marshalGroupState(st), &back); err != nil {
			t.Fatalf("%s: %v", marshalGroupState(st), err)
		}
		b, _ := json.Marshal(st)
		_ = json.Unmarshal(b, &want)
		if back.Hash != want.Hash || !jsonEqual(back.Record, want.Record) || !slices.Equal(back.Members, want.Members) || (back.Members == nil) != (want.Members == nil) ||
			back.Uncounted != want.Uncounted || back.MemberChunks != want.MemberChunks {
			t.Errorf("state %s read back as %+v, want %+v", marshalGroupState(st), back, want)
		}
	}
}

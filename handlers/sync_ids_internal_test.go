package handlers

import (
	"slices"
	"testing"
)

// A group's member list while a round reads it: each member once however
// often it arrives, and a member's last change decides (removed, then
// added again: a member; added, then removed: not).
func TestMemberListKeepsEachMemberItsLastChange(t *testing.T) {
	var ids idTable
	var m memberList
	for _, id := range []string{"a", "b", "c", "a", "d", "b"} {
		m.add(ids.intern(id))
	}
	m.remove(ids.intern("c"))
	m.remove(ids.intern("d"))
	m.add(ids.intern("d"))
	m.remove(ids.intern("e")) // never a member
	got := m.strings(&ids)
	slices.Sort(got)
	if want := []string{"a", "b", "d"}; !slices.Equal(got, want) {
		t.Fatalf("members %v, want %v", got, want)
	}
	var none *memberList
	if got := none.strings(&ids); got == nil || len(got) != 0 {
		t.Fatalf("no list gives %#v, want an empty list", got)
	}
}

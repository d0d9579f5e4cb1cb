package handlers

import (
	"fmt"
	"slices"
	"strings"
	"sync"
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

// The id table gives each id one index, finds it again by its string and
// gives the string back, across its growth and chunks, for ids of any
// length (empty, GUIDs, the longest) and from goroutines at once.
func TestIDTableInternsEachIDOnce(t *testing.T) {
	var ids idTable
	want := []string{"", "x", strings.Repeat("l", 1<<16-1)}
	for i := range 200_000 {
		want = append(want, fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", i*7919, i%65536, i%4096, (i*31)%4096, i*104729))
	}
	idx := make([]uint32, len(want))
	var wg sync.WaitGroup
	for g := range 4 { // each goroutine interns every id: one index each, however they race
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range want {
				j := (k + g*len(want)/4) % len(want)
				i := ids.intern(want[j])
				if g == 0 {
					idx[j] = i
				}
			}
		}()
	}
	wg.Wait()
	seen := map[uint32]bool{}
	for j, id := range want {
		if seen[idx[j]] {
			t.Fatalf("index %d given to two ids", idx[j])
		}
		seen[idx[j]] = true
		if i, ok := ids.lookup(id); !ok || i != idx[j] {
			t.Fatalf("lookup(%.20q) = %d, %v; interned as %d", id, i, ok, idx[j])
		}
		ids.mu.Lock()
		back := ids.str(idx[j])
		ids.mu.Unlock()
		if back != id {
			t.Fatalf("index %d gives %.20q, want %.20q", idx[j], back, id)
		}
	}
	if len(ids.locs) != len(want) {
		t.Fatalf("%d ids stored for %d distinct", len(ids.locs), len(want))
	}
	if _, ok := ids.lookup("never-seen"); ok {
		t.Fatal("lookup found an id never interned")
	}
	if len(ids.chunks) < 2 {
		t.Fatalf("%d chunks: the test should span several", len(ids.chunks))
	}
}

// A small tenant's round holds a few KiB of ids, not a large chunk: a pool
// runs hundreds of such rounds at once (with a 1 MiB chunk from the first
// id, a worker of a three-worker pool of 2,000 tenants peaked at 904 MB).
func TestIDTableOfASmallTenantIsSmall(t *testing.T) {
	var ids idTable
	for i := range 100 {
		ids.intern(fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i))
	}
	bytes := 4 * cap(ids.slots)
	for _, c := range ids.chunks {
		bytes += cap(c)
	}
	if bytes > 16<<10 {
		t.Fatalf("100 ids hold %d bytes", bytes)
	}
}

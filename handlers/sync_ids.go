package handlers

import (
	"slices"
	"strconv"
	"strings"
	"sync"
)

// A round's memory is its sets of ids: the users it saw, the hashes it
// published, each group's members. A 300,000-user tenant's groups hold
// millions of member ids, and as strings (and string-keyed maps) they cost
// about 100 bytes each. So a round interns every id it meets once, and its
// sets hold the 4-byte index instead: each id's string is kept once, however
// many groups it is a member of.

// idTable interns the object ids of one round. Users and groups are read at
// once, so it is safe for concurrent use.
type idTable struct {
	mu  sync.Mutex
	idx map[string]uint32
	ids []string
}

// intern is id's index, added when new.
func (t *idTable) intern(id string) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i, ok := t.idx[id]; ok {
		return i
	}
	if t.idx == nil {
		t.idx = map[string]uint32{}
	}
	i := uint32(len(t.ids))
	id = strings.Clone(id) // not a slice of a larger page
	t.idx[id] = i
	t.ids = append(t.ids, id)
	return i
}

// lookup is id's index, if the round met it.
func (t *idTable) lookup(id string) (uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.idx[id]
	return i, ok
}

// idSet is a set of interned ids.
type idSet map[uint32]struct{}

// in reports whether an id is in s.
func (t *idTable) in(s idSet) func(id string) bool {
	return func(id string) bool {
		i, ok := t.lookup(id)
		if !ok {
			return false
		}
		_, ok = s[i]
		return ok
	}
}

// hash64 is the first 64 bits of a hashOf hash: enough to tell whether a
// record repeated within a round is the one already published.
func hash64(h string) uint64 {
	v, _ := strconv.ParseUint(h[:16], 16, 64)
	return v
}

// memberList is a group's members while a round reads them: ids appended
// as they arrive (repeats allowed) and the ids whose last change was a
// removal. A large tenant's full round holds millions of memberships at
// once; as 4-byte entries of a list they take a fifth of what a set takes.
type memberList struct {
	added   []uint32
	removed map[uint32]struct{} // nil: none
}

func (m *memberList) add(i uint32) {
	if m.removed != nil {
		delete(m.removed, i)
	}
	m.added = append(m.added, i)
}

func (m *memberList) remove(i uint32) {
	if m.removed == nil {
		m.removed = map[uint32]struct{}{}
	}
	m.removed[i] = struct{}{}
}

// strings is the members' ids: each once, without those removed last
// (unsorted). It sorts the list in place.
func (m *memberList) strings(t *idTable) []string {
	if m == nil {
		return []string{}
	}
	slices.Sort(m.added)
	m.added = slices.Compact(m.added)
	out := make([]string, 0, len(m.added))
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, i := range m.added {
		if _, gone := m.removed[i]; !gone {
			out = append(out, t.ids[i])
		}
	}
	return out
}

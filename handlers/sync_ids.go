package handlers

import (
	"hash/maphash"
	"slices"
	"sort"
	"strconv"
	"sync"
	"unsafe"
)

// A round's memory is its sets of ids: the users it saw, the hashes it
// published, each group's members. A 300,000-user tenant's groups hold
// millions of member ids, and as strings (and string-keyed maps) they cost
// about 100 bytes each. So a round interns every id it meets once, and its
// sets hold the 4-byte index instead: each id's string is kept once, however
// many groups it is a member of.

// idTable interns the object ids of one round. Users and groups are read at
// once, so it is safe for concurrent use. Its ids are packed into large
// byte chunks and found through an open-addressing table of indexes: about
// 50 bytes an id (a GUID's 36, its location, two table slots) where a
// map of strings took about 90, and nothing in it holds a pointer, so the
// collector never walks it (a 300,000-user round interns some 330,000).
type idTable struct {
	mu     sync.Mutex
	chunks [][]byte // the ids' bytes; an id never spans two chunks
	locs   []uint64 // id i: chunk<<40 | offset<<16 | length
	slots  []uint32 // index+1 of the id whose hash lands here (0: empty); at most half full
	seed   maphash.Seed
}

// A round's first chunk of ids' bytes is small (most tenants are), each
// next one twice the last, up to idChunk: a pool runs hundreds of small
// tenants' rounds at once.
const (
	idFirstChunk = 4 << 10
	idChunk      = 1 << 20
)

// intern is id's index, added when new.
func (t *idTable) intern(id string) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.internLocked(id)
}

// internLocked is intern for a caller that holds mu. id may be a view of
// memory the caller reuses: a new id is copied into the table.
func (t *idTable) internLocked(id string) uint32 {
	slot, found := t.find(id)
	if found {
		return t.slots[slot] - 1
	}
	i := uint32(len(t.locs))
	t.locs = append(t.locs, t.store(id))
	t.slots[slot] = i + 1
	if 2*len(t.locs) > len(t.slots) {
		t.grow()
	}
	return i
}

// lookup is id's index, if the round met it.
func (t *idTable) lookup(id string) (uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	slot, found := t.find(id)
	if !found {
		return 0, false
	}
	return t.slots[slot] - 1, true
}

// str is the id of index i. It shares the table's memory (ids are never
// changed once stored). The caller holds mu.
func (t *idTable) str(i uint32) string {
	loc := t.locs[i]
	c, off, n := loc>>40, loc>>16&(1<<24-1), loc&(1<<16-1)
	if n == 0 {
		return ""
	}
	return unsafe.String(&t.chunks[c][off], int(n))
}

// find is the slot that holds id, or the empty slot where it belongs.
func (t *idTable) find(id string) (int, bool) {
	if t.slots == nil {
		t.seed = maphash.MakeSeed()
		t.slots = make([]uint32, 1024)
	}
	mask := uint64(len(t.slots) - 1)
	for h := maphash.String(t.seed, id) & mask; ; h = (h + 1) & mask {
		v := t.slots[h]
		if v == 0 {
			return int(h), false
		}
		if t.str(v-1) == id {
			return int(h), true
		}
	}
}

// store copies id into the chunks and returns its location.
func (t *idTable) store(id string) uint64 {
	if len(id) >= 1<<16 {
		// Graph's are GUIDs; a round's goroutines turn a panic into its error.
		panic("handlers: an object id of 64 KiB or more")
	}
	last := len(t.chunks) - 1
	if last < 0 || len(t.chunks[last])+len(id) > cap(t.chunks[last]) {
		size := idFirstChunk
		if last >= 0 {
			size = min(2*cap(t.chunks[last]), idChunk)
		}
		t.chunks = append(t.chunks, make([]byte, 0, max(size, len(id))))
		last++
	}
	c := t.chunks[last]
	off := len(c)
	t.chunks[last] = append(c, id...)
	return uint64(last)<<40 | uint64(off)<<16 | uint64(len(id))
}

// grow doubles the table and puts every id in its new slot.
func (t *idTable) grow() {
	t.slots = make([]uint32, 2*len(t.slots))
	mask := uint64(len(t.slots) - 1)
	for i := range t.locs {
		h := maphash.String(t.seed, t.str(uint32(i))) & mask
		for t.slots[h] != 0 {
			h = (h + 1) & mask
		}
		t.slots[h] = uint32(i) + 1
	}
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
	added []uint32
	// inOrder: added[:inOrder] are in their ids' order, each once (a
	// stored list: a round stores them sorted), so that the list comes out
	// sorted without sorting what the round read from its state.
	inOrder int
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

// addStored adds the ids of a member list as a round stored it (a JSON
// array of strings), interned under one lock. Read first, or after the
// chunk before it, they stay in order.
func (m *memberList) addStored(t *idTable, arr []byte) error {
	if len(arr) == 0 {
		return nil
	}
	m.added = slices.Grow(m.added, len(arr)/39) // a GUID and its quotes and comma
	t.mu.Lock()
	defer t.mu.Unlock()
	ordered := len(m.added) == m.inOrder
	prev, started := "", m.inOrder > 0
	if started {
		prev = t.str(m.added[m.inOrder-1])
	}
	err := eachID(arr, func(id string) {
		i := t.internLocked(id)
		m.add(i)
		if ordered {
			s := t.str(i)
			ordered = !started || s > prev
			prev, started = s, true
		}
	})
	if ordered && err == nil {
		m.inOrder = len(m.added)
	}
	return err
}

// strings is the members' ids, sorted: each once, without those removed
// last. It sorts the list in place.
func (m *memberList) strings(t *idTable) []string {
	if m == nil {
		return []string{}
	}
	head, tail := m.added[:m.inOrder], m.added[m.inOrder:]
	slices.Sort(tail)
	tail = slices.Compact(tail)
	t.mu.Lock()
	defer t.mu.Unlock()
	rest := make([]string, 0, len(tail))
	for _, i := range tail {
		if _, gone := m.removed[i]; !gone {
			rest = append(rest, t.str(i))
		}
	}
	sort.Strings(rest) // an incremental round's changes, or a full round's members
	if len(head) == 0 {
		return rest
	}
	out := make([]string, 0, len(head)+len(rest))
	for _, i := range head {
		if _, gone := m.removed[i]; gone {
			continue
		}
		s := t.str(i)
		for len(rest) > 0 && rest[0] < s {
			out, rest = append(out, rest[0]), rest[1:]
		}
		if len(rest) > 0 && rest[0] == s {
			rest = rest[1:]
		}
		out = append(out, s)
	}
	return append(out, rest...)
}

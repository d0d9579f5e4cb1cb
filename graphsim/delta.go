package graphsim

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"sort"
	"time"
)

// deltaState is what a delta skiptoken or deltatoken encodes.
type deltaState struct {
	Kind   string   `json:"k"`
	From   uint64   `json:"f"`           // changes after this version
	To     uint64   `json:"t"`           // the pass's snapshot version
	Cursor string   `json:"c,omitempty"` // last id emitted
	MemOff int      `json:"m,omitempty"` // member offset within Cursor's group
	Full   bool     `json:"full,omitempty"`
	Select []string `json:"s,omitempty"`
	IDs    []string `json:"i,omitempty"`
	Issued int64    `json:"iss"` // model time, unix nanoseconds
}

func encodeState(st deltaState) string {
	b, _ := json.Marshal(st)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeState(tok string) (deltaState, bool) {
	var st deltaState
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || json.Unmarshal(b, &st) != nil {
		return st, false
	}
	return st, true
}

// membersPerEntry splits large groups across several entries (and pages),
// as Graph does.
const membersPerEntry = 500

func (c *gctx) delta(kind string) (*response, *apiError) {
	if e := c.require(readRoles(kind)...); e != nil {
		return nil, e
	}
	t := c.t
	now := c.s.clock.now()
	var st deltaState
	switch {
	case c.q.skipToken != "":
		var ok bool
		if st, ok = decodeState(c.q.skipToken); !ok || st.Kind != kind {
			return nil, newErr(400, "Request_BadRequest", "The skip token is invalid.")
		}
	case c.q.hasDelta:
		if c.q.deltaTok == "latest" {
			st = deltaState{Kind: kind, From: t.version, To: t.version, Select: c.q.selects, Issued: now.UnixNano()}
			return c.deltaPage(kind, st, nil, true), nil
		}
		prev, ok := decodeState(c.q.deltaTok)
		if !ok || prev.Kind != kind {
			return nil, newErr(400, "syncStateNotFound", "The delta token is invalid and data must be synchronized again.")
		}
		issued := time.Unix(0, prev.Issued)
		if now.Sub(issued) > c.s.opts.DeltaTokenTTL {
			return nil, newErr(400, "syncStateNotFound", "The delta token is expired and data must be synchronized again.")
		}
		if issued.Before(t.resetEpoch) {
			e := newErr(410, "resyncRequired", "The delta token was reset; data must be synchronized again.")
			e.header = http.Header{"Location": {c.s.URL() + "/v1.0/" + kind + "/delta?$deltatoken="}}
			return nil, e
		}
		st = deltaState{Kind: kind, From: prev.To, To: t.version, Select: prev.Select, IDs: prev.IDs}
	default:
		st = deltaState{Kind: kind, From: 0, To: t.version, Full: true, Select: c.q.selects}
		if c.q.filter != nil {
			ids, ok := c.q.filter.idList()
			if !ok || len(ids) > 50 {
				return nil, newErr(400, "Request_UnsupportedQuery", "Unsupported query filter on delta: only 'id eq' with up to 50 ids is supported.")
			}
			st.IDs = ids
		}
		if c.q.top > 0 || c.q.hasExpand || c.q.orderby != "" {
			return nil, newErr(400, "Request_UnsupportedQuery", "Unsupported query option on delta: $top, $expand and $orderby are not supported.")
		}
	}
	// What changed in this pass, by id.
	var ids []string
	removed := map[string]string{}
	idOK := func(id string) bool {
		if len(st.IDs) == 0 {
			return true
		}
		for _, x := range st.IDs {
			if x == id {
				return true
			}
		}
		return false
	}
	switch {
	case st.Full && len(st.IDs) == 0 && kind == "users":
		ids = t.sortedUserIDs()
	case st.Full && len(st.IDs) == 0:
		ids = t.sortedGroupIDs()
	case st.Full:
		// A round from scratch filtered on ids: those that exist (a
		// round reads large tenants' groups by chunks of ids).
		listed := map[string]bool{}
		for _, id := range st.IDs {
			if !listed[id] && (kind == "users" && t.users[id] != nil || kind == "groups" && t.groups[id] != nil) {
				listed[id] = true
				ids = append(ids, id)
			}
		}
	case kind == "users":
		for id, u := range t.users {
			if (st.Full || u.version > st.From) && idOK(id) {
				ids = append(ids, id)
			}
		}
		if !st.Full {
			for _, tb := range t.userTombs {
				if tb.version > st.From && idOK(tb.id) && t.users[tb.id] == nil {
					removed[tb.id] = tb.reason
				}
			}
		}
	default:
		for id, g := range t.groups {
			if (st.Full || g.version > st.From) && idOK(id) {
				ids = append(ids, id)
			}
		}
	}
	if !st.Full && kind == "groups" {
		for _, tb := range t.groupTombs {
			if tb.version > st.From && idOK(tb.id) && t.groups[tb.id] == nil {
				removed[tb.id] = tb.reason
			}
		}
	}
	for id := range removed {
		ids = append(ids, id)
	}
	if !(st.Full && len(st.IDs) == 0) {
		sort.Strings(ids)
	}
	start := sort.SearchStrings(ids, st.Cursor)
	if st.Cursor != "" && start < len(ids) && ids[start] == st.Cursor && st.MemOff == 0 {
		start++
	}
	return c.deltaPage(kind, st, ids[start:], false), nil
}

// deltaPage renders up to a page of entries from ids and the link to follow.
func (c *gctx) deltaPage(kind string, st deltaState, ids []string, latest bool) *response {
	t := c.t
	size := c.s.opts.DeltaPageSize
	values := make([]map[string]any, 0, min(size, len(ids)))
	wantMembers := kind == "groups" && (len(st.Select) == 0 || contains(st.Select, "members"))
	c.sel = st.Select
	sel := st.Select
	if kind == "groups" && len(sel) > 0 {
		sel = without(sel, "members")
	}
	i := 0
	memOff := st.MemOff
	for ; i < len(ids) && len(values) < size; i++ {
		id := ids[i]
		if reason, gone := removedReason(t, kind, id, st); gone {
			values = append(values, map[string]any{"id": id, "@removed": map[string]any{"reason": reason}})
			continue
		}
		var props map[string]any
		if kind == "users" {
			props, _ = project(c.userProps(t.users[id]), sel, userDefaults, "user")
		} else {
			props, _ = project(groupProps(t.groups[id]), sel, groupDefaults, "group")
		}
		for k, v := range props {
			if isNil(v) {
				delete(props, k) // never set: omitted, in every round
			}
		}
		if !wantMembers {
			values = append(values, props)
			if c.s.duplicate() {
				values = append(values, props)
			}
			continue
		}
		members := c.memberDelta(t.groups[id], st)
		for {
			end := min(memOff+membersPerEntry, len(members))
			entry := props
			if memOff > 0 {
				entry = map[string]any{"id": id}
			}
			if len(members) > 0 {
				entry["members@delta"] = members[memOff:end]
			}
			values = append(values, entry)
			if c.s.duplicate() {
				values = append(values, entry)
			}
			memOff = end
			if memOff >= len(members) {
				memOff = 0
				break
			}
			if len(values) >= size {
				break
			}
		}
		if memOff > 0 {
			// The group continues on the next page.
			st.Cursor, st.MemOff = id, memOff
			i++
			break
		}
	}
	c.objects = len(values)
	body := map[string]any{"@odata.context": c.context(kind), "value": values} // …#users(sel), as Graph's delta examples
	if !latest && (i < len(ids) || st.MemOff > 0 && memOff > 0) {
		if memOff == 0 {
			st.Cursor, st.MemOff = ids[i-1], 0
		}
		body["@odata.nextLink"] = c.s.URL() + "/v1.0/" + kind + "/delta?$skiptoken=" + encodeState(st)
	} else {
		next := deltaState{Kind: kind, To: st.To, Select: st.Select, IDs: st.IDs, Issued: c.s.clock.now().UnixNano()}
		body["@odata.deltaLink"] = c.s.URL() + "/v1.0/" + kind + "/delta?$deltatoken=" + encodeState(next)
	}
	return &response{status: 200, body: body}
}

func removedReason(t *Tenant, kind, id string, st deltaState) (string, bool) {
	if kind == "users" && t.users[id] != nil || kind == "groups" && t.groups[id] != nil {
		return "", false
	}
	tombs := t.userTombs
	if kind == "groups" {
		tombs = t.groupTombs
	}
	reason := ""
	for _, tb := range tombs {
		if tb.id == id && tb.version > st.From {
			reason = tb.reason // the last one wins (soft, then purged)
		}
	}
	return reason, reason != ""
}

// memberRef is an item of a group's members@delta, as Graph writes it. A
// struct, not a map: a full round of a large tenant writes millions.
type memberRef struct {
	Type    string         `json:"@odata.type"`
	ID      string         `json:"id"`
	Removed *memberRefGone `json:"@removed,omitempty"`
}

type memberRefGone struct {
	Reason string `json:"reason"`
}

var memberGone = &memberRefGone{Reason: "deleted"}

// memberDelta lists a group's member changes of the pass (all members on a
// full pass or for a group created in it).
func (c *gctx) memberDelta(g *Group, st deltaState) []memberRef {
	ref := func(id string, removed bool) memberRef {
		m := memberRef{Type: "#microsoft.graph.user", ID: id}
		if c.t.users[id] == nil && c.t.groups[id] != nil {
			m.Type = "#microsoft.graph.group"
		}
		if removed {
			m.Removed = memberGone
		}
		return m
	}
	if st.Full {
		out := make([]memberRef, 0, len(g.Members))
		for _, id := range g.MemberIDs() {
			out = append(out, ref(id, false))
		}
		return out
	}
	changed := map[string]bool{}
	for _, ch := range g.memberLog {
		if ch.version > st.From {
			changed[ch.member] = true
		}
	}
	ids := make([]string, 0, len(changed))
	for id := range changed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]memberRef, 0, len(ids))
	for _, id := range ids {
		out = append(out, ref(id, !g.Members[id]))
	}
	return out
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func without(ss []string, s string) []string {
	out := make([]string, 0, len(ss))
	for _, x := range ss {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

func isNil(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case *string:
		return x == nil
	case *bool:
		return x == nil
	}
	return false
}

// duplicate draws whether to repeat a delta entry.
func (s *Server) duplicate() bool {
	if s.opts.DeltaDuplicateRate <= 0 {
		return false
	}
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	return s.faultR.Float64() < s.opts.DeltaDuplicateRate
}

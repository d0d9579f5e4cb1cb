package handlers

import (
	"encoding/json"
	"strconv"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/internal/state"
	"github.com/tevyra/m365-worker/jobs"
)

// Groups of any size: a group's record carries at most jobs.MaxInlineMembers
// member ids; the rest follow in members changes (published), and in member
// chunks of the group's state (stored), so that no message or stored value
// grows with the group.

// groupMembersKind is the state kind of a large group's member chunks:
// a.<pool>.<instance>.gm.<group id>.<n>.
const groupMembersKind = "gm"

func memberChunkRef(id string, n int) assetRef {
	return assetRef{groupMembersKind, id + "." + strconv.Itoa(n)}
}

// chunks splits ids into runs of at most jobs.MaxInlineMembers.
func chunks(ids []string) [][]string {
	var out [][]string
	for len(ids) > jobs.MaxInlineMembers {
		out = append(out, ids[:jobs.MaxInlineMembers])
		ids = ids[jobs.MaxInlineMembers:]
	}
	return append(out, ids)
}

// groupChanges are the changes that publish a group with its (sorted)
// members: one upsert, then members changes for the ids beyond the first
// chunk. whole is the group's record with all its members, marshalled:
// the upsert of a group that fits one record.
func groupChanges(g *graphclient.Group, members []string, whole json.RawMessage) []jobs.AssetChange {
	parts := chunks(members)
	if len(parts) == 1 {
		return []jobs.AssetChange{{Op: jobs.OpUpsert, ID: g.ID, Asset: whole}}
	}
	out := []jobs.AssetChange{{Op: jobs.OpUpsert, ID: g.ID, Asset: marshalGroup(g, parts[0], true)}}
	for _, p := range parts[1:] {
		b := appendIDs([]byte(`{"members":`), p) // jobs.GroupMembers
		out = append(out, jobs.AssetChange{Op: jobs.OpMembers, ID: g.ID, Asset: append(b, '}')})
	}
	return out
}

// groupStateOps are the state writes of a group: its member ids in chunks
// when there are more than one record should carry, stale chunks of an
// earlier, larger state removed, and the group's record last (so that it
// names only chunks already stored).
func groupStateOps(id string, st groupState, oldChunks int) []stateOp {
	var ops []stateOp
	st.MemberChunks = 0
	if len(st.Members) > jobs.MaxInlineMembers {
		for n, part := range chunks(st.Members) {
			ops = append(ops, stateOp{ref: memberChunkRef(id, n), val: appendIDs(nil, part)})
			st.MemberChunks = n + 1
		}
		st.Members = nil
	}
	for n := st.MemberChunks; n < oldChunks; n++ {
		ops = append(ops, deleteState(memberChunkRef(id, n)))
	}
	return append(ops, stateOp{ref: assetRef{state.AssetGroup, id}, val: marshalGroupState(st)})
}

// groupDeleteOps remove a group's state and its member chunks.
func groupDeleteOps(id string, old groupState) []stateOp {
	ops := []stateOp{deleteState(assetRef{state.AssetGroup, id})}
	for n := 0; n < old.MemberChunks; n++ {
		ops = append(ops, deleteState(memberChunkRef(id, n)))
	}
	return ops
}

package jobs

import (
	"encoding/json"
	"testing"
)

func TestAssetDeltaAppendJSONIsJSONMarshal(t *testing.T) {
	rec, _ := json.Marshal(map[string]any{"displayName": "R&D <team>", "members": []string{"a", "b"}, "n": 1})
	for _, d := range []AssetDelta{
		{SchemaVersion: 1, Instance: "acme", SyncID: "s-1", Type: AssetGroup, Mode: ModeFull, Batch: 1, Last: false, Changes: []AssetChange{}},
		{SchemaVersion: 1, Instance: "a\"b<&>", SyncID: "s~2", Type: AssetUser, Mode: ModeIncremental, Batch: 12, Last: true,
			Changes: []AssetChange{{Op: OpUpsert, ID: "u1", Asset: rec}, {Op: OpDelete, ID: "u2", Reason: ReasonSoftDeleted}}},
		{SchemaVersion: 1, Instance: "x", Type: AssetLicense},
	} {
		want, _ := json.Marshal(&d)
		if got := d.AppendJSON(nil); string(got) != string(want) {
			t.Errorf("AppendJSON:\n got  %s\n want %s", got, want)
		}
	}
}

package jobs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"
)

// ActionPrefix starts the name of every Graph-backed action.
const ActionPrefix = "microsoft-365."

// ActionSync is the action of a sync job.
const ActionSync = "sync"

// The 13 actions.
const (
	ActionCreateUser        = ActionPrefix + "create_user"
	ActionUpdateUser        = ActionPrefix + "update_user"
	ActionDeleteUser        = ActionPrefix + "delete_user"
	ActionDisableUser       = ActionPrefix + "disable_user"
	ActionEnableUser        = ActionPrefix + "enable_user"
	ActionResetPassword     = ActionPrefix + "reset_password"
	ActionAssignLicense     = ActionPrefix + "assign_license"
	ActionRemoveLicense     = ActionPrefix + "remove_license"
	ActionCreateGroup       = ActionPrefix + "create_group"
	ActionUpdateGroup       = ActionPrefix + "update_group"
	ActionDeleteGroup       = ActionPrefix + "delete_group"
	ActionAddGroupMember    = ActionPrefix + "add_group_member"
	ActionRemoveGroupMember = ActionPrefix + "remove_group_member"
)

// ShortAction strips ActionPrefix: "microsoft-365.create_user" → "create_user".
func ShortAction(action string) string { return strings.TrimPrefix(action, ActionPrefix) }

// FullAction adds ActionPrefix to a short action name; "sync" and names that
// already carry the prefix are returned unchanged.
func FullAction(action string) string {
	if action == ActionSync || strings.HasPrefix(action, ActionPrefix) {
		return action
	}
	return ActionPrefix + action
}

// ActionSpec describes one job action.
type ActionSpec struct {
	// Name is the full action name, as it appears in the envelope.
	Name string
	// Summary is one line for help texts.
	Summary string
	// NewParams returns a pointer to the action's zero parameters.
	NewParams func() Params
}

var actionSpecs = buildActionSpecs()

func buildActionSpecs() map[string]ActionSpec {
	specs := map[string]ActionSpec{}
	register := func(name, summary string, newParams func() Params) {
		specs[name] = ActionSpec{Name: name, Summary: summary, NewParams: newParams}
	}
	register(ActionSync, "synchronise users, groups and licences of the instance", func() Params { return &SyncParams{} })
	register(ActionCreateUser, "create a user", func() Params { return &CreateUserParams{} })
	register(ActionUpdateUser, "change properties of a user", func() Params { return &UpdateUserParams{} })
	register(ActionDeleteUser, "delete a user (restorable for 30 days)", func() Params { return &DeleteUserParams{} })
	register(ActionDisableUser, "block a user's sign-in", func() Params { return &DisableUserParams{} })
	register(ActionEnableUser, "allow a user's sign-in", func() Params { return &EnableUserParams{} })
	register(ActionResetPassword, "set or generate a new password for a user", func() Params { return &ResetPasswordParams{} })
	register(ActionAssignLicense, "assign a licence to a user", func() Params { return &AssignLicenseParams{} })
	register(ActionRemoveLicense, "remove a licence from a user", func() Params { return &RemoveLicenseParams{} })
	register(ActionCreateGroup, "create a security or Microsoft 365 group", func() Params { return &CreateGroupParams{} })
	register(ActionUpdateGroup, "change properties of a group", func() Params { return &UpdateGroupParams{} })
	register(ActionDeleteGroup, "delete a group", func() Params { return &DeleteGroupParams{} })
	register(ActionAddGroupMember, "add a member to a group", func() Params { return &AddGroupMemberParams{} })
	register(ActionRemoveGroupMember, "remove a member from a group", func() Params { return &RemoveGroupMemberParams{} })
	return specs
}

// LookupAction returns the spec of a full or short action name.
func LookupAction(name string) (ActionSpec, bool) {
	s, ok := actionSpecs[FullAction(name)]
	return s, ok
}

// Actions lists every action name, sync first, the rest sorted.
func Actions() []string {
	out := make([]string, 0, len(actionSpecs))
	for n := range actionSpecs {
		if n != ActionSync {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return append([]string{ActionSync}, out...)
}

// Job is the envelope of every job, published by Tevyra on a job subject with
// Nats-Msg-Id set to ID.
type Job struct {
	SchemaVersion int `json:"schema_version"`
	// ID is unique per job; results and failure records carry it as job_id.
	ID string `json:"id"`
	// Instance is Tevyra's module-instance id; it must match the subject.
	Instance string `json:"instance"`
	// Action is ActionSync or one of the microsoft-365.* actions; it must
	// match the subject.
	Action string `json:"action"`
	// Params are the action's parameters (see the *Params types).
	Params json.RawMessage `json:"params,omitempty"`
	// RequestedBy names who asked, for audit.
	RequestedBy string `json:"requested_by,omitempty"`
	// RequestedAt is when they asked.
	RequestedAt *time.Time `json:"requested_at,omitempty"`
	// DryRun asks to validate and resolve without writing.
	DryRun bool `json:"dry_run,omitempty"`
}

// maxJobID bounds job ids: they become message ids and KV keys.
const maxJobID = 128

// ParseJob decodes and checks a job envelope and its parameters. The error,
// when not nil, is an *Error with code CodeMalformedJob, CodeInvalidJob,
// CodeUnknownAction or CodeInvalidParams, naming the bad fields; it keeps
// the bounds of Error.Bounded, however large or odd the job: at most
// MaxFieldErrors fields, problems with known fields first, then the first
// unknown keys in sorted order, the rest counted in the message.
func ParseJob(data []byte) (*Job, Params, error) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil || raw == nil {
		msg := "the job is not a JSON object"
		if err != nil {
			msg = fmt.Sprintf("the job is not valid JSON: %v", err)
		}
		return nil, nil, &Error{Code: CodeMalformedJob, Message: clip(msg, MaxMessageLen)}
	}
	if dec.More() {
		return nil, nil, &Error{Code: CodeMalformedJob, Message: "the job has data after its JSON object"}
	}
	var j Job
	var ve ValidationError
	decodeFields(raw, &j, "", &ve)
	if _, ok := raw["schema_version"]; !ok {
		ve.Add("schema_version", "is required")
	} else if j.SchemaVersion != SchemaVersion && !ve.Has("schema_version") {
		ve.Add("schema_version", fmt.Sprintf("must be %d (this worker understands version %d)", SchemaVersion, SchemaVersion))
	}
	switch {
	case j.ID == "" && !ve.Has("id"):
		ve.Add("id", "is required")
	case len(j.ID) > maxJobID:
		ve.Add("id", fmt.Sprintf("must be at most %d characters", maxJobID))
	case !printableID(j.ID):
		ve.Add("id", "must not contain spaces or control characters")
	}
	if j.Instance == "" && !ve.Has("instance") {
		ve.Add("instance", "is required")
	} else if j.Instance != "" && !ValidToken(j.Instance) {
		ve.Add("instance", "must be 1 to 64 letters, digits, '-' or '_'")
	}
	if j.Action == "" && !ve.Has("action") {
		ve.Add("action", "is required")
	}
	if len(ve.Fields) > 0 {
		return &j, nil, ve.jobError(CodeInvalidJob, "invalid job envelope: ", "")
	}
	spec, ok := actionSpecs[j.Action]
	if !ok {
		msg := fmt.Sprintf("unknown action %s (known: %s)", quoteInput(j.Action), strings.Join(Actions(), ", "))
		return &j, nil, &Error{Code: CodeUnknownAction, Message: clip(msg, MaxMessageLen)}
	}
	p := spec.NewParams()
	if err := DecodeParams(j.Params, p); err != nil {
		return &j, nil, err
	}
	return &j, p, nil
}

func printableID(s string) bool {
	for _, r := range s {
		if r <= ' ' || r == 0x7f || r == '*' || r == '>' {
			return false
		}
	}
	return true
}

// DecodeParams decodes raw strictly into p (unknown fields rejected) and
// validates it. The error is an *Error with code CodeInvalidParams naming
// the bad fields (within the bounds of Error.Bounded), or CodeInternal when p
// is not a non-nil pointer to a params struct.
func DecodeParams(raw json.RawMessage, p Params) error {
	if rv := reflect.ValueOf(p); rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return &Error{Code: CodeInternal, Message: fmt.Sprintf("DecodeParams needs a non-nil pointer to a params struct, not %T", p)}
	}
	var ve ValidationError
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		trimmed = []byte("{}")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &m); err != nil || m == nil {
		ve.Add("params", "must be a JSON object")
	} else {
		decodeFields(m, p, "", &ve)
		p.Validate(&ve)
	}
	if len(ve.Fields) > 0 {
		return ve.jobError(CodeInvalidParams, "invalid params: ", "params.")
	}
	return nil
}

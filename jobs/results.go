package jobs

import (
	"encoding/json"
	"strconv"
	"time"
)

// Error codes the runtime itself produces. Graph-backed handlers add their
// own (upn_conflict, no_free_seat, …), documented in docs/contract.md.
const (
	// CodeMalformedJob: the message is not a JSON object.
	CodeMalformedJob = "malformed_job"
	// CodeInvalidJob: envelope fields are missing, unknown or wrong, or
	// disagree with the subject.
	CodeInvalidJob = "invalid_job"
	// CodeUnknownAction: the action is not one this worker knows.
	CodeUnknownAction = "unknown_action"
	// CodeInvalidParams: the parameters do not validate.
	CodeInvalidParams = "invalid_params"
	// CodeNotImplemented: the action is part of the contract but this
	// worker has no handler for it yet.
	CodeNotImplemented = "not_implemented"
	// CodeInstanceNotFound: no instance configuration for the job's
	// instance.
	CodeInstanceNotFound = "instance_not_found"
	// CodeAttemptsExhausted: the job failed with retryable errors until its
	// attempts ran out.
	CodeAttemptsExhausted = "attempts_exhausted"
	// CodeSyncRunning: a sync of the instance was already running.
	CodeSyncRunning = "sync_already_running"
	// CodeTicksMissed: scheduled ticks were not served before the next one
	// replaced them (the pool was behind, or no worker ran); the report
	// counts them in missed_ticks.
	CodeTicksMissed = "ticks_missed"
	// CodeInternal: an unexpected failure in the worker.
	CodeInternal = "internal"
)

// Error is the error of a failed job, in results and failure records.
// Bounded cuts one to the Max* bounds before it is published.
type Error struct {
	// Code is stable and machine-readable: branch on it.
	Code string `json:"code"`
	// Message is one readable line for an operator.
	Message string `json:"message"`
	// GraphCode is Graph's error code, when Graph refused.
	GraphCode string `json:"graph_code,omitempty"`
	// GraphRequestID is Graph's request-id, for Microsoft support.
	GraphRequestID string `json:"graph_request_id,omitempty"`
	// GraphClientRequestID is the client-request-id the request carried:
	// with GraphRequestID, what Microsoft support traces a call by.
	GraphClientRequestID string `json:"graph_client_request_id,omitempty"`
	// Retryable says whether the same job could succeed later unchanged.
	Retryable bool `json:"retryable"`
	// Fields lists the bad fields, for validation errors: at most
	// MaxFieldErrors, sorted by field; the message counts the others.
	Fields []FieldError `json:"fields,omitempty"`
}

func (e *Error) Error() string {
	if e == nil {
		return "<nil>"
	}
	return e.Code + ": " + e.Message
}

// Job statuses in results.
const (
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
)

// ActionResult is published once per job id on m365.results.<instance>.actions.
type ActionResult struct {
	SchemaVersion int    `json:"schema_version"`
	JobID         string `json:"job_id"`
	Instance      string `json:"instance"`
	Action        string `json:"action"`
	// Status is StatusSucceeded or StatusFailed.
	Status string `json:"status"`
	// Attempts counts the handler runs that used an attempt (throttled
	// waits do not).
	Attempts   int       `json:"attempts"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	DryRun     bool      `json:"dry_run,omitempty"`
	// ReplayOf names the job this one replays.
	ReplayOf string `json:"replay_of,omitempty"`
	// Output is the action's output on success (ids, what changed).
	Output json.RawMessage `json:"output,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// FailureRecord is published on m365.failures.<instance> for every job that
// will not be retried. It names the job's stream sequence so the original
// can be read back and replayed; it never copies the job's payload.
type FailureRecord struct {
	SchemaVersion int    `json:"schema_version"`
	JobID         string `json:"job_id"`
	Instance      string `json:"instance"`
	Pool          string `json:"pool"`
	// Action as given by the subject (the envelope may be unreadable).
	Action    string `json:"action"`
	Subject   string `json:"subject"`
	Stream    string `json:"stream"`
	StreamSeq uint64 `json:"stream_seq"`
	// Deliveries is the number of times JetStream delivered the job.
	Deliveries uint64 `json:"deliveries"`
	// Attempts counts the handler runs that used an attempt.
	Attempts int       `json:"attempts"`
	FailedAt time.Time `json:"failed_at"`
	Worker   string    `json:"worker"`
	ReplayOf string    `json:"replay_of,omitempty"`
	Error    Error     `json:"error"`
}

// Sync modes.
const (
	ModeFull        = "full"
	ModeIncremental = "incremental"
)

// Asset change operations and deletion reasons.
const (
	OpUpsert = "upsert"
	OpDelete = "delete"
	// OpMembers adds member ids to the group record published just before
	// under the same id in the same sync: a group with more than
	// MaxInlineMembers members is published as an upsert carrying the
	// first ones (membersContinued set), then as many members changes as
	// the rest needs, in order. Its asset is a GroupMembers.
	OpMembers = "members"

	ReasonSoftDeleted          = "soft_deleted"
	ReasonHardDeleted          = "hard_deleted"
	ReasonMissingAfterFullSync = "missing_after_full_sync"
)

// AssetDelta is one batch of asset changes of one type, published on
// m365.results.<instance>.assets.<type>. Batches of a sync are numbered from
// 1; the last one has Last set.
type AssetDelta struct {
	SchemaVersion int    `json:"schema_version"`
	Instance      string `json:"instance"`
	SyncID        string `json:"sync_id"`
	// Type is AssetUser, AssetGroup or AssetLicense.
	Type string `json:"type"`
	// Mode is ModeFull or ModeIncremental.
	Mode    string        `json:"mode"`
	Batch   int           `json:"batch"`
	Last    bool          `json:"last"`
	Changes []AssetChange `json:"changes"`
}

// AppendJSON appends d as json.Marshal writes it, without re-validating and
// compacting each record (encoding/json does that for every
// json.RawMessage, which dominated a large round's publishing). The assets
// must be valid, compact JSON, as json.Marshal produces them.
func (d *AssetDelta) AppendJSON(b []byte) []byte {
	b = append(b, `{"schema_version":`...)
	b = strconv.AppendInt(b, int64(d.SchemaVersion), 10)
	b = append(b, `,"instance":`...)
	b = appendJSONString(b, d.Instance)
	b = append(b, `,"sync_id":`...)
	b = appendJSONString(b, d.SyncID)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, d.Type)
	b = append(b, `,"mode":`...)
	b = appendJSONString(b, d.Mode)
	b = append(b, `,"batch":`...)
	b = strconv.AppendInt(b, int64(d.Batch), 10)
	b = append(b, `,"last":`...)
	b = strconv.AppendBool(b, d.Last)
	b = append(b, `,"changes":`...)
	if d.Changes == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, c := range d.Changes {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"op":`...)
			b = appendJSONString(b, c.Op)
			b = append(b, `,"id":`...)
			b = appendJSONString(b, c.ID)
			if len(c.Asset) > 0 {
				b = append(b, `,"asset":`...)
				b = append(b, c.Asset...)
			}
			if c.Reason != "" {
				b = append(b, `,"reason":`...)
				b = appendJSONString(b, c.Reason)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // escapes exactly as the rest of the message
	return append(b, q...)
}

// AssetChange is an upsert with the full record, or a deletion with a reason.
type AssetChange struct {
	Op string `json:"op"`
	ID string `json:"id"`
	// Asset is the full record (UserAsset, GroupAsset or LicenseAsset) on
	// upserts.
	Asset json.RawMessage `json:"asset,omitempty"`
	// Reason is set on deletions.
	Reason string `json:"reason,omitempty"`
}

// AssignedLicense is a licence on a user, with both its id and part number.
type AssignedLicense struct {
	SkuID         string   `json:"skuId"`
	SkuPartNumber string   `json:"skuPartNumber"`
	DisabledPlans []string `json:"disabledPlans"`
}

// UserAsset is the m365_user record. Property names are Graph's.
type UserAsset struct {
	ID                    string            `json:"id"`
	UserPrincipalName     string            `json:"userPrincipalName"`
	DisplayName           string            `json:"displayName"`
	GivenName             *string           `json:"givenName"`
	Surname               *string           `json:"surname"`
	Mail                  *string           `json:"mail"`
	JobTitle              *string           `json:"jobTitle"`
	Department            *string           `json:"department"`
	OfficeLocation        *string           `json:"officeLocation"`
	MobilePhone           *string           `json:"mobilePhone"`
	BusinessPhones        []string          `json:"businessPhones"`
	AccountEnabled        bool              `json:"accountEnabled"`
	UserType              string            `json:"userType"`
	UsageLocation         *string           `json:"usageLocation"`
	CreatedDateTime       *time.Time        `json:"createdDateTime"`
	OnPremisesSyncEnabled *bool             `json:"onPremisesSyncEnabled"`
	AssignedLicenses      []AssignedLicense `json:"assignedLicenses"`
}

// GroupAsset is the m365_group record. Property names are Graph's; Members
// holds the ids of direct members.
type GroupAsset struct {
	ID              string     `json:"id"`
	DisplayName     string     `json:"displayName"`
	Description     *string    `json:"description"`
	Mail            *string    `json:"mail"`
	MailNickname    string     `json:"mailNickname"`
	MailEnabled     bool       `json:"mailEnabled"`
	SecurityEnabled bool       `json:"securityEnabled"`
	GroupTypes      []string   `json:"groupTypes"`
	Visibility      *string    `json:"visibility"`
	MembershipRule  *string    `json:"membershipRule"`
	CreatedDateTime *time.Time `json:"createdDateTime"`
	Members         []string   `json:"members"`
	// MembersContinued says members changes follow with the rest of the
	// member ids (a group larger than MaxInlineMembers).
	MembersContinued bool `json:"membersContinued,omitempty"`
}

// MaxInlineMembers bounds the member ids one group record or members change
// carries, so that every message stays well within the NATS payload limit
// whatever the group's size.
const MaxInlineMembers = 5000

// GroupMembers is the asset of a members change: more member ids of a group.
type GroupMembers struct {
	Members []string `json:"members"`
}

// PrepaidUnits are a SKU's seats by state.
type PrepaidUnits struct {
	Enabled   int `json:"enabled"`
	Suspended int `json:"suspended"`
	Warning   int `json:"warning"`
	LockedOut int `json:"lockedOut"`
}

// ServicePlan is one service plan of a SKU.
type ServicePlan struct {
	ServicePlanID      string `json:"servicePlanId"`
	ServicePlanName    string `json:"servicePlanName"`
	ProvisioningStatus string `json:"provisioningStatus"`
	AppliesTo          string `json:"appliesTo"`
}

// LicenseAsset is the m365_license record (a subscribed SKU). Property names
// are Graph's; AvailableUnits is prepaidUnits.enabled − consumedUnits.
type LicenseAsset struct {
	ID               string        `json:"id"`
	SkuID            string        `json:"skuId"`
	SkuPartNumber    string        `json:"skuPartNumber"`
	CapabilityStatus string        `json:"capabilityStatus"`
	AppliesTo        string        `json:"appliesTo"`
	PrepaidUnits     PrepaidUnits  `json:"prepaidUnits"`
	ConsumedUnits    int           `json:"consumedUnits"`
	AvailableUnits   int           `json:"availableUnits"`
	ServicePlans     []ServicePlan `json:"servicePlans"`
}

// Indicators is the indicator snapshot published on
// m365.results.<instance>.indicators after each sync.
type Indicators struct {
	SchemaVersion    int       `json:"schema_version"`
	Instance         string    `json:"instance"`
	SyncID           string    `json:"sync_id"`
	At               time.Time `json:"at"`
	UsersTotal       int       `json:"users_total"`
	UsersEnabled     int       `json:"users_enabled"`
	UsersLicensed    int       `json:"users_licensed"`
	GroupsTotal      int       `json:"groups_total"`
	LicensesTotal    int       `json:"licenses_total"`
	LicensesConsumed int       `json:"licenses_consumed"`
}

// Sync outcomes.
const (
	OutcomeSucceeded = "succeeded"
	OutcomeFailed    = "failed"
	OutcomeSkipped   = "skipped"
)

// What asks for a sync round.
const (
	TriggerSchedule     = "schedule"     // the instance's scheduled tick (the backstop poll)
	TriggerNotification = "notification" // a Graph change notification, through the receiver
	TriggerOnDemand     = "on-demand"    // a sync job published by Tevyra or an operator
)

// SyncCounts counts a sync's changes of one asset type.
type SyncCounts struct {
	Upserts int `json:"upserts"`
	Deletes int `json:"deletes"`
	// Total is the number of assets of the type after the sync.
	Total int `json:"total"`
}

// SyncReport closes every sync job, on m365.results.<instance>.syncs.
type SyncReport struct {
	SchemaVersion int    `json:"schema_version"`
	JobID         string `json:"job_id"`
	Instance      string `json:"instance"`
	SyncID        string `json:"sync_id"`
	// Mode is ModeFull or ModeIncremental (empty when the sync did not
	// start).
	Mode string `json:"mode,omitempty"`
	// Outcome is OutcomeSucceeded, OutcomeFailed or OutcomeSkipped.
	Outcome string `json:"outcome"`
	// Trigger is what asked for the round: TriggerSchedule,
	// TriggerNotification or TriggerOnDemand.
	Trigger    string    `json:"trigger,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	DurationMS int64     `json:"duration_ms"`
	// Counts per asset type.
	Counts map[string]SyncCounts `json:"counts,omitempty"`
	// Graph traffic of the round.
	GraphRequests int64 `json:"graph_requests"`
	ResourceUnits int64 `json:"resource_units"`
	Throttled     int64 `json:"throttled"`
	Retries       int64 `json:"retries"`
	// MissedTicks counts the scheduled ticks a ticks_missed report stands
	// for.
	MissedTicks int `json:"missed_ticks,omitempty"`
	// Credential is the instance's credential as the round knew it: its
	// kind and, when known, its expiry.
	Credential *CredentialState `json:"credential,omitempty"`
	// Warnings are what an operator should act on before it breaks (a
	// credential expiring within CredentialWarning).
	Warnings []string `json:"warnings,omitempty"`
	Error    *Error   `json:"error,omitempty"`
}

// Credential kinds.
const (
	CredentialClientSecret = "client_secret"
	CredentialCertificate  = "certificate"
	CredentialFederated    = "federated"
)

// Where a credential's expiry was learned.
const (
	ExpiryFromCertificate = "certificate"     // the certificate's notAfter
	ExpiryFromRecord      = "instance_record" // given at instance add|update
	ExpiryFromGraph       = "graph"           // the app registration's passwordCredentials
)

// CredentialWarning is how long before a credential's expiry sync reports
// warn of it.
const CredentialWarning = 30 * 24 * time.Hour

// CredentialState is an instance's credential: its kind, and when it
// expires as far as known (a federated credential has no secret and no
// expiry of its own).
type CredentialState struct {
	Kind      string     `json:"kind"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// Source says where ExpiresAt comes from.
	Source string `json:"source,omitempty"`
}

package jobs

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultPrefix is the subject prefix used when none is configured.
const DefaultPrefix = "m365"

// DefaultPool is the pool that serves instances not assigned elsewhere.
const DefaultPool = "default"

// tokenRE is what an instance id, a pool name or a prefix may look like: a
// single NATS subject token that is also safe as a KV key and consumer name.
var tokenRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// ValidToken reports whether s can be used as an instance id, pool name or
// subject prefix.
func ValidToken(s string) bool { return tokenRE.MatchString(s) }

// CheckToken returns a readable error when s is not a valid token.
func CheckToken(what, s string) error {
	if !ValidToken(s) {
		return fmt.Errorf("%s %s is not valid: use 1 to 64 letters, digits, '-' or '_', starting with a letter or digit", what, quoteInput(s))
	}
	return nil
}

// Asset types published on m365.results.<instance>.assets.<type>.
const (
	AssetUser    = "m365_user"
	AssetGroup   = "m365_group"
	AssetLicense = "m365_license"
)

// Result kinds: the last token of a result subject.
const (
	ResultActions    = "actions"
	ResultIndicators = "indicators"
	ResultSyncs      = "syncs"
)

// Subjects builds and parses the subjects of one deployment (one prefix).
// The zero value uses DefaultPrefix.
type Subjects struct {
	Prefix string
}

func (s Subjects) p() string {
	if s.Prefix == "" {
		return DefaultPrefix
	}
	return s.Prefix
}

// JobsAll matches every job subject: the jobs stream's subject.
func (s Subjects) JobsAll() string { return s.p() + ".jobs.>" }

// SchedulesAll matches every schedule subject.
func (s Subjects) SchedulesAll() string { return s.p() + ".schedules.>" }

// PoolJobs matches the jobs of one pool: a pool consumer's filter.
func (s Subjects) PoolJobs(pool string) string { return s.p() + ".jobs." + pool + ".>" }

// SyncJob is the subject of an instance's sync jobs.
func (s Subjects) SyncJob(pool, instance string) string {
	return s.p() + ".jobs." + pool + "." + instance + ".sync"
}

// ActionJob is the subject of an action job. action may be the full name
// (microsoft-365.create_user) or the short one (create_user).
func (s Subjects) ActionJob(pool, instance, action string) string {
	return s.p() + ".jobs." + pool + "." + instance + ".action." + ShortAction(action)
}

// JobSubject is the subject a job envelope is published on.
func (s Subjects) JobSubject(pool string, j *Job) string {
	if j.Action == ActionSync {
		return s.SyncJob(pool, j.Instance)
	}
	return s.ActionJob(pool, j.Instance, j.Action)
}

// Schedule is the subject holding an instance's sync schedule.
func (s Subjects) Schedule(pool, instance string) string {
	return s.p() + ".schedules." + pool + "." + instance + ".sync"
}

// ResultsAll matches every result subject: the results stream's subject.
func (s Subjects) ResultsAll() string { return s.p() + ".results.>" }

// Results is the subject of one kind of result of an instance
// (ResultActions, ResultIndicators, ResultSyncs).
func (s Subjects) Results(instance, kind string) string {
	return s.p() + ".results." + instance + "." + kind
}

// Assets is the subject of an instance's asset deltas of one type.
func (s Subjects) Assets(instance, assetType string) string {
	return s.p() + ".results." + instance + ".assets." + assetType
}

// FailuresAll matches every failure subject: the failures stream's subject.
func (s Subjects) FailuresAll() string { return s.p() + ".failures.>" }

// Failures is the subject of an instance's failure records.
func (s Subjects) Failures(instance string) string { return s.p() + ".failures." + instance }

// NotifiedJob is the subject of an instance's notification triggers: sync
// jobs the notification receiver publishes when Graph reports a change
// (docs/notify.md).
func (s Subjects) NotifiedJob(pool, instance string) string {
	return s.p() + ".jobs." + pool + "." + instance + ".notified"
}

// JobAddress is what a job subject says.
type JobAddress struct {
	Pool     string
	Instance string
	// Action is the full action name: ActionSync or microsoft-365.<name>.
	Action string
	// Notified marks a notification trigger (a sync job on NotifiedJob).
	Notified bool
}

// ParseJobSubject splits a job subject into pool, instance and action.
func (s Subjects) ParseJobSubject(subject string) (JobAddress, error) {
	prefix := s.p() + ".jobs."
	rest, ok := strings.CutPrefix(subject, prefix)
	if !ok {
		return JobAddress{}, fmt.Errorf("subject %s is not a job subject (want %s<pool>.<instance>.sync, .notified or .action.<name>)", quoteInput(subject), prefix)
	}
	t := strings.Split(rest, ".")
	switch {
	case len(t) == 3 && t[2] == "sync":
		return JobAddress{Pool: t[0], Instance: t[1], Action: ActionSync}, nil
	case len(t) == 3 && t[2] == "notified":
		return JobAddress{Pool: t[0], Instance: t[1], Action: ActionSync, Notified: true}, nil
	case len(t) == 4 && t[2] == "action" && t[3] != "":
		return JobAddress{Pool: t[0], Instance: t[1], Action: ActionPrefix + t[3]}, nil
	}
	return JobAddress{}, fmt.Errorf("subject %s is not a job subject (want %s<pool>.<instance>.sync, .notified or .action.<name>)", quoteInput(subject), prefix)
}

// ResultAddress is what a result subject says.
type ResultAddress struct {
	Instance string
	// Kind is ResultActions, ResultIndicators, ResultSyncs or "assets".
	Kind string
	// AssetType is set when Kind is "assets".
	AssetType string
}

// ParseResultSubject splits a result subject.
func (s Subjects) ParseResultSubject(subject string) (ResultAddress, error) {
	prefix := s.p() + ".results."
	rest, ok := strings.CutPrefix(subject, prefix)
	if ok {
		t := strings.Split(rest, ".")
		switch {
		case len(t) == 2 && (t[1] == ResultActions || t[1] == ResultIndicators || t[1] == ResultSyncs):
			return ResultAddress{Instance: t[0], Kind: t[1]}, nil
		case len(t) == 3 && t[1] == "assets" && t[2] != "":
			return ResultAddress{Instance: t[0], Kind: "assets", AssetType: t[2]}, nil
		}
	}
	return ResultAddress{}, fmt.Errorf("subject %s is not a result subject", quoteInput(subject))
}

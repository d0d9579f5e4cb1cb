package console

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/handlers"
	"github.com/tevyra/m365-worker/jobs"
)

// instanceView is one instance as the pages show it.
type instanceView struct {
	ID, Pool, TenantID, ClientID, Cloud string
	Interval                            time.Duration
	Sync                                handlers.SyncMeta
	Running                             *handlers.SyncProgress
	Next                                time.Time
	Health                              string // healthy, not synced yet, last round failed, credentials refused
}

// Healthy reports whether the instance is healthy.
func (i instanceView) Healthy() bool { return i.Health == "healthy" }

// Budget says how much of the tenant's Graph budget (Graph's resource
// units per 10 s for a tenant of its size, graphclient.RUBudget) the last
// round used, averaged over the round; "" before a round counted any.
func (i instanceView) Budget() string {
	if i.Sync.LastResourceUnits == 0 {
		return ""
	}
	budget := graphclient.RUBudget(i.Sync.Users)
	windows := max(time.Duration(i.Sync.LastDuration).Seconds()/10, 1)
	return fmt.Sprintf("the last round spent %d resource units, %.0f %% of the tenant's %.0f per 10 s (%d users) over its %s",
		i.Sync.LastResourceUnits, 100*float64(i.Sync.LastResourceUnits)/(budget*windows), budget, i.Sync.Users, time.Duration(i.Sync.LastDuration).Round(time.Millisecond))
}

// poolView is a pool's workers and backlog.
type poolView struct {
	Pool                         string
	Live, InFlight               int
	Backlog, AckFloor, Delivered uint64
	// Stream is the jobs stream the pool's consumer is on (its own for a
	// customer site's pool); Read says its consumer was read.
	Stream string
	Read   bool
}

// failureView is a failure record and its sequence in the failures stream.
type failureView struct {
	Seq   uint64
	Rec   jobs.FailureRecord
	lower string // the message in lower case, for text search
}

// jobRef is a job seen in the jobs stream.
type jobRef struct {
	ID, Pool, Instance, Action, Subject, ReplayOf string
	Stream                                        string // the jobs stream its pool's consumer is on
	Seq                                           uint64
	At                                            time.Time
}

// resultView is a job's result (an action's or a sync report).
type resultView struct {
	JobID, Instance, Action, Status, Code, Message, Output string
	Started, Finished                                      time.Time
}

// auditEntry is one operator action, as recorded in the audit stream.
type auditEntry struct {
	At     time.Time `json:"at"`
	Who    string    `json:"who"`
	Sub    string    `json:"subject"`
	Role   string    `json:"role"`
	Action string    `json:"action"` // replay, sync, reveal
	Target string    `json:"target"`
	Detail string    `json:"detail,omitempty"`
}

// failureFilter selects failure records; every field comes from the URL,
// so a filtered list is a link to share.
type failureFilter struct {
	Instance, Action, Code, Text, Since string
	since                               time.Time
}

// parseFailureFilter reads the filter from query or form values.
func parseFailureFilter(v url.Values, now time.Time) (failureFilter, error) {
	f := failureFilter{Instance: strings.TrimSpace(v.Get("instance")), Action: strings.TrimSpace(v.Get("action")),
		Code: strings.TrimSpace(v.Get("code")), Text: strings.TrimSpace(v.Get("q")), Since: strings.TrimSpace(v.Get("since"))}
	if f.Since != "" {
		t, err := parseSince(f.Since, now)
		if err != nil {
			return f, err
		}
		f.since = t
	}
	return f, nil
}

// parseSince takes 90m, 24h, 7d, a date (2026-12-01) or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if d, err := strconv.Atoi(n); err == nil && d >= 0 {
			return now.Add(-time.Duration(d) * 24 * time.Hour), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("since %q: give a duration (90m, 24h, 7d), a date (2026-12-01) or a time (2026-12-01T08:00:00Z)", s)
}

func (f failureFilter) match(v *failureView) bool {
	r := &v.Rec
	return (f.Instance == "" || r.Instance == f.Instance) &&
		(f.Action == "" || jobs.ShortAction(r.Action) == jobs.ShortAction(f.Action)) &&
		(f.Code == "" || r.Error.Code == f.Code) &&
		(f.since.IsZero() || !r.FailedAt.Before(f.since)) &&
		(f.Text == "" || strings.Contains(v.lower, strings.ToLower(f.Text)))
}

// Query is the filter as URL query values.
func (f failureFilter) Query() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"instance": f.Instance, "action": f.Action, "code": f.Code, "q": f.Text, "since": f.Since} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

// Empty reports whether the filter selects every record.
func (f failureFilter) Empty() bool { return len(f.Query()) == 0 }

// jobFilter selects recent jobs.
type jobFilter struct {
	Instance, Action, Outcome, Since string
	since                            time.Time
}

func parseJobFilter(v url.Values, now time.Time) (jobFilter, error) {
	f := jobFilter{Instance: v.Get("instance"), Action: v.Get("action"), Outcome: v.Get("outcome"), Since: v.Get("since")}
	if f.Since != "" {
		t, err := parseSince(f.Since, now)
		if err != nil {
			return f, err
		}
		f.since = t
	}
	return f, nil
}

func (f jobFilter) match(j *jobRef, outcome string) bool {
	return (f.Instance == "" || j.Instance == f.Instance) && (f.Action == "" || jobs.ShortAction(j.Action) == jobs.ShortAction(f.Action)) &&
		(f.Outcome == "" || outcome == f.Outcome) && (f.since.IsZero() || !j.At.Before(f.since))
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

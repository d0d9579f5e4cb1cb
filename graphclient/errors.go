package graphclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	abstractions "github.com/microsoft/kiota-abstractions-go"
	"github.com/microsoftgraph/msgraph-sdk-go/models/odataerrors"
)

// Sentinels matched with errors.Is against an *Error.
var (
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("already exists")
	ErrForbidden    = errors.New("insufficient privileges")
	ErrThrottled    = errors.New("throttled")
	ErrDeltaExpired = errors.New("delta token expired")
	ErrBadRequest   = errors.New("bad request")
	ErrAuth         = errors.New("authentication failed")
	// ErrUnavailable is a Graph outage or fault: retry by attempts.
	ErrUnavailable = errors.New("Graph unavailable")
)

// Sentinels for Graph's refusals that share the code Request_BadRequest
// (status 400, so they match ErrBadRequest too) and differ only by message
// (GRAPH.md §5–§7); set by classify. A refused request fails the same way
// until the tenant changes: none is retryable.
var (
	// ErrNoFreeSeat: the subscription has no available licence.
	ErrNoFreeSeat = errors.New("no free licence seat")
	// ErrUsageLocation: the user has no usage location, which licences need.
	ErrUsageLocation = errors.New("no usage location")
	// ErrDynamicGroup: the group's membership is rule-based.
	ErrDynamicGroup = errors.New("dynamic group membership")
	// ErrPasswordPolicy: the password fails the tenant's complexity rules.
	ErrPasswordPolicy = errors.New("password does not meet the policy")
	// ErrLicenseInherited: the licence comes from a group and cannot be
	// removed from the user directly.
	ErrLicenseInherited = errors.New("licence inherited from a group")
)

// ErrBadResponse is a Graph answer the client cannot use: paging that
// repeats a nextLink or passes PoolConfig.MaxPages, a body over
// PoolConfig.MaxPageBytes, no body where a value was due. It is a Graph
// fault: every such error also matches ErrUnavailable, and is retried by
// attempts like an outage.
var ErrBadResponse = errors.New("unusable Graph response")

// ErrEndpointOverride is an instance Config that sets Authority, GraphRoot
// or CAPEM in a pool that does not allow it
// (PoolConfig.AllowEndpointOverrides); the error is an
// *EndpointOverrideError. It is a configuration error: never retryable.
var ErrEndpointOverride = errors.New("endpoint override refused")

// ErrForeignHost is a request the client refused to send, with or without
// its bearer token: its URL is not https on the instance's Graph host (a
// nextLink, a redirect or a stored delta link pointing elsewhere). A stored
// delta link pointing elsewhere also matches ErrDeltaExpired, so the caller
// drops it and runs a full round.
var ErrForeignHost = errors.New("not the instance's Graph host")

// EndpointOverrideError is the refusal of an instance Config that sets
// endpoint overrides in a pool that does not allow them.
type EndpointOverrideError struct {
	Instance string
	// Fields names what the Config sets, as the instance record names
	// them: authority, graph_root, ca_pem.
	Fields []string
}

func (e *EndpointOverrideError) Error() string {
	return fmt.Sprintf("instance %s sets %s: endpoint overrides are refused unless the pool allows them (PoolConfig.AllowEndpointOverrides)", e.Instance, strings.Join(e.Fields, ", "))
}

// Is matches ErrEndpointOverride.
func (e *EndpointOverrideError) Is(target error) bool { return target == ErrEndpointOverride }

// Detail is one entry of a Graph error's details.
type Detail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Target  string `json:"target"`
}

// Error is a failed Graph (or token) request.
type Error struct {
	// Op names what was attempted, e.g. "assign licence ENTERPRISEPACK to adele@contoso.com".
	Op string
	// Status is the HTTP status (0 for a transport failure).
	Status int
	// Code is Graph's error code (Request_ResourceNotFound, …) or, for
	// token failures, the AADSTS code ("AADSTS7000215").
	Code      string
	Message   string
	RequestID string
	// ClientRequestID is the client-request-id the request carried (a
	// GUID): with RequestID, what Microsoft support traces a call by.
	ClientRequestID string
	Details         []Detail
	// RetryAfter is the server's (or our pacer's) wait for throttled
	// requests.
	RetryAfter time.Duration
	// Hint is a readable explanation of what to do, when one is known.
	Hint string
	err  error
	// reason is the refining sentinel set by classify (ErrNoFreeSeat, …)
	// or by the client's guards (ErrBadResponse); nil for none.
	reason error
	// foreign: a request refused for its host (ErrForeignHost).
	foreign bool
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(": ")
	}
	if e.Hint != "" {
		b.WriteString(e.Hint)
		b.WriteString(" (")
	}
	if e.Code != "" {
		b.WriteString(e.Code)
		b.WriteString(": ")
	}
	b.WriteString(e.Message)
	if e.Status != 0 {
		fmt.Fprintf(&b, " [HTTP %d", e.Status)
		if e.RequestID != "" {
			b.WriteString(", request-id " + e.RequestID)
		}
		if e.ClientRequestID != "" {
			b.WriteString(", client-request-id " + e.ClientRequestID)
		}
		b.WriteString("]")
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " retry after %s", e.RetryAfter.Round(time.Millisecond))
	}
	if e.Hint != "" {
		b.WriteString(")")
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.err }

// Is matches the sentinels: the status and code ones, and the refining
// one (ErrNoFreeSeat, …, ErrBadResponse) set when the error was made.
func (e *Error) Is(target error) bool {
	if e.reason != nil && target == e.reason {
		return true
	}
	if target == ErrForeignHost {
		return e.foreign
	}
	switch target {
	case ErrNotFound:
		return e.Status == http.StatusNotFound || e.Code == "Request_ResourceNotFound" || e.Code == "ResourceNotFound"
	case ErrConflict:
		return e.Status == http.StatusConflict
	case ErrForbidden:
		return e.Status == http.StatusForbidden || e.Code == "Authorization_RequestDenied"
	case ErrThrottled:
		return e.Status == http.StatusTooManyRequests || e.Code == "TooManyRequests" || (e.Status == 0 && e.RetryAfter > 0)
	case ErrDeltaExpired:
		return e.Status == http.StatusGone || e.Code == "syncStateNotFound" || e.Code == "resyncRequired"
	case ErrBadRequest:
		return e.Status == http.StatusBadRequest
	case ErrAuth:
		return e.Status == http.StatusUnauthorized || strings.HasPrefix(e.Code, "AADSTS")
	case ErrUnavailable:
		return e.Status >= 500 || (e.Status == 0 && e.err != nil && e.RetryAfter == 0) || e.reason == ErrBadResponse
	}
	return false
}

// reasons are the refusals Graph tells apart by message only, with the
// phrases (lower case) that name them. Graph's texts per GRAPH.md §5–§7.
var reasons = []struct {
	sentinel error
	phrases  []string
}{
	{ErrNoFreeSeat, []string{"does not have any available licenses"}},
	{ErrUsageLocation, []string{"invalid usage location"}},
	{ErrDynamicGroup, []string{"dynamic membership"}},
	{ErrPasswordPolicy, []string{"password complexity"}},
	{ErrLicenseInherited, []string{"inherited", "group-based licens"}},
	{ErrConflict, []string{"already exist"}},
}

// classify sets e's refining sentinel from its status, Graph code, details
// and message. It is the only code that reads a Graph error's text; every
// *Error made from a Graph answer passes through it.
func classify(e *Error) *Error {
	if e.Status < 400 || e.Status >= 500 {
		return e
	}
	for _, d := range e.Details {
		if d.Code == "ObjectConflict" {
			e.reason = ErrConflict
			return e
		}
	}
	msg := strings.ToLower(e.Message)
	for _, r := range reasons {
		for _, p := range r.phrases {
			if strings.Contains(msg, p) {
				e.reason = r.sentinel
				return e
			}
		}
	}
	return e
}

// badResponse is an ErrBadResponse for op.
func badResponse(op string, status int, msg string) *Error {
	return &Error{Op: op, Status: status, Message: msg, reason: ErrBadResponse}
}

// Retryable reports whether the same request may succeed later unchanged.
func (e *Error) Retryable() bool {
	return errors.Is(e, ErrThrottled) || errors.Is(e, ErrUnavailable)
}

// fromSDK converts an error returned by the SDK into an *Error.
func fromSDK(op string, err error) error {
	if err == nil {
		return nil
	}
	var ge *Error
	if errors.As(err, &ge) {
		// Raised by our transport (throttled beyond the wait threshold,
		// transport failure): keep it, add the operation.
		cp := *ge
		if cp.Op == "" {
			cp.Op = op
		}
		return &cp
	}
	e := &Error{Op: op, err: err, Message: truncate(err.Error())}
	var oe *odataerrors.ODataError
	if errors.As(err, &oe) {
		e.Status = oe.ResponseStatusCode
		if main := oe.GetErrorEscaped(); main != nil {
			if c := main.GetCode(); c != nil {
				e.Code = *c
			}
			if m := main.GetMessage(); m != nil {
				e.Message = truncate(*m)
			}
			if in := main.GetInnerError(); in != nil {
				e.RequestID, e.ClientRequestID = deref(in.GetRequestId()), deref(in.GetClientRequestId())
			}
			for _, d := range main.GetDetails() {
				if d == nil {
					continue
				}
				e.Details = append(e.Details, Detail{Code: deref(d.GetCode()), Message: deref(d.GetMessage()), Target: deref(d.GetTarget())})
			}
		}
		if oe.ResponseHeaders != nil {
			e.RequestID = first(e.RequestID, oe.ResponseHeaders.Get("request-id"))
			e.ClientRequestID = first(e.ClientRequestID, oe.ResponseHeaders.Get("client-request-id"))
		}
		return classify(e)
	}
	var ae *abstractions.ApiError
	if errors.As(err, &ae) {
		e.Status = ae.ResponseStatusCode
		if ae.ResponseHeaders != nil {
			e.RequestID = first("", ae.ResponseHeaders.Get("request-id"))
			e.ClientRequestID = first("", ae.ResponseHeaders.Get("client-request-id"))
		}
	}
	return classify(e)
}

// first is have, or else the first of a header's values.
func first(have string, values []string) string {
	if have != "" || len(values) == 0 {
		return have
	}
	return values[0]
}

// graphError is the *Error of a Graph error answer: its status, its body
// ({"error":{"code","message","details"}}) and its Retry-After header.
func graphError(op string, status int, body []byte, retryAfter string) *Error {
	e := &Error{Op: op, Status: status}
	var b struct {
		Error struct {
			Code    string   `json:"code"`
			Message string   `json:"message"`
			Details []Detail `json:"details"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &b) == nil {
		e.Code, e.Message, e.Details = b.Error.Code, truncate(b.Error.Message), b.Error.Details
	}
	if ra, ok := parseRetryAfter(http.Header{"Retry-After": {retryAfter}}, time.Now()); ok {
		e.RetryAfter = ra
	}
	return classify(e)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

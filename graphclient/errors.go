package graphclient

import (
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
	ErrUnavailable  = errors.New("Graph unavailable")
)

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
	Details   []Detail
	// RetryAfter is the server's (or our pacer's) wait for throttled
	// requests.
	RetryAfter time.Duration
	// Hint is a readable explanation of what to do, when one is known.
	Hint string
	err  error
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

// Is matches the sentinels.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Status == http.StatusNotFound || e.Code == "Request_ResourceNotFound" || e.Code == "ResourceNotFound"
	case ErrConflict:
		if e.Status == http.StatusConflict {
			return true
		}
		for _, d := range e.Details {
			if d.Code == "ObjectConflict" {
				return true
			}
		}
		return strings.Contains(e.Message, "already exist")
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
		return e.Status >= 500 || (e.Status == 0 && e.err != nil && e.RetryAfter == 0)
	}
	return false
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
	e := &Error{Op: op, err: err, Message: err.Error()}
	var oe *odataerrors.ODataError
	if errors.As(err, &oe) {
		e.Status = oe.ResponseStatusCode
		if main := oe.GetErrorEscaped(); main != nil {
			if c := main.GetCode(); c != nil {
				e.Code = *c
			}
			if m := main.GetMessage(); m != nil {
				e.Message = *m
			}
			if in := main.GetInnerError(); in != nil && in.GetRequestId() != nil {
				e.RequestID = *in.GetRequestId()
			}
			for _, d := range main.GetDetails() {
				e.Details = append(e.Details, Detail{Code: deref(d.GetCode()), Message: deref(d.GetMessage()), Target: deref(d.GetTarget())})
			}
		}
		if e.RequestID == "" && oe.ResponseHeaders != nil {
			if v := oe.ResponseHeaders.Get("request-id"); len(v) > 0 {
				e.RequestID = v[0]
			}
		}
		return e
	}
	var ae *abstractions.ApiError
	if errors.As(err, &ae) {
		e.Status = ae.ResponseStatusCode
		if ae.ResponseHeaders != nil {
			if v := ae.ResponseHeaders.Get("request-id"); len(v) > 0 {
				e.RequestID = v[0]
			}
		}
	}
	return e
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

package handlers

import (
	"errors"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// fail builds a permanent failure carrying Graph's code and request id.
func fail(code, msg string, err error) error {
	je := &jobs.Error{Code: code, Message: msg}
	var ge *graphclient.Error
	if errors.As(err, &ge) {
		je.GraphCode, je.GraphRequestID, je.GraphClientRequestID = ge.Code, ge.RequestID, ge.ClientRequestID
	}
	return je
}

// classify turns a Graph error into the job's outcome: a retry (throttling,
// outages) or a readable permanent failure. what names the target for
// not-found errors ("user adele@contoso.com"). graphclient classifies
// Graph's answers; this only maps its sentinels to the action codes.
func classify(err error, notFoundCode, what string) error {
	if _, retry := worker.RetryAfterOf(err); retry || err == nil {
		return err
	}
	if out, ok := transient(err); ok {
		return out
	}
	if out := refusal(err, notFoundCode, what); out != nil {
		return out
	}
	if errors.Is(err, graphclient.ErrBadRequest) {
		return fail(CodeGraphRejected, "Graph refused the request: "+err.Error(), err)
	}
	return err
}

// transient maps the errors that retry (throttling, outages) and the
// credential failure, which no action can fix.
func transient(err error) (error, bool) {
	switch {
	case errors.Is(err, graphclient.ErrThrottled):
		wait := 5 * time.Second
		var ge *graphclient.Error
		if errors.As(err, &ge) && ge.RetryAfter > 0 {
			wait = ge.RetryAfter
		}
		return worker.RetryAfter(wait, err), true
	case errors.Is(err, graphclient.ErrAuth):
		return fail(CodeAuthFailed, err.Error(), err), true
	case errors.Is(err, graphclient.ErrUnavailable):
		return err, true // retried by attempts
	}
	return nil, false
}

// refusal maps Graph's permanent refusals to the action codes (nil for
// none of them).
func refusal(err error, notFoundCode, what string) error {
	switch {
	case errors.Is(err, graphclient.ErrNotFound):
		return fail(notFoundCode, what+" does not exist in the tenant", err)
	case errors.Is(err, graphclient.ErrForbidden):
		msg := "the app registration lacks a permission for this: grant User.ReadWrite.All and Group.ReadWrite.All (application) with admin consent"
		var ge *graphclient.Error
		if errors.As(err, &ge) && ge.Hint != "" {
			msg = ge.Hint
		}
		return fail(CodeInsufficientPrivileges, msg, err)
	case errors.Is(err, graphclient.ErrPasswordPolicy):
		return fail(CodePasswordPolicy, "the password does not meet the tenant's complexity rules (8 to 256 characters, three of: lower case, upper case, digits, symbols)", err)
	case errors.Is(err, graphclient.ErrUsageLocation):
		return fail(CodeUsageLocationMissing, what+" has no usage location: set usage_location (an ISO country code) with update_user first", err)
	case errors.Is(err, graphclient.ErrDynamicGroup):
		return fail(CodeDynamicGroup, what+" has rule-based (dynamic) membership: change its rule in Entra, not its members", err)
	case errors.Is(err, graphclient.ErrLicenseInherited):
		return fail(CodeLicenseFromGroup, "the licence is assigned to "+what+" through a group: remove the user from that group instead", err)
	case errors.Is(err, graphclient.ErrNoFreeSeat):
		return fail(CodeNoFreeSeat, "the subscription has no available licence for "+what, err)
	}
	return nil
}

package graphsim

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/tevyra/m365-worker/graphsim/metadata"
)

// The rules Graph's description states and the simulator enforces before an
// operation runs, each answered with Graph's status, code and message shape.
// The wording each rule stands on is in Microsoft's description
// (graphsim/metadata/v1.0.json, the property descriptions of msgraph-sdk-go)
// or in the API reference page named beside it.

// UPNAliasChars are the characters the userPrincipalName description allows
// in the alias: "Only the following characters are allowed A - Z, a - z,
// 0 - 9, ' . - _ ! # ^ ~."
const UPNAliasChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'.-_!#^~"

// GroupNicknameExcluded are the characters the group mailNickname
// description excludes from ASCII 0-127: "@ () / [] ' ; : <> , SPACE".
const GroupNicknameExcluded = "@()/[]';:<>, "

// refuse applies the description's rules to a request. It returns the
// refusal, or nil when Graph would take the request.
func (c *gctx) refuse(op string) *apiError {
	switch op {
	case "GET /groups/{id}/members":
		// group-list-members: $filter on members needs the advanced query
		// parameters, ConsistencyLevel: eventual and $count=true
		// (learn.microsoft.com/graph/api/group-list-members; the CSDL's
		// ReadRestrictions on members name the header, with
		// learn.microsoft.com/graph/aad-advanced-queries).
		if c.q.filter != nil && !(c.eventual() && c.q.count) {
			return newErr(400, "Request_UnsupportedQuery", "Unsupported Query. $filter on the members of a group requires the ConsistencyLevel header set to eventual and $count=true.")
		}
	case "POST /users", "PATCH /users/{id}":
		return c.refuseBody("user", func(m map[string]json.RawMessage) *apiError {
			return refuseUPN(m)
		})
	case "POST /groups":
		return c.refuseBody("group", refuseGroupNickname)
	case "PATCH /groups/{id}":
		return c.refuseBody("group", func(m map[string]json.RawMessage) *apiError {
			if e := refuseGroupNickname(m); e != nil {
				return e
			}
			// visibility: "HiddenMembership can be set only for Microsoft
			// 365 groups when the groups are created. It can't be updated
			// later."
			var v string
			if raw, ok := m["visibility"]; ok && json.Unmarshal(raw, &v) == nil && strings.EqualFold(v, "HiddenMembership") {
				return newErr(400, "Request_BadRequest", "Invalid value specified for property 'visibility' of resource 'Group'. HiddenMembership can be set only when a Microsoft 365 group is created.")
			}
			return nil
		})
	case "POST /users/{id}/assignLicense":
		return c.refuseParameters(metadata.V1.Actions["assignLicense"])
	}
	return nil
}

// refuseBody checks a body's properties against the type: each known to
// it, no null where the property is not nullable; then the value rules.
func (c *gctx) refuseBody(typeName string, rules func(map[string]json.RawMessage) *apiError) *apiError {
	var m map[string]json.RawMessage
	if json.Unmarshal(c.body, &m) != nil || m == nil {
		return nil // the operation answers malformed bodies
	}
	resource := strings.ToUpper(typeName[:1]) + typeName[1:]
	for k, raw := range m {
		if strings.Contains(k, "@") {
			continue // annotations and binds
		}
		p, ok := metadata.V1.Property(typeName, k)
		if !ok {
			return newErr(400, "Request_BadRequest", fmt.Sprintf("Property '%s' does not exist as a declared property or extension property.", k))
		}
		invalid := newErr(400, "Request_BadRequest", fmt.Sprintf("Invalid value specified for property '%s' of resource '%s'.", k, resource))
		if string(raw) == "null" {
			if p.NotNullable() {
				return invalid
			}
			continue
		}
		var v any
		_ = json.Unmarshal(raw, &v)
		bad := false
		checkValue(k, p.Type, v, metadata.Property.AcceptsNull, func(string, string, ...any) { bad = true })
		if bad {
			return invalid
		}
	}
	return rules(m)
}

// refuseParameters checks an action's body: known parameters, none null
// that is not nullable, and every non-nullable one given.
func (c *gctx) refuseParameters(a metadata.Action) *apiError {
	var m map[string]json.RawMessage
	if json.Unmarshal(c.body, &m) != nil || m == nil {
		return nil
	}
	for name, p := range a.Parameters {
		raw, ok := m[name]
		if !p.Nullable && (!ok || string(raw) == "null") {
			return newErr(400, "Request_BadRequest", fmt.Sprintf("The parameter '%s' in the request payload is not a valid parameter for the operation.", name))
		}
		var v any
		_ = json.Unmarshal(raw, &v)
		bad := false
		if v != nil {
			checkValue(name, p.Type, v, metadata.Property.AcceptsNull, func(string, string, ...any) { bad = true })
		}
		if bad {
			return newErr(400, "Request_BadRequest", fmt.Sprintf("Invalid value specified for parameter '%s'.", name))
		}
	}
	for k := range m {
		if _, ok := a.Parameters[k]; !ok {
			return newErr(400, "Request_BadRequest", fmt.Sprintf("The parameter '%s' in the request payload is not a valid parameter for the operation.", k))
		}
	}
	return nil
}

func refuseUPN(m map[string]json.RawMessage) *apiError {
	var upn string
	raw, ok := m["userPrincipalName"]
	if !ok || json.Unmarshal(raw, &upn) != nil {
		return nil
	}
	alias, _, _ := strings.Cut(upn, "@")
	for _, r := range alias {
		if !strings.ContainsRune(UPNAliasChars, r) {
			return newErr(400, "Request_BadRequest", "Property userPrincipalName is invalid. Only the following characters are allowed A - Z, a - z, 0 - 9, ' . - _ ! # ^ ~.")
		}
	}
	return nil
}

func refuseGroupNickname(m map[string]json.RawMessage) *apiError {
	var nick string
	raw, ok := m["mailNickname"]
	if !ok || json.Unmarshal(raw, &nick) != nil {
		return nil
	}
	for _, r := range nick {
		if r > 127 || strings.ContainsRune(GroupNicknameExcluded, r) {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'mailNickname' of resource 'Group'. It can contain only characters in the ASCII character set 0 - 127 except @ () / [] ' ; : <> , SPACE.")
		}
	}
	return nil
}

package jobs

import (
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"time"
)

// This file generates the JSON Schemas in schema/ from the Go types plus the
// constraints below, which mirror the Validate methods. TestSchemasUpToDate
// keeps the checked-in files equal to what it generates; TestSchemaAgreesWithGo
// checks that the schemas and the Go validation accept and refuse the same
// messages.

type obj = map[string]any

var (
	nonBlank  = obj{"type": "string", "minLength": 1, "pattern": `\S`}
	userRefS  = obj{"type": "string", "anyOf": []any{obj{"pattern": PatternGUID}, obj{"pattern": PatternUPN, "maxLength": 113}}}
	groupRefS = obj{"type": "string", "anyOf": []any{obj{"pattern": PatternGUID}, obj{"pattern": PatternGroupNickname}}}
	skuRefS   = obj{"type": "string", "anyOf": []any{obj{"pattern": PatternGUID}, obj{"pattern": PatternSKUPart}}}
	upnS      = obj{"type": "string", "pattern": PatternUPN, "maxLength": 113}
	nickS     = obj{"type": "string", "pattern": PatternNickname}
	gnickS    = obj{"type": "string", "pattern": PatternGroupNickname}
	visUpdS   = obj{"type": "string", "enum": []any{VisibilityPublic, VisibilityPrivate}}
	countryS  = obj{"type": "string", "enum": anySlice(CountryCodes())}
	xkeyS     = obj{"type": "string", "pattern": PatternXKey}
	visS      = obj{"type": "string", "enum": []any{VisibilityPublic, VisibilityPrivate, VisibilityHiddenMembership}}
)

func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func maxLenS(n int) obj { return obj{"maxLength": n} }

// fieldRules are keywords merged into a property's schema, by "Type.field".
var fieldRules = map[string]obj{
	"Job.schema_version":     {"const": SchemaVersion},
	"Job.id":                 {"minLength": 1, "maxLength": maxJobID, "pattern": `^[^\x00-\x20\x7f*>]+$`},
	"Job.instance":           {"pattern": tokenRE.String()},
	"Job.action":             {"enum": anySlice(Actions())},
	"SealedSecret.alg":       {"enum": []any{SealAlgBound, SealAlg}},
	"SealedSecret.recipient": {"pattern": PatternXKey},
	"SealedSecret.sender":    {"pattern": PatternXKey},
	"SealedSecret.box":       {"minLength": 1, "contentEncoding": "base64"},

	"UserRef.user":                         userRefS,
	"GroupRef.group":                       groupRefS,
	"MemberParams.member":                  userRefS,
	"PasswordOptions.reply_key":            xkeyS,
	"CreateUserParams.display_name":        merge(nonBlank, maxLenS(256)),
	"CreateUserParams.user_principal_name": upnS,
	"CreateUserParams.mail_nickname":       nickS,
	"CreateUserParams.given_name":          maxLenS(64),
	"CreateUserParams.surname":             maxLenS(64),
	"CreateUserParams.job_title":           maxLenS(128),
	"CreateUserParams.department":          maxLenS(64),
	"CreateUserParams.office_location":     maxLenS(128),
	"CreateUserParams.mobile_phone":        maxLenS(64),
	"CreateUserParams.usage_location":      countryS,
	"UpdateUserParams.display_name":        merge(nonBlank, maxLenS(256)),
	"UpdateUserParams.user_principal_name": upnS,
	"UpdateUserParams.mail_nickname":       nickS,
	"UpdateUserParams.given_name":          maxLenS(64),
	"UpdateUserParams.surname":             maxLenS(64),
	"UpdateUserParams.job_title":           maxLenS(128),
	"UpdateUserParams.department":          maxLenS(64),
	"UpdateUserParams.office_location":     maxLenS(128),
	"UpdateUserParams.mobile_phone":        maxLenS(64),
	"UpdateUserParams.usage_location":      countryS,
	"AssignLicenseParams.sku":              skuRefS,
	"AssignLicenseParams.disabled_plans":   {"uniqueItems": true, "items": obj{"anyOf": []any{obj{"pattern": PatternGUID}, obj{"pattern": PatternSKUPart}}}},
	"RemoveLicenseParams.sku":              skuRefS,
	"CreateGroupParams.display_name":       merge(nonBlank, maxLenS(256)),
	"CreateGroupParams.mail_nickname":      gnickS,
	"CreateGroupParams.description":        maxLenS(1024),
	"CreateGroupParams.group_type":         {"enum": []any{GroupTypeSecurity, GroupTypeMicrosoft365}},
	"CreateGroupParams.visibility":         visS,
	"CreateGroupParams.members":            {"maxItems": MaxCreateMembers, "items": userRefS},
	"UpdateGroupParams.display_name":       merge(nonBlank, maxLenS(256)),
	"UpdateGroupParams.mail_nickname":      gnickS,
	"UpdateGroupParams.description":        maxLenS(1024),
	"UpdateGroupParams.visibility":         visUpdS,

	"ActionResult.status":          {"enum": []any{StatusSucceeded, StatusFailed}},
	"ActionResult.schema_version":  {"const": SchemaVersion},
	"FailureRecord.schema_version": {"const": SchemaVersion},
	"AssetDelta.schema_version":    {"const": SchemaVersion},
	"Indicators.schema_version":    {"const": SchemaVersion},
	"SyncReport.schema_version":    {"const": SchemaVersion},
	"AssetDelta.type":              {"enum": []any{AssetUser, AssetGroup, AssetLicense}},
	"AssetDelta.mode":              {"enum": []any{ModeFull, ModeIncremental}},
	"AssetDelta.batch":             {"minimum": 1},
	"AssetChange.op":               {"enum": []any{OpUpsert, OpDelete, OpMembers}},
	"AssetChange.reason":           {"enum": []any{ReasonSoftDeleted, ReasonHardDeleted, ReasonMissingAfterFullSync}},
	"SyncReport.mode":              {"enum": []any{ModeFull, ModeIncremental}},
	"SyncReport.outcome":           {"enum": []any{OutcomeSucceeded, OutcomeFailed, OutcomeSkipped}},
	"CredentialState.kind":         {"enum": []any{CredentialClientSecret, CredentialCertificate, CredentialFederated}},
	"CredentialState.source":       {"enum": []any{ExpiryFromCertificate, ExpiryFromRecord, ExpiryFromGraph}},
}

// typeRules are keywords merged into a struct type's schema.
var typeRules = map[string]obj{
	"CreateUserParams":    {"oneOf": []any{obj{"required": []any{"password"}}, obj{"required": []any{"reply_key"}}}},
	"ResetPasswordParams": {"oneOf": []any{obj{"required": []any{"password"}}, obj{"required": []any{"reply_key"}}}},
	"UpdateUserParams":    {"minProperties": 2},
	"UpdateGroupParams":   {"minProperties": 2},
	"CreateGroupParams": {"if": obj{"properties": obj{"group_type": obj{"const": GroupTypeSecurity}}, "required": []any{"group_type"}},
		"then": obj{"not": obj{"required": []any{"visibility"}}}},
	"AssetChange": {"allOf": []any{
		obj{"if": obj{"properties": obj{"op": obj{"const": OpUpsert}}}, "then": obj{"required": []any{"asset"}, "not": obj{"required": []any{"reason"}}}},
		obj{"if": obj{"properties": obj{"op": obj{"const": OpDelete}}}, "then": obj{"required": []any{"reason"}, "not": obj{"required": []any{"asset"}}}},
		obj{"if": obj{"properties": obj{"op": obj{"const": OpMembers}}}, "then": obj{"required": []any{"asset"}, "not": obj{"required": []any{"reason"}}}},
	}},
}

func merge(ms ...obj) obj {
	out := obj{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

type gen struct {
	defs obj
}

var (
	timeType = reflect.TypeOf(time.Time{})
	rawType  = reflect.TypeOf(json.RawMessage{})
)

// schemaOf returns the schema of t; named structs go to $defs.
func (g *gen) schemaOf(t reflect.Type) obj {
	nullable := false
	if t.Kind() == reflect.Pointer {
		nullable = true
		t = t.Elem()
	}
	var s obj
	switch {
	case t == timeType:
		s = obj{"type": "string", "format": "date-time"}
	case t == rawType:
		s = obj{}
	case t.Kind() == reflect.Struct:
		name := t.Name()
		if _, ok := g.defs[name]; !ok {
			g.defs[name] = obj{} // placeholder against recursion
			g.defs[name] = g.structSchema(t)
		}
		s = obj{"$ref": "#/$defs/" + name}
	case t.Kind() == reflect.String:
		s = obj{"type": "string"}
	case t.Kind() == reflect.Bool:
		s = obj{"type": "boolean"}
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		s = obj{"type": "integer"}
	case t.Kind() == reflect.Uint64:
		s = obj{"type": "integer", "minimum": 0}
	case t.Kind() == reflect.Slice:
		s = obj{"type": []any{"array", "null"}, "items": g.schemaOf(t.Elem())}
	case t.Kind() == reflect.Map:
		s = obj{"type": "object", "additionalProperties": g.schemaOf(t.Elem())}
	default:
		panic("schema: unsupported type " + t.String())
	}
	if nullable {
		if typ, ok := s["type"].(string); ok {
			s["type"] = []any{typ, "null"}
		} else if _, ok := s["$ref"]; ok {
			s = obj{"anyOf": []any{s, obj{"type": "null"}}}
		}
	}
	return s
}

func (g *gen) structSchema(t reflect.Type) obj {
	props := obj{}
	var req []string
	for _, sf := range reflect.VisibleFields(t) {
		if sf.Anonymous || !sf.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		ps := g.schemaOf(sf.Type)
		owner := t
		if len(sf.Index) > 1 {
			owner = t.FieldByIndex(sf.Index[:len(sf.Index)-1]).Type
		}
		if r, ok := fieldRules[owner.Name()+"."+name]; ok {
			ps = merge(ps, r)
		} else if r, ok := fieldRules[t.Name()+"."+name]; ok {
			ps = merge(ps, r)
		}
		props[name] = ps
		if !strings.Contains(opts, "omitempty") && sf.Type.Kind() != reflect.Pointer {
			req = append(req, name)
		}
	}
	sort.Strings(req)
	s := obj{"type": "object", "properties": props, "additionalProperties": false}
	if len(req) > 0 {
		s["required"] = anySlice(req)
	}
	return merge(s, typeRules[t.Name()])
}

// messageSchemas are the top-level schemas, by file stem.
func messageSchemas() map[string]obj {
	top := map[string]reflect.Type{
		"job":            reflect.TypeOf(Job{}),
		"action_result":  reflect.TypeOf(ActionResult{}),
		"failure_record": reflect.TypeOf(FailureRecord{}),
		"asset_delta":    reflect.TypeOf(AssetDelta{}),
		"indicators":     reflect.TypeOf(Indicators{}),
		"sync_report":    reflect.TypeOf(SyncReport{}),
	}
	out := map[string]obj{}
	for stem, t := range top {
		g := &gen{defs: obj{}}
		root := g.structSchema(t)
		switch stem {
		case "job":
			// params are checked by action.
			var branches []any
			for _, a := range Actions() {
				pt := reflect.TypeOf(actionSpecs[a].NewParams()).Elem()
				ref := g.schemaOf(pt)
				// Absent or null params read as {}: allowed only when {}
				// is valid params for the action.
				then := obj{"properties": obj{"params": obj{"anyOf": []any{ref, obj{"type": "null"}}}}}
				if DecodeParams(json.RawMessage(`{}`), actionSpecs[a].NewParams()) != nil {
					then = obj{"properties": obj{"params": ref}, "required": []any{"params"}}
				}
				branches = append(branches, obj{
					"if":   obj{"properties": obj{"action": obj{"const": a}}, "required": []any{"action"}},
					"then": then,
				})
			}
			root["allOf"] = branches
		case "asset_delta":
			// the asset record follows the delta's type.
			recs := map[string]reflect.Type{AssetUser: reflect.TypeOf(UserAsset{}), AssetGroup: reflect.TypeOf(GroupAsset{}), AssetLicense: reflect.TypeOf(LicenseAsset{})}
			var branches []any
			for _, at := range []string{AssetUser, AssetGroup, AssetLicense} {
				ref := g.schemaOf(recs[at])
				branches = append(branches, obj{
					"if":   obj{"properties": obj{"type": obj{"const": at}}, "required": []any{"type"}},
					"then": obj{"properties": obj{"changes": obj{"items": obj{"properties": obj{"asset": ref}}}}},
				})
			}
			root["allOf"] = branches
		}
		doc := merge(obj{
			"$schema": "https://json-schema.org/draft/2020-12/schema",
			"$id":     SchemaBaseURI + stem + ".schema.json",
			"title":   "m365-worker " + strings.ReplaceAll(stem, "_", " "),
		}, root)
		if len(g.defs) > 0 {
			doc["$defs"] = g.defs
		}
		out[stem] = doc
	}
	return out
}

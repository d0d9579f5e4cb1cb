package jobs

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"
)

// FieldError is one bad field of a job.
type FieldError struct {
	// Field is the JSON path of the field, e.g. "params.user_principal_name".
	Field string `json:"field"`
	// Problem says what is wrong, e.g. "is required".
	Problem string `json:"problem"`
}

// ValidationError collects every bad field of a job. The first problem found
// for a field wins; later ones for the same field are dropped.
type ValidationError struct {
	Fields []FieldError
}

// Add records a problem with field, unless that field already has one.
func (v *ValidationError) Add(field, problem string) {
	if v.Has(field) {
		return
	}
	v.Fields = append(v.Fields, FieldError{Field: field, Problem: problem})
}

// Has reports whether field already has a problem.
func (v *ValidationError) Has(field string) bool {
	for _, f := range v.Fields {
		if f.Field == field {
			return true
		}
	}
	return false
}

// Summary joins the problems in one line, sorted by field.
func (v *ValidationError) Summary() string {
	fs := append([]FieldError(nil), v.Fields...)
	sort.SliceStable(fs, func(i, j int) bool { return fs[i].Field < fs[j].Field })
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = f.Field + " " + f.Problem
	}
	return strings.Join(parts, "; ")
}

func (v *ValidationError) Error() string { return v.Summary() }

// decodeFields sets the fields of the struct pointed to by dst from m, by
// their json tags. Unknown keys and values of the wrong type are recorded in
// ve under prefix+key; the rest are decoded.
func decodeFields(m map[string]json.RawMessage, dst any, prefix string, ve *ValidationError) {
	rv := reflect.ValueOf(dst).Elem()
	rt := rv.Type()
	byName := map[string][]int{}
	for _, sf := range reflect.VisibleFields(rt) {
		if sf.Anonymous || !sf.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			byName[name] = sf.Index
		}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		idx, ok := byName[k]
		if !ok {
			ve.Add(prefix+k, "is not a known field")
			continue
		}
		f := rv.FieldByIndex(idx)
		if err := json.Unmarshal(m[k], f.Addr().Interface()); err != nil {
			ve.Add(prefix+k, "must be "+describeType(f.Type()))
			f.Set(reflect.Zero(f.Type()))
		}
	}
}

func describeType(t reflect.Type) string {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint64:
		return "an integer"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(describeType(t.Elem()), "a ") + "s"
	case reflect.Struct:
		if t == reflect.TypeOf(SealedSecret{}) {
			return "a sealed secret object {alg, recipient, sender, box}"
		}
		return "an object"
	}
	return "a valid " + t.Kind().String()
}

var (
	guidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	// upnRE: alias@domain, the alias without leading, trailing or doubled
	// dots, the domain a dotted DNS name. '#' is allowed for guests
	// (alias_contoso.com#EXT#@tenant.onmicrosoft.com).
	upnRE       = regexp.MustCompile(`^[A-Za-z0-9'_!#^~&$%+\-]+(\.[A-Za-z0-9'_!#^~&$%+\-]+)*@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$`)
	skuPartRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$`)
	planNameRE  = skuPartRE
	nicknameBad = `@()\[]";:<>, `
)

// PatternGUID, PatternUPN and the other Pattern constants are the regular
// expressions the JSON Schemas use; they accept what the Go checks accept.
const (
	PatternGUID     = `^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`
	PatternUPN      = `^[A-Za-z0-9'_!#^~&$%+\-]+(\.[A-Za-z0-9'_!#^~&$%+\-]+)*@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$`
	PatternSKUPart  = `^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$`
	PatternNickname = `^[!#-'*-+\--9=?A-Z^-~]{1,64}$`
	PatternXKey     = `^X[A-Z2-7]{55}$`
)

var xkeyRE = regexp.MustCompile(PatternXKey)

// IsGUID reports whether s is a GUID (a Graph object id or skuId).
func IsGUID(s string) bool { return guidRE.MatchString(s) }

// IsUPN reports whether s is a user principal name.
func IsUPN(s string) bool { return len(s) <= 113 && upnRE.MatchString(s) }

// IsMailNickname reports whether s is a valid mailNickname: 1 to 64 ASCII
// characters without @ ( ) \ [ ] " ; : < > , or space.
func IsMailNickname(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e || strings.ContainsRune(nicknameBad, r) {
			return false
		}
	}
	return true
}

// checkers used by the Validate methods.

func required(ve *ValidationError, field, v string) bool {
	if strings.TrimSpace(v) == "" {
		ve.Add(field, "is required")
		return false
	}
	return true
}

func maxLen(ve *ValidationError, field, v string, n int) {
	if utf8.RuneCountInString(v) > n {
		ve.Add(field, fmt.Sprintf("must be at most %d characters", n))
	}
}

// userRef checks a reference to a user: an object id or a UPN.
func userRef(ve *ValidationError, field, v string) {
	if required(ve, field, v) && !IsGUID(v) && !IsUPN(v) {
		ve.Add(field, "must be a user object id (GUID) or a user principal name (alias@domain)")
	}
}

// groupRef checks a reference to a group: an object id or a mail nickname.
func groupRef(ve *ValidationError, field, v string) {
	if required(ve, field, v) && !IsGUID(v) && !IsMailNickname(v) {
		ve.Add(field, "must be a group object id (GUID) or a mail nickname")
	}
}

// skuRef checks a licence reference: a skuId or a skuPartNumber.
func skuRef(ve *ValidationError, field, v string) {
	if required(ve, field, v) && !IsGUID(v) && !skuPartRE.MatchString(v) {
		ve.Add(field, "must be a skuId (GUID) or a skuPartNumber such as ENTERPRISEPACK")
	}
}

func upn(ve *ValidationError, field, v string) {
	if required(ve, field, v) && !IsUPN(v) {
		ve.Add(field, "must be a user principal name: alias@verified-domain, e.g. adele@contoso.com")
	}
}

func nickname(ve *ValidationError, field, v string) {
	if !IsMailNickname(v) {
		ve.Add(field, `must be 1 to 64 ASCII characters without spaces or any of @ ( ) \ [ ] " ; : < > ,`)
	}
}

func usageLocation(ve *ValidationError, field, v string) {
	if !IsCountryCode(v) {
		ve.Add(field, "must be an ISO 3166-1 alpha-2 country code in capitals, e.g. US, GB, DE")
	}
}

func xkey(ve *ValidationError, field, v string) {
	if !xkeyRE.MatchString(v) {
		ve.Add(field, "must be a curve (xkey) public key: 56 characters starting with X")
	}
}

func oneOf(ve *ValidationError, field, v string, allowed ...string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	ve.Add(field, "must be one of "+strings.Join(allowed, ", "))
	return false
}

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

// ValidationError collects the problems of a job's fields. The first problem
// found for a field wins; later ones for the same field are dropped. Fields
// lists at most MaxFieldErrors problems, problems with known fields before
// unknown keys; the others are counted (see Omitted) and Summary says how
// many. Field names are clipped to MaxFieldNameLen and problems to
// MaxProblemLen. Record problems with Add: Has and Add take constant time.
type ValidationError struct {
	// Fields is for reading; record problems with Add.
	Fields []FieldError

	names []string            // names[i] is Fields[i].Field as given to Add
	seen  map[string]struct{} // every field given a problem, listed or not
	// moreUnknown and moreOther count the problems left out of Fields.
	moreUnknown, moreOther int
}

// problemUnknownField is the problem of a key that names no field. Such
// problems are the only ones whose number the input controls, so they give
// way to the others when Fields is full.
const problemUnknownField = "is not a known field"

// Add records a problem with field, unless that field already has one.
func (v *ValidationError) Add(field, problem string) {
	if v.Has(field) {
		return
	}
	v.seen[field] = struct{}{}
	problem = clip(problem, MaxProblemLen)
	if len(v.Fields) >= MaxFieldErrors {
		i := -1
		if problem != problemUnknownField {
			for j := len(v.Fields) - 1; j >= 0 && i < 0; j-- {
				if v.Fields[j].Problem == problemUnknownField {
					i = j
				}
			}
		}
		if i < 0 {
			v.count(problem)
			return
		}
		// Make room by leaving out the last unknown key listed: unknown
		// keys come sorted, so the first ones stay listed.
		v.count(v.Fields[i].Problem)
		v.Fields = append(v.Fields[:i], v.Fields[i+1:]...)
		v.names = append(v.names[:i], v.names[i+1:]...)
	}
	v.Fields = append(v.Fields, FieldError{Field: clipName(field), Problem: problem})
	v.names = append(v.names, field)
}

func (v *ValidationError) count(problem string) {
	if problem == problemUnknownField {
		v.moreUnknown++
	} else {
		v.moreOther++
	}
}

// Has reports whether field already has a problem.
func (v *ValidationError) Has(field string) bool {
	if v.seen == nil || len(v.names) != len(v.Fields) {
		// First use, or Fields was set directly.
		if v.seen == nil {
			v.seen = make(map[string]struct{}, len(v.Fields))
		}
		v.names = v.names[:0]
		for _, f := range v.Fields {
			v.names = append(v.names, f.Field)
			v.seen[f.Field] = struct{}{}
		}
	}
	_, ok := v.seen[field]
	return ok
}

// Omitted counts the problems recorded but not listed in Fields.
func (v *ValidationError) Omitted() int { return v.moreUnknown + v.moreOther }

// Summary joins the problems in one line of at most MaxMessageLen bytes,
// sorted by field, and counts those it leaves out: "k1 is not a known
// field; user is required; … and 11,980 more unknown keys".
func (v *ValidationError) Summary() string {
	if v == nil {
		return ""
	}
	return v.summary(MaxMessageLen)
}

// summaryTail is room for the count of problems left out.
const summaryTail = len("; … and 999,999,999,999 more unknown keys and 999,999,999,999 more problems")

func (v *ValidationError) summary(limit int) string {
	fs := append([]FieldError(nil), v.Fields...)
	sort.SliceStable(fs, func(i, j int) bool { return fs[i].Field < fs[j].Field })
	unknown, other := v.moreUnknown, v.moreOther
	var b strings.Builder
	for i, f := range fs {
		part := clipName(f.Field) + " " + clip(f.Problem, MaxProblemLen)
		if i > 0 {
			part = "; " + part
		}
		if b.Len()+len(part) > limit-summaryTail {
			for _, g := range fs[i:] {
				if g.Problem == problemUnknownField {
					unknown++
				} else {
					other++
				}
			}
			break
		}
		b.WriteString(part)
	}
	if unknown+other > 0 {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString("… and ")
		if unknown > 0 {
			b.WriteString(countOf(unknown, "more unknown key", "more unknown keys"))
			if other > 0 {
				b.WriteString(" and ")
			}
		}
		if other > 0 {
			b.WriteString(countOf(other, "more problem", "more problems"))
		}
	}
	return b.String()
}

func (v *ValidationError) Error() string { return v.Summary() }

// jobError turns the problems into an *Error with code, its message lead
// followed by the summary; prefix is prepended to every field but "params".
// Fields are sorted as in the message.
func (v *ValidationError) jobError(code, lead, prefix string) *Error {
	fields := make([]FieldError, len(v.Fields))
	for i, f := range v.Fields {
		if prefix != "" && f.Field != "params" {
			f.Field = clipName(prefix + f.Field)
		}
		fields[i] = f
	}
	sort.SliceStable(fields, func(i, j int) bool { return fields[i].Field < fields[j].Field })
	all := ValidationError{Fields: fields, moreUnknown: v.moreUnknown, moreOther: v.moreOther}
	return &Error{Code: code, Message: lead + all.summary(MaxMessageLen-len(lead)), Fields: fields}
}

// decodeFields sets the fields of the struct pointed to by dst from m, by
// their json tags. Unknown keys and values of the wrong type are recorded in
// ve under prefix+key; the rest are decoded.
func decodeFields(m map[string]json.RawMessage, dst any, prefix string, ve *ValidationError) {
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		field := strings.TrimSuffix(prefix, ".")
		if field == "" {
			field = "value"
		}
		ve.Add(field, fmt.Sprintf("cannot be decoded into %T", dst))
		return
	}
	rv = rv.Elem()
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
			ve.Add(prefix+k, problemUnknownField)
			continue
		}
		f, ok := settableField(rv, idx)
		if !ok {
			ve.Add(prefix+k, "cannot be decoded")
			continue
		}
		if err := json.Unmarshal(m[k], f.Addr().Interface()); err != nil {
			ve.Add(prefix+k, "must be "+describeType(f.Type()))
			f.Set(reflect.Zero(f.Type()))
		}
	}
}

// settableField is rv.FieldByIndex(index), allocating nil embedded
// pointers on the way instead of panicking; ok is false when the field
// cannot be set (behind an unexported embedded pointer).
func settableField(rv reflect.Value, index []int) (f reflect.Value, ok bool) {
	f = rv
	for i, x := range index {
		if i > 0 && f.Kind() == reflect.Pointer {
			if f.IsNil() {
				if !f.CanSet() {
					return reflect.Value{}, false
				}
				f.Set(reflect.New(f.Type().Elem()))
			}
			f = f.Elem()
		}
		f = f.Field(x)
	}
	return f, f.CanSet()
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
	// upnRE: alias@domain, the alias of the characters userPrincipalName's
	// description allows ("Only the following characters are allowed A - Z,
	// a - z, 0 - 9, ' . - _ ! # ^ ~"), without leading, trailing or doubled
	// dots, the domain a dotted DNS name. '#' also makes guests' UPNs
	// (alias_contoso.com#EXT#@tenant.onmicrosoft.com).
	upnRE       = regexp.MustCompile(PatternUPN)
	skuPartRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$`)
	planNameRE  = skuPartRE
	nicknameBad = `@()\[]";:<>, `
	// groupNicknameBad: a group's mailNickname "can contain only characters
	// in the ASCII character set 0 - 127 except the following characters:
	// @ () / [] ' ; : <> , SPACE" (its description).
	groupNicknameBad = `@()/[]';:<>, `
)

// PatternGUID, PatternUPN and the other Pattern constants are the regular
// expressions the JSON Schemas use; they accept what the Go checks accept.
const (
	PatternGUID     = `^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`
	PatternUPN      = `^[A-Za-z0-9'_!#^~\-]+(\.[A-Za-z0-9'_!#^~\-]+)*@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$`
	PatternSKUPart  = `^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$`
	PatternNickname = `^[!#-'*-+\--9=?A-Z^-~]{1,64}$`
	// PatternGroupNickname: printable ASCII without @ ( ) / [ ] ' ; : < > ,
	// or space.
	PatternGroupNickname = `^[!-&*-+\--.0-9=?A-Z\\^-~]{1,64}$`
	PatternXKey          = `^X[A-Z2-7]{55}$`
)

var xkeyRE = regexp.MustCompile(PatternXKey)

// IsGUID reports whether s is a GUID (a Graph object id or skuId).
func IsGUID(s string) bool { return guidRE.MatchString(s) }

// IsUPN reports whether s is a user principal name.
func IsUPN(s string) bool { return len(s) <= 113 && upnRE.MatchString(s) }

// IsMailNickname reports whether s is a valid mailNickname: 1 to 64 ASCII
// characters without @ ( ) \ [ ] " ; : < > , or space.
func IsMailNickname(s string) bool { return printableWithout(s, nicknameBad) }

// printableWithout reports whether s is 1 to 64 printable ASCII characters
// none of which is in bad.
func printableWithout(s, bad string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e || strings.ContainsRune(bad, r) {
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

// IsGroupMailNickname reports whether s is a valid mailNickname for a group:
// 1 to 64 printable ASCII characters without @ ( ) / [ ] ' ; : < > , or
// space (the group mailNickname description).
func IsGroupMailNickname(s string) bool { return printableWithout(s, groupNicknameBad) }

// userRef checks a reference to a user: an object id or a UPN.
func userRef(ve *ValidationError, field, v string) {
	if required(ve, field, v) && !IsGUID(v) && !IsUPN(v) {
		ve.Add(field, "must be a user object id (GUID) or a user principal name (alias@domain)")
	}
}

// groupRef checks a reference to a group: an object id or a mail nickname.
func groupRef(ve *ValidationError, field, v string) {
	if required(ve, field, v) && !IsGUID(v) && !IsGroupMailNickname(v) {
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
		ve.Add(field, "must be a user principal name: alias@verified-domain, e.g. adele@contoso.com; Graph allows only A - Z, a - z, 0 - 9, ' . - _ ! # ^ ~ in the alias")
	}
}

func nickname(ve *ValidationError, field, v string) {
	if !IsMailNickname(v) {
		ve.Add(field, `must be 1 to 64 ASCII characters without spaces or any of @ ( ) \ [ ] " ; : < > ,`)
	}
}

func groupNickname(ve *ValidationError, field, v string) {
	if !IsGroupMailNickname(v) {
		ve.Add(field, `must be 1 to 64 characters in the ASCII character set 0 - 127 except @ () / [] ' ; : <> , SPACE (Graph's rule for a group's mailNickname)`)
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

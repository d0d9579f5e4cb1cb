package graphsim

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// queryOpts are the OData query options of a request.
type queryOpts struct {
	selects   []string
	hasSelect bool
	hasExpand bool
	top       int
	count     bool
	filter    *filterExpr
	skipToken string
	deltaTok  string
	hasDelta  bool
	search    string
	orderby   string
}

func parseQuery(q url.Values) (queryOpts, *apiError) {
	var o queryOpts
	for k := range q {
		switch k {
		case "$select", "$top", "$count", "$filter", "$skiptoken", "$deltatoken", "$expand", "$search", "$orderby":
		case "$skip":
			return o, newErr(400, "Request_BadRequest", "'$skip' is not supported by the service.")
		default:
			if strings.HasPrefix(k, "$") {
				return o, newErr(400, "BadRequest", fmt.Sprintf("Query option '%s' is not allowed.", k))
			}
		}
	}
	if s := q.Get("$select"); s != "" {
		o.hasSelect = true
		for _, p := range strings.Split(s, ",") {
			o.selects = append(o.selects, strings.TrimSpace(p))
		}
	}
	if q.Has("$expand") {
		o.hasExpand = true
	}
	if t := q.Get("$top"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 1 || n > 999 {
			return o, newErr(400, "Request_UnsupportedQuery", "Invalid page size specified: '"+t+"'. Must be between 1 and 999 inclusive.")
		}
		o.top = n
	}
	if c := q.Get("$count"); c != "" {
		o.count = strings.EqualFold(c, "true")
	}
	if f := q.Get("$filter"); f != "" {
		fe, err := parseFilter(f)
		if err != nil {
			return o, newErr(400, "Request_UnsupportedQuery", "Unsupported or invalid query filter clause specified for property '"+f+"' of resource.")
		}
		o.filter = fe
	}
	o.skipToken = q.Get("$skiptoken")
	o.deltaTok, o.hasDelta = q.Get("$deltatoken"), q.Has("$deltatoken")
	o.search = q.Get("$search")
	o.orderby = q.Get("$orderby")
	return o, nil
}

// filterExpr is a disjunction of conjunctions of terms.
type filterExpr struct {
	or [][]filterTerm
}

type filterTerm struct {
	op    string // eq, ne, startswith, endswith, count_ne, count_eq
	prop  string
	value any // string, bool, nil or int
}

var (
	reCmp   = regexp.MustCompile(`^([A-Za-z/$]+)\s+(eq|ne)\s+('(?:[^']|'')*'|true|false|null|-?\d+)$`)
	reFunc  = regexp.MustCompile(`^(startswith|endswith)\(\s*([A-Za-z]+)\s*,\s*('(?:[^']|'')*')\s*\)$`)
	reSplit = regexp.MustCompile(`\s+(and|or)\s+`)
)

func parseFilter(s string) (*filterExpr, error) {
	s = strings.TrimSpace(s)
	// Split on and/or outside quotes.
	var parts []string
	var ops []string
	inQ := false
	last := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			inQ = !inQ
			continue
		}
		if inQ {
			continue
		}
		if loc := reSplit.FindStringIndex(s[i:]); loc != nil && loc[0] == 0 {
			parts = append(parts, s[last:i])
			ops = append(ops, strings.TrimSpace(s[i+loc[0]:i+loc[1]]))
			i += loc[1] - 1
			last = i + 1
		}
	}
	parts = append(parts, s[last:])
	fe := &filterExpr{}
	cur := []filterTerm{}
	for i, p := range parts {
		t, err := parseTerm(strings.TrimSpace(p))
		if err != nil {
			return nil, err
		}
		cur = append(cur, t)
		if i == len(parts)-1 || ops[i] == "or" {
			fe.or = append(fe.or, cur)
			cur = []filterTerm{}
		}
	}
	return fe, nil
}

func parseTerm(s string) (filterTerm, error) {
	if m := reFunc.FindStringSubmatch(s); m != nil {
		return filterTerm{op: m[1], prop: m[2], value: unquote(m[3])}, nil
	}
	if m := reCmp.FindStringSubmatch(s); m != nil {
		t := filterTerm{op: m[2], prop: m[1]}
		switch v := m[3]; {
		case v == "true" || v == "false":
			t.value = v == "true"
		case v == "null":
			t.value = nil
		case strings.HasPrefix(v, "'"):
			t.value = unquote(v)
		default:
			n, _ := strconv.Atoi(v)
			t.value = n
		}
		if strings.HasSuffix(t.prop, "/$count") {
			t.op = "count_" + t.op
			t.prop = strings.TrimSuffix(t.prop, "/$count")
		}
		return t, nil
	}
	return filterTerm{}, fmt.Errorf("unsupported filter term %q", s)
}

func unquote(s string) string { return strings.ReplaceAll(s[1:len(s)-1], "''", "'") }

// advanced reports whether the filter needs ConsistencyLevel: eventual.
func (f *filterExpr) advanced() bool {
	for _, c := range f.or {
		for _, t := range c {
			if t.op == "ne" || t.op == "endswith" || strings.HasPrefix(t.op, "count_") {
				return true
			}
		}
	}
	return false
}

// match evaluates the filter against an object's properties, read through
// get (one property at a time, so no full record is built).
func (f *filterExpr) match(get func(prop string) any) bool {
	for _, c := range f.or {
		ok := true
		for _, t := range c {
			if !t.match(get) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// matchID is match for the object id of a collection, its properties read
// through get, and its string properties through text when it has them
// (nil: none): a list scans every object of a large tenant, and neither
// a closure per object nor a string boxed per property is free.
func (f *filterExpr) matchID(id string, get func(id, prop string) any, text func(id, prop string) (string, bool)) bool {
	for _, c := range f.or {
		ok := true
		for _, t := range c {
			if !t.matchID(id, get, text) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func (t filterTerm) matchID(id string, get func(id, prop string) any, text func(id, prop string) (string, bool)) bool {
	if text != nil && (t.op == "startswith" || t.op == "endswith") {
		if s, ok := text(id, t.prop); ok {
			return t.matchValue(s)
		}
	}
	return t.matchValue(get(id, t.prop))
}

func (t filterTerm) match(get func(prop string) any) bool { return t.matchValue(get(t.prop)) }

func (t filterTerm) matchValue(v any) bool {
	switch t.op {
	case "count_ne", "count_eq":
		n := 0
		switch arr := v.(type) {
		case []any:
			n = len(arr)
		case []map[string]any:
			n = len(arr)
		}
		want, _ := t.value.(int)
		return (n == want) == (t.op == "count_eq")
	case "startswith", "endswith":
		s, ok := v.(string)
		p, _ := t.value.(string)
		if !ok || len(s) < len(p) {
			return false
		}
		if t.op == "startswith" {
			return strings.EqualFold(s[:len(p)], p)
		}
		return strings.EqualFold(s[len(s)-len(p):], p)
	}
	eq := false
	switch want := t.value.(type) {
	case string:
		s, ok := v.(string)
		eq = ok && strings.EqualFold(s, want)
	case bool:
		b, ok := v.(bool)
		eq = ok && b == want
	case nil:
		eq = v == nil
	}
	if t.op == "ne" {
		return !eq
	}
	return eq
}

// idList returns the ids of an "id eq 'a' or id eq 'b'" filter, for delta.
func (f *filterExpr) idList() ([]string, bool) {
	var ids []string
	for _, c := range f.or {
		if len(c) != 1 || c[0].prop != "id" || c[0].op != "eq" {
			return nil, false
		}
		s, ok := c[0].value.(string)
		if !ok {
			return nil, false
		}
		ids = append(ids, s)
	}
	return ids, true
}

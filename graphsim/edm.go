package graphsim

import (
	"fmt"
	"strings"
	"time"

	"github.com/tevyra/m365-worker/graphsim/metadata"
)

// checkValue checks a decoded JSON value against an Edm type or a structured
// type of the description, calling fail for each mismatch: a wrong JSON
// kind, a malformed GUID or date, a property the type lacks, a null where
// nullable says no.
func checkValue(where, typ string, v any, nullable func(metadata.Property) bool, fail func(rule, format string, args ...any)) {
	if inner, ok := strings.CutPrefix(typ, "Collection("); ok {
		arr, isArr := v.([]any)
		if !isArr {
			fail("type", "%s is %T, want %s", where, v, typ)
			return
		}
		for _, x := range arr {
			checkValue(where+"[]", strings.TrimSuffix(inner, ")"), x, nullable, fail)
		}
		return
	}
	ok := true
	switch typ {
	case "Edm.String":
		_, ok = v.(string)
	case "Edm.Guid":
		s, isStr := v.(string)
		ok = isStr && guidRE.MatchString(s)
	case "Edm.DateTimeOffset":
		s, isStr := v.(string)
		_, err := time.Parse(time.RFC3339, s)
		ok = isStr && err == nil
	case "Edm.Boolean":
		_, ok = v.(bool)
	case "Edm.Int32", "Edm.Int64":
		f, isNum := v.(float64)
		ok = isNum && f == float64(int64(f))
	default:
		name := strings.TrimPrefix(typ, "graph.")
		if _, known := metadata.V1.Types[name]; !known {
			return // a type outside the trimmed description: not checked
		}
		obj, isObj := v.(map[string]any)
		if !isObj {
			ok = false
			break
		}
		for k, x := range obj {
			p, found := metadata.V1.Property(name, k)
			switch {
			case !found:
				fail("property", "%s: %q is not a property of microsoft.graph.%s", where, k, name)
			case x == nil && !nullable(p):
				fail("nullability", "%s.%s is null; it is not nullable", where, k)
			case x != nil:
				checkValue(where+"."+k, p.Type, x, nullable, fail)
			}
		}
	}
	if !ok {
		fail("type", "%s is %s, want %s", where, short(v), typ)
	}
}

// short renders a value for a message, cut to 40 characters.
func short(v any) string {
	s := fmt.Sprintf("%v", v)
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return s
}

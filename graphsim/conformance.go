package graphsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/tevyra/m365-worker/graphsim/metadata"
)

// Conformance checks, when Options.Conformance is set, every Graph request
// the simulator receives and every answer it gives against Microsoft's
// description of Graph v1.0 (graphsim/metadata): the operation, the query
// options with their ConsistencyLevel rules, body properties with their
// types and nullability and the value rules of their descriptions; in
// answers, property names and types, the default set against $select,
// delta's omissions, @odata.type, @odata.context and the error shape.
// Requests Graph would refuse are refused (rules.go) and recorded;
// everything else is recorded for the test that caused it (graphsimtest).

// Violation is one request or answer outside Graph's description.
type Violation struct {
	Operation string `json:"operation"` // GET /groups/{id}/members
	Side      string `json:"side"`      // request or answer
	Rule      string `json:"rule"`
	Detail    string `json:"detail"`
}

func (v Violation) String() string {
	return fmt.Sprintf("%s %s: %s: %s", v.Operation, v.Side, v.Rule, v.Detail)
}

// ConformanceReport is what the checks saw.
type ConformanceReport struct {
	Requests   int64       `json:"requests"`
	Answers    int64       `json:"answers"`
	Operations []string    `json:"operations"`
	Values     int64       `json:"values"` // property values checked
	Violations []Violation `json:"violations,omitempty"`
}

type conformance struct {
	mu                        sync.Mutex
	requests, answers, values int64
	ops                       map[string]bool
	violations                []Violation
	onViolation               func(Violation)
}

// Conformance reports what the checks saw so far.
func (s *Server) Conformance() ConformanceReport {
	k := &s.conf
	k.mu.Lock()
	defer k.mu.Unlock()
	r := ConformanceReport{Requests: k.requests, Answers: k.answers, Values: k.values, Violations: append([]Violation(nil), k.violations...)}
	for op := range k.ops {
		r.Operations = append(r.Operations, op)
	}
	sort.Strings(r.Operations)
	return r
}

func (k *conformance) add(v Violation) {
	k.mu.Lock()
	if len(k.violations) < 1000 {
		k.violations = append(k.violations, v)
	}
	k.mu.Unlock()
	if k.onViolation != nil {
		k.onViolation(v)
	}
}

// keywords are path segments that name themselves; any other is an id.
var keywords = map[string]bool{"users": true, "groups": true, "$count": true, "delta": true, "delta()": true, "members": true, "$ref": true,
	"assignLicense": true, "microsoft.graph.assignLicense": true, "subscribedSkus": true, "directory": true, "deletedItems": true,
	"microsoft.graph.user": true, "microsoft.graph.group": true, "restore": true, "microsoft.graph.restore": true, "subscriptions": true,
	"reauthorize": true, "$batch": true}

// operation is the request's method and path template.
func operation(method string, segs []string) string {
	var b strings.Builder
	b.WriteString(method + " ")
	for _, s := range segs {
		b.WriteString("/")
		switch {
		case strings.HasPrefix(s, "applications(appId="):
			b.WriteString("applications(appId={id})")
		case keywords[s]:
			b.WriteString(strings.TrimPrefix(strings.TrimSuffix(s, "()"), "microsoft.graph."))
		default:
			b.WriteString("{id}")
		}
	}
	return b.String()
}

var guidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// checkHeaders checks a top-level request's headers.
func (k *conformance) checkHeaders(r *http.Request) {
	op := operation(r.Method, strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/v1.0"), "/"), "/"))
	if id := r.Header.Get("client-request-id"); !guidRE.MatchString(id) {
		// learn.microsoft.com/graph/best-practices-concept: "client-request-id
		// ... a GUID"; it is the id Microsoft support traces a call by.
		k.add(Violation{op, "request", "client-request-id", fmt.Sprintf("no client-request-id GUID (got %q)", id)})
	}
}

// checkRequest counts a request (a $batch item too) and records a refusal.
func (k *conformance) checkRequest(op string, refused *apiError) {
	k.mu.Lock()
	k.requests++
	if k.ops == nil {
		k.ops = map[string]bool{}
	}
	k.ops[op] = true
	k.mu.Unlock()
	if refused != nil {
		k.add(Violation{op, "request", "refused by Graph's description", refused.message})
	}
}

// checkQuery checks a request's query options: $select names properties
// of the answer's type; $count=true and $search go with ConsistencyLevel:
// eventual, without which Graph ignores $count (aad-advanced-queries).
func (k *conformance) checkQuery(c *gctx, op string) {
	if at, ok := answerTypes[op]; ok {
		for _, p := range c.q.selects {
			_, prop := metadata.V1.Property(at.typ, p)
			_, nav := metadata.V1.Navigation(at.typ, p)
			if !prop && !nav {
				k.add(Violation{op, "request", "$select", fmt.Sprintf("%q is not a property of microsoft.graph.%s", p, at.typ)})
			}
		}
	}
	if c.q.count && !c.eventual() {
		k.add(Violation{op, "request", "ConsistencyLevel", "$count=true without ConsistencyLevel: eventual is ignored"})
	}
}

// answerCheck is one answer being checked.
type answerCheck struct {
	k      *conformance
	op     string
	root   string   // https://host/v1.0
	sel    []string // what the request selected (a delta's from its token)
	delta  bool
	values int64
}

func (a *answerCheck) fail(rule, format string, args ...any) {
	a.k.add(Violation{a.op, "answer", rule, fmt.Sprintf(format, args...)})
}

// checkAnswer checks a successful answer's body.
func (k *conformance) checkAnswer(c *gctx, op string, resp *response) {
	k.mu.Lock()
	k.answers++
	k.mu.Unlock()
	if resp.body == nil {
		return
	}
	body, err := decoded(resp)
	if err != nil {
		k.add(Violation{op, "answer", "JSON", err.Error()})
		return
	}
	a := &answerCheck{k: k, op: op, root: c.s.URL() + "/v1.0", sel: c.answerSelect(), delta: strings.HasSuffix(op, "/delta")}
	a.body(body)
	k.mu.Lock()
	k.values += a.values
	k.mu.Unlock()
}

// checkBatch checks a $batch envelope (its items were checked one by one).
func (k *conformance) checkBatch(root string, resp *response) {
	body, err := decoded(resp)
	if err != nil {
		k.add(Violation{"POST /$batch", "answer", "JSON", err.Error()})
		return
	}
	a := &answerCheck{k: k, op: "POST /$batch", root: root}
	a.batch(body)
}

// decoded is an answer's body as a client decodes it: JSON, then back.
func decoded(resp *response) (map[string]any, error) {
	b, err := json.Marshal(resp.body)
	if err != nil {
		return nil, err
	}
	var body map[string]any
	err = json.Unmarshal(b, &body)
	return body, err
}

// answerTypes: each operation's answer, as entity set, type, and whether
// it is a collection.
var answerTypes = map[string]struct {
	set, typ   string
	collection bool
}{
	"GET /users":                                {"users", "user", true},
	"GET /users/delta":                          {"users", "user", true},
	"GET /users/{id}":                           {"users", "user", false},
	"POST /users":                               {"users", "user", false},
	"POST /users/{id}/assignLicense":            {"users", "user", false},
	"GET /groups":                               {"groups", "group", true},
	"GET /groups/delta":                         {"groups", "group", true},
	"GET /groups/{id}":                          {"groups", "group", false},
	"POST /groups":                              {"groups", "group", false},
	"GET /groups/{id}/members":                  {"directoryObjects", "directoryObject", true},
	"GET /subscribedSkus":                       {"subscribedSkus", "subscribedSku", true},
	"GET /applications(appId={id})":             {"applications", "application", false},
	"GET /directory/deletedItems/user":          {"directory/deletedItems/microsoft.graph.user", "user", true},
	"GET /directory/deletedItems/group":         {"directory/deletedItems/microsoft.graph.group", "group", true},
	"GET /directory/deletedItems/{id}":          {"directory/deletedItems", "directoryObject", false},
	"POST /directory/deletedItems/{id}/restore": {"directoryObjects", "directoryObject", false},
}

func (a *answerCheck) body(body map[string]any) {
	if a.op == "POST /$batch" {
		a.batch(body)
		return
	}
	at, ok := answerTypes[a.op]
	if !ok {
		return // subscriptions: outside the trimmed description
	}
	want := a.root + "/$metadata#" + at.set
	if len(a.sel) > 0 {
		want += "(" + strings.Join(a.sel, ",") + ")"
	}
	if !at.collection {
		want += "/$entity"
	}
	// Graph's examples: …/$metadata#users, …#users(displayName,id),
	// …#users/$entity, …#directoryObjects for a group's members.
	if got, _ := body["@odata.context"].(string); got != want {
		a.fail("@odata.context", "%q, Graph's form is %q", got, want)
	}
	if !at.collection {
		a.object(at.typ, body, true)
		return
	}
	values, _ := body["value"].([]any)
	for _, v := range values {
		obj, ok := v.(map[string]any)
		if !ok {
			a.fail("value", "an item is not an object")
			continue
		}
		a.object(at.typ, obj, false)
	}
	for k := range body {
		switch k {
		case "@odata.context", "value", "@odata.nextLink", "@odata.count":
		case "@odata.deltaLink":
			if !a.delta {
				a.fail("annotations", "@odata.deltaLink outside delta")
			}
		default:
			a.fail("annotations", "unexpected %q on a collection", k)
		}
	}
}

// batch checks the error shape of each failed item.
func (a *answerCheck) batch(body map[string]any) {
	items, _ := body["responses"].([]any)
	for _, it := range items {
		item, _ := it.(map[string]any)
		status, _ := item["status"].(float64)
		if status < 400 {
			continue
		}
		b, _ := item["body"].(map[string]any)
		checkErrorShape(a.k, "POST /$batch item", b)
	}
}

// checkErrorShape: {"error":{"code","message","innerError":{"date",
// "request-id","client-request-id"}}} (learn.microsoft.com/graph/errors).
func checkErrorShape(k *conformance, op string, body map[string]any) {
	e, _ := body["error"].(map[string]any)
	code, _ := e["code"].(string)
	msg, _ := e["message"].(string)
	inner, _ := e["innerError"].(map[string]any)
	if code == "" || msg == "" || inner == nil {
		k.add(Violation{op, "answer", "error shape", "an error needs code, message and innerError"})
		return
	}
	for _, f := range []string{"date", "request-id", "client-request-id"} {
		if _, ok := inner[f]; !ok {
			k.add(Violation{op, "answer", "error shape", "innerError lacks " + f})
		}
	}
}

// object checks one object against its type (or the type its @odata.type
// names).
func (a *answerCheck) object(typ string, obj map[string]any, entity bool) {
	if t, ok := obj["@odata.type"].(string); ok {
		name := strings.TrimPrefix(t, "#microsoft.graph.")
		if _, known := metadata.V1.Types[name]; !known || name == t {
			a.fail("@odata.type", "%q is not a type of the description", t)
		} else {
			typ = name
		}
	} else if typ == "directoryObject" {
		// A collection of directoryObject is of derived types: each item
		// names its own (Graph's examples for members and deletedItems).
		a.fail("@odata.type", "an item of a directoryObject collection without @odata.type")
	}
	if _, removed := obj["@removed"]; removed {
		if !a.delta {
			a.fail("@removed", "outside delta")
		}
		return
	}
	for k, v := range obj {
		switch {
		case k == "@odata.type" || k == "@odata.context" && entity:
			continue
		case k == "members@delta" && a.delta && typ == "group":
			a.memberDelta(v)
			continue
		case strings.Contains(k, "@"):
			a.fail("annotations", "unexpected %q", k)
			continue
		}
		p, ok := metadata.V1.Property(typ, k)
		if !ok {
			a.fail("property", "%q is not a property of microsoft.graph.%s", k, typ)
			continue
		}
		a.values++
		if k != "id" && !a.selected(k, p) {
			if len(a.sel) > 0 {
				a.fail("$select", "%s.%s was not selected", typ, k)
			} else {
				a.fail("default set", "%s.%s is \"Returned only on $select\"", typ, k)
			}
		}
		if v == nil {
			switch {
			case a.delta:
				a.fail("delta omissions", "%s.%s is null; delta leaves out properties never set", typ, k)
			case !p.Nullable: // the CSDL's: Graph answers null for a "Not nullable" property never set (usageLocation)
				a.fail("nullability", "%s.%s is null; it is not nullable", typ, k)
			}
			continue
		}
		a.value(typ+"."+k, p.Type, v)
	}
}

func (a *answerCheck) selected(k string, p metadata.Property) bool {
	if len(a.sel) == 0 {
		return !p.OnlyOnSelect()
	}
	for _, s := range a.sel {
		if s == k {
			return true
		}
	}
	return false
}

func (a *answerCheck) memberDelta(v any) {
	items, ok := v.([]any)
	if !ok {
		a.fail("members@delta", "not an array")
		return
	}
	for _, it := range items {
		m, _ := it.(map[string]any)
		if _, ok := m["@odata.type"].(string); !ok {
			a.fail("@odata.type", "a members@delta item without @odata.type")
		}
		if _, ok := m["id"].(string); !ok {
			a.fail("members@delta", "an item without id")
		}
		a.values++
	}
}

// value checks a JSON value of an answer against an Edm or graph type.
func (a *answerCheck) value(where, typ string, v any) {
	checkValue(where, typ, v, func(p metadata.Property) bool { return p.Nullable }, a.fail)
}

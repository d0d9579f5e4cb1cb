package jobs

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// manyKeys returns a JSON object with n keys k00000… set to 1, plus extra
// (already-encoded "key":value pairs).
func manyKeys(n int, extra ...string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%05d":1`, i)
	}
	for _, e := range extra {
		b.WriteString("," + e)
	}
	b.WriteByte('}')
	return b.String()
}

func mustJobError(t *testing.T, err error, code string) *Error {
	t.Helper()
	je, ok := err.(*Error)
	if !ok || je.Code != code {
		t.Fatalf("got %T %v, want *Error with code %s", err, err, code)
	}
	return je
}

// checkSmall asserts the bounds every error ParseJob returns keeps.
func checkSmall(t testing.TB, je *Error) {
	t.Helper()
	b, _ := json.Marshal(je)
	if len(b) > 8<<10 {
		t.Errorf("error is %d bytes as JSON, want at most 8 KiB", len(b))
	}
	checkBounded(t, je)
}

// checkBounded asserts that je keeps the bounds Bounded documents.
func checkBounded(t testing.TB, je *Error) {
	t.Helper()
	if len(je.Message) > MaxMessageLen || !utf8.ValidString(je.Message) {
		t.Errorf("message is %d bytes (valid UTF-8: %v), want at most %d", len(je.Message), utf8.ValidString(je.Message), MaxMessageLen)
	}
	if len(je.Fields) > MaxFieldErrors {
		t.Errorf("error lists %d fields, want at most %d", len(je.Fields), MaxFieldErrors)
	}
	for _, f := range je.Fields {
		if len(f.Field) > MaxFieldNameLen || !utf8.ValidString(f.Field) {
			t.Errorf("field name %q is not clipped to %d bytes of valid UTF-8", f.Field, MaxFieldNameLen)
		}
		if len(f.Problem) > MaxProblemLen || !utf8.ValidString(f.Problem) {
			t.Errorf("problem %q is not clipped to %d bytes of valid UTF-8", f.Problem, MaxProblemLen)
		}
	}
	for what, s := range map[string]string{"code": je.Code, "graph code": je.GraphCode, "graph request id": je.GraphRequestID} {
		if len(s) > max(MaxCodeLen, MaxRequestIDLen) || !utf8.ValidString(s) {
			t.Errorf("%s is %d bytes (valid UTF-8: %v)", what, len(s), utf8.ValidString(s))
		}
	}
}

func TestParseJobManyUnknownParamsIsBounded(t *testing.T) {
	params := manyKeys(12000, `"display_name":""`)
	job := `{"schema_version":1,"id":"j","instance":"acme","action":"microsoft-365.create_user","params":` + params + `}`
	if len(job) < 130_000 {
		t.Fatalf("job is only %d bytes", len(job))
	}
	_, _, err := ParseJob([]byte(job))
	je := mustJobError(t, err, CodeInvalidParams)
	checkSmall(t, je)
	// The first unknown keys in sorted order are named, the rest counted.
	for _, k := range []string{"params.k00000 is not a known field", "params.k00001 is not a known field"} {
		if !strings.Contains(je.Message, k) {
			t.Errorf("message does not name %q: %s", k, je.Message)
		}
	}
	if !strings.Contains(je.Message, "more unknown keys") || !strings.Contains(je.Message, ",9") {
		t.Errorf("message does not count the other unknown keys: %s", je.Message)
	}
	// Problems with known fields are never crowded out by unknown keys.
	for _, f := range []string{"params.display_name", "params.user_principal_name", "params.reply_key"} {
		if !(&ValidationError{Fields: je.Fields}).Has(f) || !strings.Contains(je.Message, f+" ") {
			t.Errorf("error does not name %s: %s %+v", f, je.Message, je.Fields)
		}
	}
	// The listed fields are stable: the same input gives the same error.
	_, _, err2 := ParseJob([]byte(job))
	if err2.Error() != err.Error() {
		t.Errorf("two parses of one job disagree:\n%s\n%s", err, err2)
	}
}

func TestParseJobManyUnknownEnvelopeKeysIsBounded(t *testing.T) {
	env := manyKeys(15000, `"schema_version":1`, `"id":"j"`, `"instance":"acme"`, `"action":"sync"`, `"requested_by":"`+strings.Repeat("x", 90_000)+`"`)
	if len(env) < 230_000 {
		t.Fatalf("job is only %d bytes", len(env))
	}
	_, _, err := ParseJob([]byte(env))
	je := mustJobError(t, err, CodeInvalidJob)
	checkSmall(t, je)
	if !strings.Contains(je.Message, "k00000 is not a known field") || !strings.Contains(je.Message, "14,98") {
		t.Errorf("message: %s", je.Message)
	}
}

// BenchmarkParseJobUnknownKeys shows that parsing grows linearly with the
// number of unknown keys (recording each used to scan every key recorded
// before): compare the 5,000 and 40,000 cases, about 8x apart (64x when it
// was quadratic).
//
//	go test ./jobs -run '^$' -bench ParseJobUnknownKeys
func BenchmarkParseJobUnknownKeys(b *testing.B) {
	for _, n := range []int{5000, 40000} {
		job := []byte(`{"schema_version":1,"id":"j","instance":"acme","action":"sync","params":` + manyKeys(n) + `}`)
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			for b.Loop() {
				_, _, _ = ParseJob(job)
			}
		})
	}
}

func TestParseJobClipsEchoedInput(t *testing.T) {
	long := strings.Repeat("é", 50_000) // 100 KB, two bytes a rune
	cases := map[string]struct {
		job  string
		code string
	}{
		"unknown action":  {`{"schema_version":1,"id":"j","instance":"acme","action":"` + long + `"}`, CodeUnknownAction},
		"long key":        {`{"schema_version":1,"id":"j","instance":"acme","action":"sync","` + long + `":1}`, CodeInvalidJob},
		"long param key":  {`{"schema_version":1,"id":"j","instance":"acme","action":"sync","params":{"` + long + `":1}}`, CodeInvalidParams},
		"long id":         {`{"schema_version":1,"id":"` + long + `","instance":"acme","action":"sync"}`, CodeInvalidJob},
		"long instance":   {`{"schema_version":1,"id":"j","instance":"` + long + `","action":"sync"}`, CodeInvalidJob},
		"bad json":        {`{"schema_version":1,"id":"` + long, CodeMalformedJob},
		"long plan twice": {`{"schema_version":1,"id":"j","instance":"acme","action":"microsoft-365.assign_license","params":{"user":"a@b.com","sku":"E3","disabled_plans":["` + long + `","` + long + `"]}}`, CodeInvalidParams},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := ParseJob([]byte(c.job))
			checkSmall(t, mustJobError(t, err, c.code))
		})
	}
}

func TestSubjectAndTokenErrorsClipInput(t *testing.T) {
	long := strings.Repeat("a.", 50_000)
	if _, err := (Subjects{}).ParseJobSubject("m365.jobs." + long); err == nil || len(err.Error()) > 1024 {
		t.Errorf("ParseJobSubject error is %d bytes", len(err.Error()))
	}
	if _, err := (Subjects{}).ParseResultSubject(long); err == nil || len(err.Error()) > 1024 {
		t.Errorf("ParseResultSubject error is %d bytes", len(err.Error()))
	}
	if err := CheckToken("instance", long); err == nil || len(err.Error()) > 1024 {
		t.Errorf("CheckToken error is %d bytes", len(err.Error()))
	}
	if _, err := Seal([]byte("x"), long); err == nil || len(err.Error()) > 1024 {
		t.Errorf("Seal error is %d bytes", len(err.Error()))
	}
}

func TestValidationErrorIsBounded(t *testing.T) {
	var ve ValidationError
	for i := range 1000 {
		ve.Add(fmt.Sprintf("k%04d", i), "is not a known field")
	}
	ve.Add("k0500", "a second problem for an omitted field is dropped")
	ve.Add("user", "is required")
	if len(ve.Fields) != MaxFieldErrors {
		t.Errorf("%d fields listed, want %d", len(ve.Fields), MaxFieldErrors)
	}
	if !ve.Has("k0999") || !ve.Has("k0000") || !ve.Has("user") || ve.Has("k1000") {
		t.Error("Has does not know every field added")
	}
	s := ve.Summary()
	if !strings.Contains(s, "user is required") || !strings.Contains(s, "k0000 is not a known field") {
		t.Errorf("summary misses the first problems: %s", s)
	}
	if !strings.Contains(s, "… and 981 more unknown keys") {
		t.Errorf("summary does not count the rest: %s", s)
	}
	if len(s) > MaxMessageLen {
		t.Errorf("summary is %d bytes", len(s))
	}
	if ve.Omitted() != 981 {
		t.Errorf("Omitted() = %d, want 981", ve.Omitted())
	}

	// A literal ValidationError (no internal set) still answers Has.
	lit := ValidationError{Fields: []FieldError{{Field: "a", Problem: "x"}}}
	if !lit.Has("a") || lit.Has("b") {
		t.Error("Has on a literal ValidationError")
	}
	lit.Add("a", "y")
	if len(lit.Fields) != 1 || lit.Fields[0].Problem != "x" {
		t.Errorf("the first problem must win: %+v", lit.Fields)
	}
}

func TestValidationErrorClipsNamesAndProblems(t *testing.T) {
	var ve ValidationError
	for i := range 25 {
		ve.Add(strings.Repeat("ж", 100)+fmt.Sprint(i), strings.Repeat("€", 500))
	}
	s := ve.Summary()
	if len(s) > MaxMessageLen || !utf8.ValidString(s) {
		t.Errorf("summary is %d bytes, valid UTF-8 %v", len(s), utf8.ValidString(s))
	}
	if !strings.Contains(s, "more problems") {
		t.Errorf("summary does not count what it leaves out: …%s", s[max(0, len(s)-200):])
	}
}

func TestDecodeParamsGuards(t *testing.T) {
	for name, p := range map[string]Params{"nil": nil, "typed nil": (*CreateUserParams)(nil)} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("panic: %v", r)
				}
			}()
			if err := DecodeParams(json.RawMessage(`{"user":"a@b.com"}`), p); err == nil {
				t.Fatal("no error")
			}
		})
	}
	var nilErr *Error
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("(*Error)(nil).Error() panics: %v", r)
		}
	}()
	_ = nilErr.Error()
}

func TestParseJobDeepNesting(t *testing.T) {
	for _, n := range []int{100, 10_001, 200_000} {
		deep := strings.Repeat("[", n) + strings.Repeat("]", n)
		for _, job := range []string{
			deep,
			`{"schema_version":1,"id":"j","instance":"acme","action":"sync","params":` + deep + `}`,
			`{"schema_version":1,"id":"j","instance":"acme","action":"sync","params":{"full":` + deep + `}}`,
			`{"schema_version":1,"id":"j","instance":"acme","action":"microsoft-365.create_user","params":{"password":` + strings.Repeat(`{"alg":`, n) + `1` + strings.Repeat("}", n) + `}}`,
		} {
			_, _, err := ParseJob([]byte(job))
			if err == nil {
				t.Fatalf("depth %d accepted", n)
			}
			checkSmall(t, err.(*Error))
		}
	}
}

func TestErrorBounded(t *testing.T) {
	long := strings.Repeat("x", 1<<20)
	e := &Error{
		Code:           "graph_" + long,
		Message:        "ab\xffcd" + strings.Repeat("ü", 1<<19),
		GraphCode:      long,
		GraphRequestID: long, GraphClientRequestID: long,
		Retryable: true,
	}
	for i := range 50 {
		e.Fields = append(e.Fields, FieldError{Field: fmt.Sprintf("f%02d\n", i) + long, Problem: "\xff" + long})
	}
	orig := *e
	b := e.Bounded()
	checkBounded(t, b)
	if len(b.Code) > MaxCodeLen || len(b.GraphCode) > MaxCodeLen || len(b.GraphRequestID) > MaxRequestIDLen || len(b.GraphClientRequestID) > MaxRequestIDLen {
		t.Errorf("codes not bounded: %d %d %d", len(b.Code), len(b.GraphCode), len(b.GraphRequestID))
	}
	if len(b.Fields) != MaxFieldErrors || !strings.HasPrefix(b.Fields[3].Field, "f03\uFFFDxxx") || !strings.HasSuffix(b.Fields[3].Field, "…") {
		t.Errorf("fields: %d, fourth %q", len(b.Fields), b.Fields[3].Field)
	}
	if !strings.HasPrefix(b.Message, "ab\uFFFDcdü") || !strings.HasSuffix(b.Message, "ü…; … and 30 more fields") {
		t.Errorf("message %q…%q", b.Message[:10], b.Message[len(b.Message)-40:])
	}
	if !b.Retryable {
		t.Error("Retryable lost")
	}
	if js, _ := json.Marshal(b); len(js) > 16<<10 {
		t.Errorf("bounded error is %d bytes as JSON", len(js))
	}
	// A copy: e is unchanged, and the copy does not share Fields.
	if e.Message != orig.Message || len(e.Fields) != 50 || e.Code != orig.Code {
		t.Error("Bounded changed its receiver")
	}
	b.Fields[0].Field = "changed"
	if e.Fields[0].Field == "changed" {
		t.Error("the copy shares Fields with the original")
	}
	// Idempotent, and an error within the bounds comes back equal.
	b = e.Bounded()
	if !reflect.DeepEqual(b.Bounded(), b) {
		t.Error("Bounded of a bounded error differs")
	}
	small := &Error{Code: CodeInvalidParams, Message: "invalid params: params.user is required", GraphCode: "Request_BadRequest",
		GraphRequestID: "6e7b768e-07e2-4810-8459-485f84f8f204", Fields: []FieldError{{Field: "params.user", Problem: "is required"}}}
	if got := small.Bounded(); got == small || !reflect.DeepEqual(got, small) {
		t.Errorf("Bounded of a small error: %+v", got)
	}
	if (*Error)(nil).Bounded() != nil {
		t.Error("Bounded of nil is not nil")
	}
}

func TestClip(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"eleven chars", 10, "eleven …"},
		{"ééééé", 9, "ééé…"},       // 10 bytes; a rune is never split
		{"a\xffb", 10, "a\uFFFDb"}, // invalid bytes become U+FFFD, even when short
		{"\xff\xff\xff\xff", 6, "\uFFFD…"},
		{strings.Repeat("€", 1000), 64, strings.Repeat("€", 20) + "…"},
	} {
		if got := clip(c.in, c.n); got != c.want || len(got) > c.n || !utf8.ValidString(got) {
			t.Errorf("clip(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
	if got := clipName("a\tb\x00c\u2028d"); got != "a\uFFFDb\uFFFDc\uFFFDd" {
		t.Errorf("clipName = %q", got)
	}
	if got := countOf(11980, "more unknown key", "more unknown keys"); got != "11,980 more unknown keys" {
		t.Errorf("countOf = %q", got)
	}
	if got := countOf(1, "more problem", "more problems"); got != "1 more problem" {
		t.Errorf("countOf = %q", got)
	}
}

func ExampleError_Bounded() {
	e := &Error{Code: CodeInvalidParams, Message: "invalid params: " + strings.Repeat("x", 5000)}
	for i := range 30 {
		e.Fields = append(e.Fields, FieldError{Field: fmt.Sprintf("params.k%d", i), Problem: "is not a known field"})
	}
	b := e.Bounded()
	fmt.Println(len(b.Message), len(b.Fields))
	fmt.Println(b.Message[strings.LastIndex(b.Message, "x"):])
	// Output:
	// 2048 20
	// x…; … and 10 more fields
}

package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// badInputs are classic hostile or broken JSON texts, used both as whole
// jobs and as params.
func badInputs() []string {
	deep := func(open, close string, n int) string { return strings.Repeat(open, n) + strings.Repeat(close, n) }
	return []string{
		``, ` `, `null`, `true`, `0`, `-0`, `1e400`, `"x"`, `[]`, `{}`, `[{}]`, `{`, `}`, `{"a"}`, `{"a":}`, `{"a":1,}`,
		`{} {}`, `{}x`, "\xef\xbb\xbf{}", `{"a":NaN}`, `{"a":1e999999}`, `{"a":-}`, `{"a":"\u0000"}`, `{"a":"\ud800"}`,
		deep("[", "]", 64), deep("[", "]", 10_001), deep(`{"a":`, "}", 64), deep(`{"a":`, "}", 10_001),
		`{"user":` + deep("[", "]", 10_001) + `}`,
		`{"` + strings.Repeat("k", 20_000) + `":1}`,
		`{"user":"` + strings.Repeat("a", 20_000) + `@contoso.com"}`,
		manyKeys(2000),
		"{\"\xff\xfe\":1,\"user\":\"a\xffb@contoso.com\"}",
		`{"user":null,"group":null,"member":null,"sku":null,"password":null,"reply_key":null,"full":null}`,
		`{"user":1,"group":[],"member":{},"sku":true,"password":"hunter2","reply_key":5,"full":"yes","disabled_plans":"x","members":{}}`,
		`{"user":"x","user":"adele@contoso.com","group":"a b","group":"finance"}`,
		`{"User":"adele@contoso.com","GROUP":"finance"}`,
		`{"display_name":"` + strings.Repeat("é", 300) + `","description":"` + strings.Repeat("ж", 1100) + `"}`,
		`{"disabled_plans":["X1","X1","X1"],"members":["a@b.com","a@b.com",1]}`,
		`{"password":{"alg":"xkv1","recipient":"X","sender":"X","box":"","extra":1}}`,
		`{"password":{"ALG":"xkv1"}}`,
		`{"password":{"alg":"xkv1","alg":1}}`,
		`{"schema_version":1,"id":"j","instance":"acme","action":"sync","params":` + manyKeys(500) + `}`,
		`{"schema_version":1.0,"id":"j","instance":"acme","action":"sync"}`,
		`{"schema_version":"1","id":"j","instance":"acme","action":"sync"}`,
		`{"schema_version":null,"id":null,"instance":null,"action":null,"params":null,"dry_run":null,"requested_at":null}`,
		`{"schema_version":1,"id":"j","id":"k","instance":"acme","action":"sync","action":"microsoft-365.nope"}`,
		`{"schema_version":1,"id":"j\u0000","instance":"acme","action":"sync"}`,
		`{"schema_version":1,"id":"j","instance":"acme","action":"sync","requested_at":"2026-13-45T99:00:00Z"}`,
		`{"schema_version":1,"id":"j","instance":"acme","action":"sync","requested_at":"2026-11-26T10:00:00.123456789123+23:59"}`,
		`{"schema_version":1,"id":"j","instance":"acme","action":"sync","params":"{}"}`,
		`{"schema_version":1,"id":"j","instance":"acme","action":"` + strings.Repeat("é", 5000) + `"}`,
		"{\"schema_version\":1,\"id\":\"\xff\",\"instance\":\"acme\",\"action\":\"sync\"}",
	}
}

// FuzzParseJob feeds arbitrary bytes to ParseJob: it must not panic, its
// errors are bounded *Errors, and a job it accepts survives a round trip
// through json.Marshal unchanged.
func FuzzParseJob(f *testing.F) {
	for _, c := range jobCases(f) {
		f.Add([]byte(c.job))
	}
	for _, b := range badInputs() {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		j, p, err := ParseJob(data)
		if err != nil {
			var je *Error
			if !errors.As(err, &je) {
				t.Fatalf("error %T is not an *Error: %v", err, err)
			}
			checkBounded(t, je)
			if !sort.SliceIsSorted(je.Fields, func(i, k int) bool { return je.Fields[i].Field < je.Fields[k].Field }) {
				t.Fatalf("fields are not sorted: %+v", je.Fields)
			}
			if !reflect.DeepEqual(je.Bounded(), je) {
				t.Fatalf("ParseJob's error is not within Bounded's bounds: %+v", je)
			}
			if p != nil {
				t.Fatal("params returned with an error")
			}
			return
		}
		if j == nil || p == nil {
			t.Fatalf("no error, but job %v params %v", j, p)
		}
		_ = p.Target()
		want := mustMarshal(t, p)

		// The envelope as the Go types write it parses to the same job.
		again := mustMarshal(t, j)
		j2, p2, err := ParseJob(again)
		if err != nil {
			t.Fatalf("re-marshalled job %s does not parse: %v", again, err)
		}
		if got := mustMarshal(t, p2); !bytes.Equal(got, want) {
			t.Fatalf("params changed in a round trip:\n%s\n%s", want, got)
		}
		if envelope(t, j2) != envelope(t, j) {
			t.Fatalf("envelope changed in a round trip:\n%s\n%s", envelope(t, j), envelope(t, j2))
		}

		// So does the job carrying its typed params as json.Marshal writes them.
		j3 := *j
		j3.Params = want
		_, p3, err := ParseJob(mustMarshal(t, &j3))
		if err != nil {
			t.Fatalf("job with re-marshalled params %s does not parse: %v", want, err)
		}
		if got := mustMarshal(t, p3); !bytes.Equal(got, want) {
			t.Fatalf("typed params changed in a round trip:\n%s\n%s", want, got)
		}
	})
}

// FuzzValidateParams decodes and validates arbitrary params for every
// action: no panic, bounded *Errors naming params fields, and accepted params
// decode again, from json.Marshal's output, to the same values.
func FuzzValidateParams(f *testing.F) {
	actions := Actions()
	index := map[string]uint8{}
	for i, a := range actions {
		index[a] = uint8(i)
	}
	for _, c := range jobCases(f) {
		var env struct {
			Action string          `json:"action"`
			Params json.RawMessage `json:"params"`
		}
		if json.Unmarshal([]byte(c.job), &env) == nil {
			if i, ok := index[env.Action]; ok {
				f.Add(i, []byte(env.Params))
			}
		}
	}
	for i := range actions {
		for _, b := range badInputs() {
			f.Add(uint8(i), []byte(b))
		}
	}
	f.Fuzz(func(t *testing.T, action uint8, raw []byte) {
		spec := actionSpecs[actions[int(action)%len(actions)]]
		p := spec.NewParams()
		err := DecodeParams(raw, p)
		if err != nil {
			var je *Error
			if !errors.As(err, &je) || je.Code != CodeInvalidParams {
				t.Fatalf("%s: error %T is not an invalid_params *Error: %v", spec.Name, err, err)
			}
			checkBounded(t, je)
			if len(je.Fields) == 0 {
				t.Fatalf("%s: error names no field: %v", spec.Name, je)
			}
			for _, fe := range je.Fields {
				if fe.Field != "params" && !strings.HasPrefix(fe.Field, "params.") {
					t.Fatalf("%s: field %q outside params", spec.Name, fe.Field)
				}
			}
			return
		}
		_ = p.Target()
		var ve ValidationError
		p.Validate(&ve)
		if len(ve.Fields) > 0 {
			t.Fatalf("%s: accepted params fail Validate: %s", spec.Name, ve.Summary())
		}
		want := mustMarshal(t, p)
		p2 := spec.NewParams()
		if err := DecodeParams(want, p2); err != nil {
			t.Fatalf("%s: re-marshalled params %s refused: %v", spec.Name, want, err)
		}
		if got := mustMarshal(t, p2); !bytes.Equal(got, want) {
			t.Fatalf("%s: params changed in a round trip:\n%s\n%s", spec.Name, want, got)
		}
	})
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %T: %v", v, err)
	}
	return b
}

// envelope is the job without its params, as JSON.
func envelope(t *testing.T, j *Job) string {
	c := *j
	c.Params = nil
	return string(mustMarshal(t, &c))
}

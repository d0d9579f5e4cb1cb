package jobs

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

var update = flag.Bool("update", false, "rewrite the checked-in JSON Schemas")

func TestSchemasUpToDate(t *testing.T) {
	for stem, doc := range messageSchemas() {
		want, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, '\n')
		path := filepath.Join("schema", stem+".schema.json")
		if *update {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%s: %v (run go test ./jobs -run TestSchemasUpToDate -update)", path, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is out of date with the Go types: run go test ./jobs -run TestSchemasUpToDate -update", path)
		}
	}
}

func compileSchemas(t testing.TB) map[string]*jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	stems := []string{"job", "action_result", "failure_record", "asset_delta", "indicators", "sync_report"}
	for _, stem := range stems {
		b, err := Schemas.ReadFile("schema/" + stem + ".schema.json")
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.AddResource(SchemaBaseURI+stem+".schema.json", doc); err != nil {
			t.Fatal(err)
		}
	}
	out := map[string]*jsonschema.Schema{}
	for _, stem := range stems {
		s, err := c.Compile(SchemaBaseURI + stem + ".schema.json")
		if err != nil {
			t.Fatalf("compile %s: %v", stem, err)
		}
		out[stem] = s
	}
	return out
}

func schemaValid(t testing.TB, s *jsonschema.Schema, data []byte) error {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return err
	}
	return s.Validate(v)
}

func sealedFor(t testing.TB) (*SealedSecret, string) {
	t.Helper()
	kp, err := nkeys.CreateCurveKeys()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	s, err := Seal([]byte("Pa55word!x"), pub)
	if err != nil {
		t.Fatal(err)
	}
	return s, pub
}

// jobCases are envelopes with whether they are valid. Both the Go parser and
// the JSON Schema must agree on every one.
func jobCases(t testing.TB) []struct {
	name  string
	job   string
	valid bool
} {
	sealed, pub := sealedFor(t)
	sj, _ := json.Marshal(sealed)
	env := func(action, params string) string {
		return `{"schema_version":1,"id":"j-1","instance":"acme","action":"` + action + `","params":` + params + `}`
	}
	return []struct {
		name  string
		job   string
		valid bool
	}{
		{"sync", env("sync", `{}`), true},
		{"sync full", env("sync", `{"full":true}`), true},
		{"sync null params", env("sync", `null`), true},
		{"sync no params", `{"schema_version":1,"id":"j-1","instance":"acme","action":"sync"}`, true},
		{"create_user no params", `{"schema_version":1,"id":"j-1","instance":"acme","action":"microsoft-365.create_user"}`, false},
		{"delete_user null params", env(ActionDeleteUser, `null`), false},
		{"sync bad field", env("sync", `{"fulll":true}`), false},
		{"envelope full", `{"schema_version":1,"id":"j-2","instance":"acme","action":"sync","requested_by":"alice@tevyra","requested_at":"2026-11-26T10:00:00Z","dry_run":true}`, true},
		{"unknown envelope field", `{"schema_version":1,"id":"j","instance":"acme","action":"sync","extra":1}`, false},
		{"no id", `{"schema_version":1,"instance":"acme","action":"sync"}`, false},
		{"space in id", `{"schema_version":1,"id":"a b","instance":"acme","action":"sync"}`, false},
		{"wrong version", `{"schema_version":2,"id":"j","instance":"acme","action":"sync"}`, false},
		{"bad instance", `{"schema_version":1,"id":"j","instance":"ac.me","action":"sync"}`, false},
		{"unknown action", env("microsoft-365.launch_rocket", `{}`), false},
		{"not an object", `[1,2]`, false},
		{"create_user sealed", env(ActionCreateUser, `{"display_name":"Adele Vance","user_principal_name":"adele@contoso.com","usage_location":"US","password":`+string(sj)+`}`), true},
		{"create_user generated", env(ActionCreateUser, `{"display_name":"Adele","user_principal_name":"adele@contoso.com","reply_key":"`+pub+`","force_change_password":false,"account_enabled":false}`), true},
		{"create_user clear password", env(ActionCreateUser, `{"display_name":"Adele","user_principal_name":"adele@contoso.com","password":"hunter2"}`), false},
		{"create_user both", env(ActionCreateUser, `{"display_name":"Adele","user_principal_name":"adele@contoso.com","reply_key":"`+pub+`","password":`+string(sj)+`}`), false},
		{"create_user neither", env(ActionCreateUser, `{"display_name":"Adele","user_principal_name":"adele@contoso.com"}`), false},
		{"create_user bad upn", env(ActionCreateUser, `{"display_name":"Adele","user_principal_name":"adele.contoso.com","reply_key":"`+pub+`"}`), false},
		{"create_user bad country", env(ActionCreateUser, `{"display_name":"Adele","user_principal_name":"a@contoso.com","usage_location":"us","reply_key":"`+pub+`"}`), false},
		{"create_user bad nickname", env(ActionCreateUser, `{"display_name":"Adele","user_principal_name":"a@contoso.com","mail_nickname":"a b","reply_key":"`+pub+`"}`), false},
		{"create_user blank name", env(ActionCreateUser, `{"display_name":"  ","user_principal_name":"a@contoso.com","reply_key":"`+pub+`"}`), false},
		{"create_user guest upn", env(ActionCreateUser, `{"display_name":"G","user_principal_name":"g_fabrikam.com#EXT#@contoso.onmicrosoft.com","reply_key":"`+pub+`"}`), true},
		{"update_user", env(ActionUpdateUser, `{"user":"adele@contoso.com","job_title":"CFO","department":""}`), true},
		// Graph v1.0's description (graphsim/metadata): usageLocation "Not
		// nullable"; the UPN alias only A-Z a-z 0-9 ' . - _ ! # ^ ~; a group's
		// mailNickname without @ () / [] ' ; : <> , SPACE; visibility
		// HiddenMembership only at creation.
		{"update_user clear usage location", env(ActionUpdateUser, `{"user":"adele@contoso.com","usage_location":""}`), false},
		{"create_user upn plus", env(ActionCreateUser, `{"display_name":"A","user_principal_name":"a+b@contoso.com","reply_key":"`+pub+`"}`), false},
		{"create_user upn ampersand", env(ActionCreateUser, `{"display_name":"A","user_principal_name":"a&b@contoso.com","reply_key":"`+pub+`"}`), false},
		{"update_user upn dollar", env(ActionUpdateUser, `{"user":"adele@contoso.com","user_principal_name":"a$b@contoso.com"}`), false},
		{"update_user upn percent", env(ActionUpdateUser, `{"user":"adele@contoso.com","user_principal_name":"a%b@contoso.com"}`), false},
		{"create_user upn allowed", env(ActionCreateUser, `{"display_name":"A","user_principal_name":"o'neil_x!y#z^w~v-u@contoso.com","reply_key":"`+pub+`"}`), true},
		{"create_group nickname quote", env(ActionCreateGroup, `{"display_name":"F","mail_nickname":"o'hare","group_type":"security"}`), false},
		{"create_group nickname slash", env(ActionCreateGroup, `{"display_name":"F","mail_nickname":"a/b","group_type":"security"}`), false},
		{"update_group nickname slash", env(ActionUpdateGroup, `{"group":"finance","mail_nickname":"a/b"}`), false},
		{"create_group nickname allowed", env(ActionCreateGroup, `{"display_name":"F","mail_nickname":"a.b-c_d!e#f$g%h&i*j+k=l?m^n{o}p|q~r\\s\"t","group_type":"security"}`), true},
		{"create_group hidden membership", env(ActionCreateGroup, `{"display_name":"F","mail_nickname":"f","group_type":"microsoft_365","visibility":"HiddenMembership"}`), true},
		{"update_group hidden membership", env(ActionUpdateGroup, `{"group":"finance","visibility":"HiddenMembership"}`), false},
		{"update_group private", env(ActionUpdateGroup, `{"group":"finance","visibility":"Private"}`), true},
		{"update_user nothing", env(ActionUpdateUser, `{"user":"adele@contoso.com"}`), false},
		{"update_user by id", env(ActionUpdateUser, `{"user":"6e7b768e-07e2-4810-8459-485f84f8f204","department":"Sales"}`), true},
		{"update_user bad user", env(ActionUpdateUser, `{"user":"not a user","department":"Sales"}`), false},
		{"delete_user", env(ActionDeleteUser, `{"user":"adele@contoso.com"}`), true},
		{"delete_user missing", env(ActionDeleteUser, `{}`), false},
		{"disable_user", env(ActionDisableUser, `{"user":"adele@contoso.com"}`), true},
		{"enable_user", env(ActionEnableUser, `{"user":"adele@contoso.com"}`), true},
		{"enable_user number", env(ActionEnableUser, `{"user":42}`), false},
		{"reset_password", env(ActionResetPassword, `{"user":"adele@contoso.com","reply_key":"`+pub+`"}`), true},
		{"reset_password bad key", env(ActionResetPassword, `{"user":"adele@contoso.com","reply_key":"Xnope"}`), false},
		{"assign_license", env(ActionAssignLicense, `{"user":"adele@contoso.com","sku":"ENTERPRISEPACK","disabled_plans":["EXCHANGE_S_ENTERPRISE","efb87545-963c-4e0d-99df-69c6916d9eb0"]}`), true},
		{"assign_license dup plans", env(ActionAssignLicense, `{"user":"adele@contoso.com","sku":"ENTERPRISEPACK","disabled_plans":["X1","X1"]}`), false},
		{"assign_license bad sku", env(ActionAssignLicense, `{"user":"adele@contoso.com","sku":"E 3"}`), false},
		{"remove_license by id", env(ActionRemoveLicense, `{"user":"adele@contoso.com","sku":"6fd2c87f-b296-42f0-b197-1e91e994b900"}`), true},
		{"create_group security", env(ActionCreateGroup, `{"display_name":"Finance","mail_nickname":"finance","group_type":"security","members":["adele@contoso.com"]}`), true},
		{"create_group m365", env(ActionCreateGroup, `{"display_name":"Finance","mail_nickname":"finance","group_type":"microsoft_365","visibility":"Private"}`), true},
		{"create_group security visibility", env(ActionCreateGroup, `{"display_name":"F","mail_nickname":"f","group_type":"security","visibility":"Private"}`), false},
		{"create_group bad type", env(ActionCreateGroup, `{"display_name":"F","mail_nickname":"f","group_type":"distribution"}`), false},
		{"update_group", env(ActionUpdateGroup, `{"group":"finance","description":"money"}`), true},
		{"update_group nothing", env(ActionUpdateGroup, `{"group":"finance"}`), false},
		{"delete_group", env(ActionDeleteGroup, `{"group":"finance"}`), true},
		{"add_group_member", env(ActionAddGroupMember, `{"group":"finance","member":"adele@contoso.com"}`), true},
		{"add_group_member bad group", env(ActionAddGroupMember, `{"group":"fin ance","member":"adele@contoso.com"}`), false},
		{"remove_group_member", env(ActionRemoveGroupMember, `{"group":"7b2e3a4c-1d2e-4f5a-9b8c-0d1e2f3a4b5c","member":"adele@contoso.com"}`), true},
	}
}

func TestSchemaAgreesWithGoOnJobs(t *testing.T) {
	schemas := compileSchemas(t)
	cases := jobCases(t)
	seen := map[string]bool{}
	for _, c := range cases {
		_, _, goErr := ParseJob([]byte(c.job))
		schemaErr := schemaValid(t, schemas["job"], []byte(c.job))
		if (goErr == nil) != c.valid {
			t.Errorf("%s: Go says %v, want valid=%v", c.name, goErr, c.valid)
		}
		if (schemaErr == nil) != c.valid {
			t.Errorf("%s: schema says %v, want valid=%v", c.name, schemaErr, c.valid)
		}
		var env struct{ Action string }
		_ = json.Unmarshal([]byte(c.job), &env)
		if c.valid {
			seen[env.Action] = true
		}
	}
	for _, a := range Actions() {
		if !seen[a] {
			t.Errorf("no valid sample for action %s", a)
		}
	}
}

// rfc3339RE is the date-time format of JSON Schema (RFC 3339 section 5.6).
var rfc3339RE = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$`)

// FuzzSchemaAgreesWithGo checks that ParseJob and the job schema accept and
// refuse the same jobs, but for two known differences: the schema cannot
// check that a sealed secret's box decodes as base64 (contentEncoding is an
// annotation), and Go's time parsing accepts some timestamps the date-time
// format refuses (a one-digit hour).
func FuzzSchemaAgreesWithGo(f *testing.F) {
	schemas := compileSchemas(f)
	for _, c := range jobCases(f) {
		f.Add([]byte(c.job))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _, goErr := ParseJob(data)
		schemaErr := schemaValid(t, schemas["job"], data)
		if (goErr == nil) == (schemaErr == nil) {
			return
		}
		var je *Error
		if asError(goErr, &je) && je.Code == CodeInvalidParams && (&ValidationError{Fields: je.Fields}).Has("params.password.box") {
			return
		}
		var env struct {
			RequestedAt *string `json:"requested_at"`
		}
		if goErr == nil && json.Unmarshal(data, &env) == nil && env.RequestedAt != nil && !rfc3339RE.MatchString(*env.RequestedAt) {
			return
		}
		t.Fatalf("Go says %v, the schema says %v", goErr, schemaErr)
	})
}

func TestSchemaAcceptsPublishedMessages(t *testing.T) {
	schemas := compileSchemas(t)
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	s := func(v string) *string { return &v }
	user, _ := json.Marshal(UserAsset{ID: "u1", UserPrincipalName: "adele@contoso.com", DisplayName: "Adele", GivenName: s("Adele"),
		AccountEnabled: true, UserType: "Member", BusinessPhones: []string{}, CreatedDateTime: &now,
		AssignedLicenses: []AssignedLicense{{SkuID: "6fd2c87f-b296-42f0-b197-1e91e994b900", SkuPartNumber: "ENTERPRISEPACK", DisabledPlans: []string{}}}})
	group, _ := json.Marshal(GroupAsset{ID: "g1", DisplayName: "Finance", MailNickname: "finance", SecurityEnabled: true, GroupTypes: []string{}, Members: []string{"u1"}})
	lic, _ := json.Marshal(LicenseAsset{ID: "x_y", SkuID: "6fd2c87f-b296-42f0-b197-1e91e994b900", SkuPartNumber: "ENTERPRISEPACK", CapabilityStatus: "Enabled",
		AppliesTo: "User", PrepaidUnits: PrepaidUnits{Enabled: 25}, ConsumedUnits: 20, AvailableUnits: 5, ServicePlans: []ServicePlan{{ServicePlanID: "p", ServicePlanName: "EXCHANGE_S_ENTERPRISE", ProvisioningStatus: "Success", AppliesTo: "User"}}})
	msgs := []struct {
		stem  string
		v     any
		valid bool
	}{
		{"action_result", ActionResult{SchemaVersion: 1, JobID: "j", Instance: "acme", Action: ActionAssignLicense, Status: StatusSucceeded, Attempts: 1, StartedAt: now, FinishedAt: now, Output: json.RawMessage(`{"user_id":"u1"}`)}, true},
		{"action_result", ActionResult{SchemaVersion: 1, JobID: "j", Instance: "acme", Action: ActionAssignLicense, Status: StatusFailed, Attempts: 1, StartedAt: now, FinishedAt: now,
			Error: &Error{Code: "no_free_seat", Message: "ENTERPRISEPACK has no available licence (25 of 25 used)", GraphCode: "Request_BadRequest", GraphRequestID: "r"}}, true},
		{"action_result", ActionResult{SchemaVersion: 1, JobID: "j", Instance: "acme", Action: ActionSync, Status: "done", StartedAt: now, FinishedAt: now}, false},
		{"failure_record", FailureRecord{SchemaVersion: 1, JobID: "j", Instance: "acme", Pool: "default", Action: ActionCreateUser, Subject: "m365.jobs.default.acme.action.create_user",
			Stream: "M365_JOBS", StreamSeq: 7, Deliveries: 1, FailedAt: now, Worker: "w1", Error: Error{Code: CodeInvalidParams, Message: "m", Fields: []FieldError{{Field: "params.user", Problem: "is required"}}}}, true},
		{"asset_delta", AssetDelta{SchemaVersion: 1, Instance: "acme", SyncID: "s", Type: AssetUser, Mode: ModeFull, Batch: 1, Last: true,
			Changes: []AssetChange{{Op: OpUpsert, ID: "u1", Asset: user}, {Op: OpDelete, ID: "u2", Reason: ReasonSoftDeleted}}}, true},
		{"asset_delta", AssetDelta{SchemaVersion: 1, Instance: "acme", SyncID: "s", Type: AssetGroup, Mode: ModeIncremental, Batch: 2, Changes: []AssetChange{{Op: OpUpsert, ID: "g1", Asset: group}}}, true},
		{"asset_delta", AssetDelta{SchemaVersion: 1, Instance: "acme", SyncID: "s", Type: AssetLicense, Mode: ModeFull, Batch: 1, Changes: []AssetChange{{Op: OpUpsert, ID: "x_y", Asset: lic}}}, true},
		{"asset_delta", AssetDelta{SchemaVersion: 1, Instance: "acme", SyncID: "s", Type: AssetGroup, Mode: ModeFull, Batch: 1, Changes: []AssetChange{{Op: OpUpsert, ID: "u1", Asset: user}}}, false},
		{"asset_delta", AssetDelta{SchemaVersion: 1, Instance: "acme", SyncID: "s", Type: AssetUser, Mode: ModeFull, Batch: 1, Changes: []AssetChange{{Op: OpDelete, ID: "u1"}}}, false},
		{"indicators", Indicators{SchemaVersion: 1, Instance: "acme", SyncID: "s", At: now, UsersTotal: 3, UsersEnabled: 2, UsersLicensed: 1, GroupsTotal: 1, LicensesTotal: 25, LicensesConsumed: 20}, true},
		{"sync_report", SyncReport{SchemaVersion: 1, JobID: "j", Instance: "acme", SyncID: "s", Mode: ModeFull, Outcome: OutcomeSucceeded, StartedAt: now, FinishedAt: now,
			Counts: map[string]SyncCounts{AssetUser: {Upserts: 3, Total: 3}}, GraphRequests: 4, ResourceUnits: 9}, true},
		{"sync_report", SyncReport{SchemaVersion: 1, JobID: "j", Instance: "acme", SyncID: "s", Outcome: "maybe", StartedAt: now, FinishedAt: now}, false},
	}
	for i, m := range msgs {
		b, err := json.Marshal(m.v)
		if err != nil {
			t.Fatal(err)
		}
		if err := schemaValid(t, schemas[m.stem], b); (err == nil) != m.valid {
			t.Errorf("%d %s: schema says %v, want valid=%v\n%s", i, m.stem, err, m.valid, b)
		}
	}
}

func TestParseJobReportsEveryBadField(t *testing.T) {
	_, _, err := ParseJob([]byte(`{"schema_version":1,"id":"j","instance":"acme","action":"microsoft-365.create_user",
		"params":{"display_name":"","user_principal_name":"nope","usage_location":"USA","colour":"blue","account_enabled":"yes"}}`))
	var je *Error
	if !asError(err, &je) || je.Code != CodeInvalidParams {
		t.Fatalf("got %v, want invalid_params", err)
	}
	want := []string{"params.display_name", "params.user_principal_name", "params.usage_location", "params.colour", "params.account_enabled", "params.reply_key"}
	for _, f := range want {
		found := false
		for _, fe := range je.Fields {
			if fe.Field == f {
				found = true
			}
		}
		if !found {
			t.Errorf("no error for %s in %+v", f, je.Fields)
		}
	}
	if len(je.Fields) != len(want) {
		t.Errorf("got %d field errors, want %d: %+v", len(je.Fields), len(want), je.Fields)
	}
	if !strings.Contains(je.Message, "params.colour is not a known field") {
		t.Errorf("message %q does not name the unknown field", je.Message)
	}

	_, _, err = ParseJob([]byte(`{"id":5,"instance":"acme"}`))
	if !asError(err, &je) || je.Code != CodeInvalidJob {
		t.Fatalf("got %v, want invalid_job", err)
	}
	for _, f := range []string{"schema_version", "id", "action"} {
		if !(&ValidationError{Fields: je.Fields}).Has(f) {
			t.Errorf("envelope error misses %s: %+v", f, je.Fields)
		}
	}

	_, _, err = ParseJob([]byte(`{"schema_version":1,`))
	if !asError(err, &je) || je.Code != CodeMalformedJob {
		t.Fatalf("got %v, want malformed_job", err)
	}
	_, _, err = ParseJob([]byte(`{"schema_version":1,"id":"j","instance":"acme","action":"microsoft-365.frobnicate"}`))
	if !asError(err, &je) || je.Code != CodeUnknownAction || !strings.Contains(je.Message, "microsoft-365.frobnicate") {
		t.Fatalf("got %v, want unknown_action naming the action", err)
	}
}

func asError(err error, target **Error) bool {
	e, ok := err.(*Error)
	if ok {
		*target = e
	}
	return ok
}

func TestParseJobTyped(t *testing.T) {
	j, p, err := ParseJob([]byte(`{"schema_version":1,"id":"j","instance":"acme","action":"microsoft-365.assign_license","params":{"user":"adele@contoso.com","sku":"ENTERPRISEPACK"}}`))
	if err != nil {
		t.Fatal(err)
	}
	al, ok := p.(*AssignLicenseParams)
	if !ok || al.User != "adele@contoso.com" || al.SKU != "ENTERPRISEPACK" || j.Instance != "acme" {
		t.Fatalf("got %+v %+v", j, p)
	}
	if p.Target() != "user:adele@contoso.com" {
		t.Errorf("target %q", p.Target())
	}
}

func TestSealOpen(t *testing.T) {
	kp, _ := nkeys.CreateCurveKeys()
	pub, _ := kp.PublicKey()
	s, err := Seal([]byte("s3cret-Value"), pub)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(s)
	if bytes.Contains(b, []byte("s3cret-Value")) {
		t.Fatal("plaintext visible in the sealed JSON")
	}
	var back SealedSecret
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	got, err := back.Open(kp)
	if err != nil || string(got) != "s3cret-Value" {
		t.Fatalf("open: %q %v", got, err)
	}
	other, _ := nkeys.CreateCurveKeys()
	if _, err := back.Open(other); err == nil {
		t.Fatal("opened with another key")
	}
	if strings.Contains((&back).String(), back.Box) {
		t.Fatal("String leaks the box")
	}
}

func TestSubjects(t *testing.T) {
	s := Subjects{}
	if got := s.ActionJob("default", "acme", ActionCreateUser); got != "m365.jobs.default.acme.action.create_user" {
		t.Errorf("ActionJob = %q", got)
	}
	for _, subj := range []string{"m365.jobs.site1.acme.sync", "m365.jobs.default.acme.action.create_user"} {
		a, err := s.ParseJobSubject(subj)
		if err != nil {
			t.Fatal(err)
		}
		j := &Job{Instance: a.Instance, Action: a.Action}
		if back := s.JobSubject(a.Pool, j); back != subj {
			t.Errorf("round trip %q → %+v → %q", subj, a, back)
		}
	}
	for _, bad := range []string{"m365.jobs.default.acme", "m365.results.acme.actions", "m365.jobs.default.acme.action.", "x.jobs.default.acme.sync", "m365.jobs.default.acme.sync.extra"} {
		if _, err := s.ParseJobSubject(bad); err == nil {
			t.Errorf("%q parsed as a job subject", bad)
		}
	}
	r, err := Subjects{Prefix: "t1"}.ParseResultSubject("t1.results.acme.assets.m365_user")
	if err != nil || r.AssetType != AssetUser || r.Instance != "acme" {
		t.Errorf("ParseResultSubject: %+v %v", r, err)
	}
	if (Subjects{Prefix: "t1"}).Assets("acme", AssetUser) != "t1.results.acme.assets.m365_user" {
		t.Error("Assets")
	}
	if !IsCountryCode("GB") || IsCountryCode("UK") || len(CountryCodes()) != 249 {
		t.Error("country codes")
	}
}

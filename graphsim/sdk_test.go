package graphsim_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/google/uuid"
	abstractions "github.com/microsoft/kiota-abstractions-go"
	auth "github.com/microsoft/kiota-authentication-azure-go"
	khttp "github.com/microsoft/kiota-http-go"
	msgraph "github.com/microsoftgraph/msgraph-sdk-go"
	msgraphcore "github.com/microsoftgraph/msgraph-sdk-go-core"
	"github.com/microsoftgraph/msgraph-sdk-go/directory"
	"github.com/microsoftgraph/msgraph-sdk-go/models"
	"github.com/microsoftgraph/msgraph-sdk-go/models/odataerrors"
	"github.com/microsoftgraph/msgraph-sdk-go/users"

	"github.com/tevyra/m365-worker/graphsim"
)

// sdkClient builds the real msgraph-sdk-go client with azidentity, trusting
// the simulator's CA through a custom transport, instance discovery off.
func sdkClient(t testing.TB, sim *graphsim.Server, c graphsim.Credential) (*msgraph.GraphServiceClient, *msgraph.GraphRequestAdapter) {
	t.Helper()
	cred, err := azidentity.NewClientSecretCredential(c.TenantID, c.ClientID, c.ClientSecret, &azidentity.ClientSecretCredentialOptions{
		ClientOptions:            azcore.ClientOptions{Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: c.Authority + "/"}, Transport: sim.Client()},
		DisableInstanceDiscovery: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ap, err := auth.NewAzureIdentityAuthenticationProviderWithScopesAndValidHosts(cred, []string{c.GraphRoot + "/.default"}, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: khttp.NewCustomTransportWithParentTransport(sim.Client().Transport, msgraphcore.GetDefaultMiddlewaresWithOptions(&msgraphcore.GraphClientOptions{})...)}
	adapter, err := msgraph.NewGraphRequestAdapterWithParseNodeFactoryAndSerializationWriterFactoryAndHttpClient(ap, nil, nil, hc)
	if err != nil {
		t.Fatal(err)
	}
	adapter.SetBaseUrl(c.GraphRoot + "/v1.0")
	return msgraph.NewGraphServiceClient(adapter), adapter
}

func odataCode(err error) string {
	var oe *odataerrors.ODataError
	if errors.As(err, &oe) && oe.GetErrorEscaped() != nil && oe.GetErrorEscaped().GetCode() != nil {
		return *oe.GetErrorEscaped().GetCode()
	}
	return ""
}

func ptr[T any](v T) *T { return &v }

func TestSDKPerformsEveryOperation(t *testing.T) {
	sim := start(t, graphsim.Options{Users: 60, Groups: 6, NoThrottling: true})
	cred := sim.Credentials()[0]
	gc, adapter := sdkClient(t, sim, cred)
	ctx := context.Background()
	snap, _ := sim.Export(cred.TenantID)
	domain := strings.SplitN(snap.Users[len(snap.Users)-1].UserPrincipalName, "@", 2)[1]

	// List users with $select, paged by the SDK's page iterator.
	page, err := gc.Users().Get(ctx, &users.UsersRequestBuilderGetRequestConfiguration{QueryParameters: &users.UsersRequestBuilderGetQueryParameters{
		Select: []string{"id", "userPrincipalName", "accountEnabled", "assignedLicenses"}, Top: ptr(int32(25))}})
	if err != nil {
		t.Fatalf("list users: %v", err)
	}
	it, err := msgraphcore.NewPageIterator[models.Userable](page, adapter, models.CreateUserCollectionResponseFromDiscriminatorValue)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	_ = it.Iterate(ctx, func(u models.Userable) bool { n++; return true })
	if n != 60 {
		t.Errorf("page iterator saw %d users", n)
	}

	// Get by UPN; create, update, delete, restore.
	first := snap.Users[0]
	u, err := gc.Users().ByUserId(first.UserPrincipalName).Get(ctx, nil)
	if err != nil || *u.GetId() != first.ID {
		t.Fatalf("get by UPN: %v", err)
	}
	nu := models.NewUser()
	nu.SetAccountEnabled(ptr(true))
	nu.SetDisplayName(ptr("Sim Test"))
	nu.SetMailNickname(ptr("sim.test"))
	nu.SetUserPrincipalName(ptr("sim.test@" + domain))
	nu.SetUsageLocation(ptr("US"))
	pp := models.NewPasswordProfile()
	pp.SetPassword(ptr("Str0ng!Passw0rd"))
	pp.SetForceChangePasswordNextSignIn(ptr(true))
	nu.SetPasswordProfile(pp)
	created, err := gc.Users().Post(ctx, nu, nil)
	if err != nil {
		t.Fatalf("create user: %v", err)
	}
	id := *created.GetId()
	if _, err := gc.Users().Post(ctx, nu, nil); odataCode(err) != "Request_BadRequest" || !strings.Contains(err.Error(), "") {
		t.Errorf("duplicate UPN: %v (%s)", err, odataCode(err))
	}
	patch := models.NewUser()
	patch.SetJobTitle(ptr("Tester"))
	patch.SetAccountEnabled(ptr(false))
	if _, err := gc.Users().ByUserId(id).Patch(ctx, patch, nil); err != nil {
		t.Fatalf("update user: %v", err)
	}
	reset := models.NewUser()
	rp := models.NewPasswordProfile()
	rp.SetPassword(ptr("An0ther!Passw0rd"))
	reset.SetPasswordProfile(rp)
	if _, err := gc.Users().ByUserId(id).Patch(ctx, reset, nil); err != nil {
		t.Fatalf("reset password: %v", err)
	}

	// Licences.
	skus, err := gc.SubscribedSkus().Get(ctx, nil)
	if err != nil || len(skus.GetValue()) == 0 {
		t.Fatalf("subscribedSkus: %v", err)
	}
	var e3 models.SubscribedSkuable
	for _, s := range skus.GetValue() {
		if *s.GetSkuPartNumber() == "FLOW_FREE" {
			e3 = s
		}
	}
	body := users.NewItemAssignLicensePostRequestBody()
	al := models.NewAssignedLicense()
	al.SetSkuId(e3.GetSkuId())
	al.SetDisabledPlans([]uuid.UUID{})
	body.SetAddLicenses([]models.AssignedLicenseable{al})
	body.SetRemoveLicenses([]uuid.UUID{})
	if _, err := gc.Users().ByUserId(id).AssignLicense().Post(ctx, body, nil); err != nil {
		t.Fatalf("assign licence: %v", err)
	}
	got, err := gc.Users().ByUserId(id).Get(ctx, &users.UserItemRequestBuilderGetRequestConfiguration{QueryParameters: &users.UserItemRequestBuilderGetQueryParameters{Select: []string{"id", "jobTitle", "accountEnabled", "assignedLicenses"}}})
	if err != nil || *got.GetJobTitle() != "Tester" || *got.GetAccountEnabled() || len(got.GetAssignedLicenses()) != 1 {
		t.Fatalf("read back: %v", err)
	}

	// Groups: create, member add/list/remove, update, delete.
	g := models.NewGroup()
	g.SetDisplayName(ptr("Sim Security"))
	g.SetMailNickname(ptr("sim-security"))
	g.SetMailEnabled(ptr(false))
	g.SetSecurityEnabled(ptr(true))
	g.SetGroupTypes([]string{})
	cg, err := gc.Groups().Post(ctx, g, nil)
	if err != nil {
		t.Fatalf("create group: %v", err)
	}
	ug := models.NewGroup()
	ug.SetDisplayName(ptr("Sim Unified"))
	ug.SetMailNickname(ptr("sim-unified"))
	ug.SetMailEnabled(ptr(true))
	ug.SetSecurityEnabled(ptr(false))
	ug.SetGroupTypes([]string{"Unified"})
	if cu, err := gc.Groups().Post(ctx, ug, nil); err != nil || cu.GetMail() == nil {
		t.Fatalf("create Microsoft 365 group: %v", err)
	}
	ref := models.NewReferenceCreate()
	ref.SetOdataId(ptr(cred.GraphRoot + "/v1.0/directoryObjects/" + id))
	if err := gc.Groups().ByGroupId(*cg.GetId()).Members().Ref().Post(ctx, ref, nil); err != nil {
		t.Fatalf("add member: %v", err)
	}
	if err := gc.Groups().ByGroupId(*cg.GetId()).Members().Ref().Post(ctx, ref, nil); odataCode(err) != "Request_BadRequest" {
		t.Errorf("add member twice: %v", err)
	}
	ms, err := gc.Groups().ByGroupId(*cg.GetId()).Members().Get(ctx, nil)
	if err != nil || len(ms.GetValue()) != 1 || *ms.GetValue()[0].GetId() != id {
		t.Fatalf("list members: %v", err)
	}
	gp := models.NewGroup()
	gp.SetDescription(ptr("changed"))
	if _, err := gc.Groups().ByGroupId(*cg.GetId()).Patch(ctx, gp, nil); err != nil {
		t.Fatalf("update group: %v", err)
	}
	if err := gc.Groups().ByGroupId(*cg.GetId()).Members().ByDirectoryObjectId(id).Ref().Delete(ctx, nil); err != nil {
		t.Fatalf("remove member: %v", err)
	}
	if err := gc.Groups().ByGroupId(*cg.GetId()).Members().ByDirectoryObjectId(id).Ref().Delete(ctx, nil); odataCode(err) != "Request_ResourceNotFound" {
		t.Errorf("remove non-member: %v", err)
	}
	if err := gc.Groups().ByGroupId(*cg.GetId()).Delete(ctx, nil); err != nil {
		t.Fatalf("delete group: %v", err)
	}

	// Delete to the recycle bin, list it, restore, purge.
	if err := gc.Users().ByUserId(id).Delete(ctx, nil); err != nil {
		t.Fatalf("delete user: %v", err)
	}
	if _, err := gc.Users().ByUserId(id).Get(ctx, nil); odataCode(err) != "Request_ResourceNotFound" {
		t.Errorf("deleted user still readable: %v", err)
	}
	del, err := gc.Directory().DeletedItems().GraphUser().Get(ctx, nil)
	if err != nil || len(del.GetValue()) != 1 {
		t.Fatalf("deleted users: %v", err)
	}
	if _, err := gc.Directory().DeletedItems().ByDirectoryObjectId(id).Restore().Post(ctx, nil); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if _, err := gc.Users().ByUserId(id).Get(ctx, nil); err != nil {
		t.Errorf("restored user: %v", err)
	}
	_ = gc.Users().ByUserId(id).Delete(ctx, nil)
	if err := gc.Directory().DeletedItems().ByDirectoryObjectId(id).Delete(ctx, nil); err != nil {
		t.Fatalf("purge: %v", err)
	}
	if _, err := gc.Directory().DeletedItems().ByDirectoryObjectId(id).Get(ctx, nil); odataCode(err) != "Request_ResourceNotFound" {
		t.Errorf("purged item: %v", err)
	}

	// $count through the SDK, with its ConsistencyLevel header.
	hdr := newHeaders("ConsistencyLevel", "eventual")
	cnt, err := gc.Users().Count().Get(ctx, &users.CountRequestBuilderGetRequestConfiguration{Headers: hdr})
	if err != nil || *cnt != 60 {
		t.Errorf("count: %v %v", cnt, err)
	}

	// Delta through the SDK's page iterator with the delta response factory.
	dr, err := gc.Users().Delta().GetAsDeltaGetResponse(ctx, &users.DeltaRequestBuilderGetRequestConfiguration{QueryParameters: &users.DeltaRequestBuilderGetQueryParameters{Select: []string{"id", "displayName"}}})
	if err != nil {
		t.Fatalf("users delta: %v", err)
	}
	dit, err := msgraphcore.NewPageIterator[models.Userable](dr, adapter, users.CreateDeltaGetResponseFromDiscriminatorValue)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	if err := dit.Iterate(ctx, func(u models.Userable) bool { seen++; return true }); err != nil {
		t.Fatal(err)
	}
	if seen != 60 || dit.GetOdataDeltaLink() == nil {
		t.Errorf("delta walk: %d users, deltaLink %v", seen, dit.GetOdataDeltaLink())
	}
	_ = directory.NewDeletedItemsRequestBuilder
}

func newHeaders(kv ...string) *abstractions.RequestHeaders {
	h := abstractions.NewRequestHeaders()
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

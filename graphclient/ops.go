package graphclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	abstractions "github.com/microsoft/kiota-abstractions-go"
	"github.com/microsoftgraph/msgraph-sdk-go/groups"
	"github.com/microsoftgraph/msgraph-sdk-go/models"
	"github.com/microsoftgraph/msgraph-sdk-go/users"
)

// Removal reasons in delta.
const (
	RemovedSoft = "changed" // in the recycle bin, restorable for 30 days
	RemovedHard = "deleted" // gone for good
)

// UserChange is one entry of a user delta round.
type UserChange struct {
	ID string
	// Removed is "", RemovedSoft or RemovedHard.
	Removed string
	// User is set unless Removed.
	User *User
}

// DeltaPage is called with each page of a delta round; returning an error
// stops the round.
type DeltaPage[T any] func(changes []T) error

// GroupChange is one group of a group delta round, its member slices merged
// across entries and pages.
type GroupChange struct {
	ID      string
	Removed string
	// Group is set unless Removed (it may lack properties if the round saw
	// only member changes of a group: then Partial is true).
	Group   *Group
	Partial bool
	// MembersAdded and MembersRemoved are member ids (users and groups).
	MembersAdded   []string
	MembersRemoved []string
}

// deltaURL is where a delta round starts: the stored link, or a new round
// ("") or a tracking point ("latest") with the selected properties. A
// stored link that is not https on the instance's Graph host (state
// written by someone else) is dropped: the error matches ErrDeltaExpired,
// so the caller runs a full round, and ErrForeignHost.
func (c *Client) deltaURL(op, set, link string, sel []string) (string, error) {
	switch link {
	case "":
		return c.graphURL + "/" + set + "/delta?$select=" + strings.Join(sel, ","), nil
	case "latest":
		return c.graphURL + "/" + set + "/delta?$deltatoken=latest&$select=" + strings.Join(sel, ","), nil
	}
	if !c.OwnsLink(link) {
		u, _ := url.Parse(link)
		c.log.Warn("graph: the stored delta link is not on the instance's Graph host; dropped for a full round", "op", op, "link_host", where(u), "graph_host", c.graphHost)
		e := c.foreignErr(u, "the stored delta link to")
		e.Op, e.reason = op, ErrDeltaExpired
		e.Message += "; dropped, a full round follows"
		return "", e
	}
	return link, nil
}

// SubscribedSKUs returns the tenant's licences.
func (c *Client) SubscribedSKUs(ctx context.Context) ([]SKU, error) {
	resp, err := c.Graph.SubscribedSkus().Get(ctx, nil)
	if err != nil {
		return nil, fromSDK("list subscribed SKUs", err)
	}
	if resp == nil {
		return nil, noContent("list subscribed SKUs")
	}
	out := make([]SKU, 0, len(resp.GetValue()))
	for _, s := range resp.GetValue() {
		if s != nil {
			out = append(out, skuFrom(s))
		}
	}
	c.skus.remember(out)
	return out, nil
}

// FindSKU resolves a skuId or a skuPartNumber.
func (c *Client) FindSKU(ctx context.Context, ref string) (*SKU, error) {
	skus, err := c.SubscribedSKUs(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for i, s := range skus {
		if strings.EqualFold(s.SkuID, ref) || strings.EqualFold(s.SkuPartNumber, ref) {
			return &skus[i], nil
		}
		names = append(names, s.SkuPartNumber)
	}
	sort.Strings(names)
	return nil, &Error{Op: "find licence " + ref, Status: http.StatusNotFound, Code: "Request_ResourceNotFound",
		Message: fmt.Sprintf("the tenant has no subscription %q (it has %s)", ref, strings.Join(names, ", "))}
}

// GetUser reads a user by object id or UPN.
func (c *Client) GetUser(ctx context.Context, ref string) (*User, error) {
	u, err := c.Graph.Users().ByUserId(ref).Get(ctx, &users.UserItemRequestBuilderGetRequestConfiguration{
		QueryParameters: &users.UserItemRequestBuilderGetQueryParameters{Select: UserSelect}})
	if err != nil {
		return nil, fromSDK("read user "+ref, err)
	}
	if u == nil {
		return nil, noContent("read user " + ref)
	}
	rec := userFrom(u)
	return &rec, nil
}

// GetGroup reads a group by object id, or by mail nickname.
func (c *Client) GetGroup(ctx context.Context, ref string) (*Group, error) {
	if isGUID(ref) {
		g, err := c.Graph.Groups().ByGroupId(ref).Get(ctx, &groups.GroupItemRequestBuilderGetRequestConfiguration{
			QueryParameters: &groups.GroupItemRequestBuilderGetQueryParameters{Select: GroupSelect}})
		if err != nil {
			return nil, fromSDK("read group "+ref, err)
		}
		if g == nil {
			return nil, noContent("read group " + ref)
		}
		rec := groupFrom(g)
		return &rec, nil
	}
	filter := "mailNickname eq '" + strings.ReplaceAll(ref, "'", "''") + "'"
	resp, err := c.Graph.Groups().Get(ctx, &groups.GroupsRequestBuilderGetRequestConfiguration{
		QueryParameters: &groups.GroupsRequestBuilderGetQueryParameters{Select: GroupSelect, Filter: &filter}})
	if err != nil {
		return nil, fromSDK("find group "+ref, err)
	}
	if resp == nil {
		return nil, noContent("find group " + ref)
	}
	if len(resp.GetValue()) == 0 || resp.GetValue()[0] == nil {
		return nil, &Error{Op: "find group " + ref, Status: http.StatusNotFound, Code: "Request_ResourceNotFound", Message: "no group with mail nickname " + ref}
	}
	rec := groupFrom(resp.GetValue()[0])
	return &rec, nil
}

func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
	}
	return true
}

// NewUser is what CreateUser needs. Password is never logged.
type NewUser struct {
	DisplayName, UserPrincipalName, MailNickname string
	GivenName, Surname, JobTitle, Department     string
	OfficeLocation, MobilePhone, UsageLocation   string
	AccountEnabled                               bool
	Password                                     string
	ForceChangePassword                          bool
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// CreateUser creates a user.
func (c *Client) CreateUser(ctx context.Context, n NewUser) (*User, error) {
	u := models.NewUser()
	u.SetDisplayName(&n.DisplayName)
	u.SetUserPrincipalName(&n.UserPrincipalName)
	u.SetMailNickname(&n.MailNickname)
	u.SetAccountEnabled(&n.AccountEnabled)
	// Unset fields are left out, not sent as null: usageLocation is "Not
	// nullable" (its description), and Graph gives the others their
	// defaults.
	for _, f := range []struct {
		v   string
		set func(*string)
	}{{n.GivenName, u.SetGivenName}, {n.Surname, u.SetSurname}, {n.JobTitle, u.SetJobTitle}, {n.Department, u.SetDepartment},
		{n.OfficeLocation, u.SetOfficeLocation}, {n.MobilePhone, u.SetMobilePhone}, {n.UsageLocation, u.SetUsageLocation}} {
		if f.v != "" {
			f.set(&f.v)
		}
	}
	pp := models.NewPasswordProfile()
	pp.SetPassword(&n.Password)
	pp.SetForceChangePasswordNextSignIn(&n.ForceChangePassword)
	u.SetPasswordProfile(pp)
	created, err := c.Graph.Users().Post(ctx, u, nil)
	if err != nil {
		return nil, fromSDK("create user "+n.UserPrincipalName, err)
	}
	if created == nil {
		return nil, noContent("create user " + n.UserPrincipalName)
	}
	rec := userFrom(created)
	return &rec, nil
}

// UserPatch lists the properties to change; nil fields stay, a pointer to
// "" clears an optional property.
type UserPatch struct {
	DisplayName, UserPrincipalName, MailNickname, GivenName, Surname *string
	JobTitle, Department, OfficeLocation, MobilePhone, UsageLocation *string
	AccountEnabled                                                   *bool
}

// UpdateUser changes a user's properties.
func (c *Client) UpdateUser(ctx context.Context, id string, p UserPatch) error {
	u := models.NewUser()
	clear := map[string]any{}
	set := func(name string, v *string, f func(*string)) {
		switch {
		case v == nil:
		case *v == "":
			clear[name] = nil // sent as JSON null
		default:
			f(v)
		}
	}
	set("displayName", p.DisplayName, u.SetDisplayName)
	set("userPrincipalName", p.UserPrincipalName, u.SetUserPrincipalName)
	set("mailNickname", p.MailNickname, u.SetMailNickname)
	set("givenName", p.GivenName, u.SetGivenName)
	set("surname", p.Surname, u.SetSurname)
	set("jobTitle", p.JobTitle, u.SetJobTitle)
	set("department", p.Department, u.SetDepartment)
	set("officeLocation", p.OfficeLocation, u.SetOfficeLocation)
	set("mobilePhone", p.MobilePhone, u.SetMobilePhone)
	set("usageLocation", p.UsageLocation, u.SetUsageLocation)
	if len(clear) > 0 {
		u.SetAdditionalData(clear)
	}
	if p.AccountEnabled != nil {
		u.SetAccountEnabled(p.AccountEnabled)
	}
	if _, err := c.Graph.Users().ByUserId(id).Patch(ctx, u, nil); err != nil {
		return fromSDK("update user "+id, err)
	}
	return nil
}

// SetPassword sets a user's password (a password reset). Needs the User
// Administrator directory role on top of User.ReadWrite.All.
func (c *Client) SetPassword(ctx context.Context, id, password string, forceChange bool) error {
	u := models.NewUser()
	pp := models.NewPasswordProfile()
	pp.SetPassword(&password)
	pp.SetForceChangePasswordNextSignIn(&forceChange)
	u.SetPasswordProfile(pp)
	if _, err := c.Graph.Users().ByUserId(id).Patch(ctx, u, nil); err != nil {
		e := fromSDK("reset the password of "+id, err)
		withHint(e, ErrForbidden, "the app needs the User Administrator directory role (Privileged Authentication Administrator for admins) besides User.ReadWrite.All")
		return e
	}
	return nil
}

// DeleteUser moves a user to the recycle bin.
func (c *Client) DeleteUser(ctx context.Context, id string) error {
	if err := c.Graph.Users().ByUserId(id).Delete(ctx, nil); err != nil {
		return fromSDK("delete user "+id, err)
	}
	return nil
}

// DeletedUser reads a user from the recycle bin.
func (c *Client) DeletedUser(ctx context.Context, id string) (*User, error) {
	o, err := c.Graph.Directory().DeletedItems().ByDirectoryObjectId(id).Get(ctx, nil)
	if err != nil {
		return nil, fromSDK("read deleted item "+id, err)
	}
	if o == nil {
		return nil, noContent("read deleted item " + id)
	}
	rec := User{ID: str(o.GetId())}
	if u, ok := o.(models.Userable); ok {
		rec = userFrom(u)
	}
	return &rec, nil
}

// Restore brings a user or group back from the recycle bin.
func (c *Client) Restore(ctx context.Context, id string) error {
	if _, err := c.Graph.Directory().DeletedItems().ByDirectoryObjectId(id).Restore().Post(ctx, nil); err != nil {
		return fromSDK("restore "+id, err)
	}
	return nil
}

// LicenseChange is one licence to add.
type LicenseChange struct {
	SkuID         string
	DisabledPlans []string
}

// AssignLicense adds and removes licences (skuIds) of a user.
func (c *Client) AssignLicense(ctx context.Context, id string, add []LicenseChange, remove []string) error {
	body := users.NewItemAssignLicensePostRequestBody()
	var adds []models.AssignedLicenseable
	for _, a := range add {
		sku, err := parseUUIDs([]string{a.SkuID})
		if err != nil {
			return &Error{Op: "assign licence", Message: "skuId " + a.SkuID + " is not a GUID"}
		}
		plans, err := parseUUIDs(a.DisabledPlans)
		if err != nil {
			return &Error{Op: "assign licence", Message: "a disabled plan is not a GUID"}
		}
		l := models.NewAssignedLicense()
		l.SetSkuId(&sku[0])
		l.SetDisabledPlans(plans)
		adds = append(adds, l)
	}
	rm, err := parseUUIDs(remove)
	if err != nil {
		return &Error{Op: "remove licence", Message: "a skuId to remove is not a GUID"}
	}
	body.SetAddLicenses(adds)
	body.SetRemoveLicenses(rm)
	if adds == nil {
		body.SetAddLicenses([]models.AssignedLicenseable{})
	}
	if _, err := c.Graph.Users().ByUserId(id).AssignLicense().Post(ctx, body, nil); err != nil {
		e := fromSDK("change licences of "+id, err)
		withHint(e, ErrUsageLocation, "the user has no usage location: set usage_location (ISO country code) first")
		withHint(e, ErrNoFreeSeat, "no free seat left in the subscription")
		return e
	}
	return nil
}

// NewGroup is what CreateGroup needs.
type NewGroup struct {
	DisplayName, MailNickname, Description string
	// Unified makes a Microsoft 365 group; otherwise a security group.
	Unified    bool
	Visibility string
	// Members are user object ids bound at creation.
	Members []string
}

// CreateGroup creates a security or Microsoft 365 group.
func (c *Client) CreateGroup(ctx context.Context, n NewGroup) (*Group, error) {
	g := models.NewGroup()
	g.SetDisplayName(&n.DisplayName)
	g.SetMailNickname(&n.MailNickname)
	if n.Description != "" {
		g.SetDescription(&n.Description)
	}
	mail, sec := n.Unified, !n.Unified
	g.SetMailEnabled(&mail)
	g.SetSecurityEnabled(&sec)
	if n.Unified {
		g.SetGroupTypes([]string{"Unified"})
		if n.Visibility != "" {
			g.SetVisibility(&n.Visibility)
		}
	} else {
		g.SetGroupTypes([]string{})
	}
	if len(n.Members) > 0 {
		binds := make([]string, len(n.Members))
		for i, m := range n.Members {
			binds[i] = c.graphURL + "/directoryObjects/" + m
		}
		g.SetAdditionalData(map[string]any{"members@odata.bind": binds})
	}
	created, err := c.Graph.Groups().Post(ctx, g, nil)
	if err != nil {
		return nil, fromSDK("create group "+n.MailNickname, err)
	}
	if created == nil {
		return nil, noContent("create group " + n.MailNickname)
	}
	rec := groupFrom(created)
	return &rec, nil
}

// GroupPatch lists the properties to change.
type GroupPatch struct {
	DisplayName, MailNickname, Description, Visibility *string
}

// UpdateGroup changes a group.
func (c *Client) UpdateGroup(ctx context.Context, id string, p GroupPatch) error {
	g := models.NewGroup()
	if p.DisplayName != nil {
		g.SetDisplayName(p.DisplayName)
	}
	if p.MailNickname != nil {
		g.SetMailNickname(p.MailNickname)
	}
	if p.Description != nil {
		g.SetDescription(optional(*p.Description))
	}
	if p.Visibility != nil {
		g.SetVisibility(p.Visibility)
	}
	if _, err := c.Graph.Groups().ByGroupId(id).Patch(ctx, g, nil); err != nil {
		return fromSDK("update group "+id, err)
	}
	return nil
}

// DeleteGroup deletes a group (restorable for 30 days).
func (c *Client) DeleteGroup(ctx context.Context, id string) error {
	if err := c.Graph.Groups().ByGroupId(id).Delete(ctx, nil); err != nil {
		return fromSDK("delete group "+id, err)
	}
	return nil
}

// AddMember adds a directory object to a group.
func (c *Client) AddMember(ctx context.Context, groupID, memberID string) error {
	ref := models.NewReferenceCreate()
	u := c.graphURL + "/directoryObjects/" + memberID
	ref.SetOdataId(&u)
	if err := c.Graph.Groups().ByGroupId(groupID).Members().Ref().Post(ctx, ref, nil); err != nil {
		e := fromSDK("add "+memberID+" to group "+groupID, err)
		withHint(e, ErrDynamicGroup, "the group's membership is rule-based (dynamic): change the rule, not the members")
		return e
	}
	return nil
}

// RemoveMember removes a member from a group.
func (c *Client) RemoveMember(ctx context.Context, groupID, memberID string) error {
	if err := c.Graph.Groups().ByGroupId(groupID).Members().ByDirectoryObjectId(memberID).Ref().Delete(ctx, nil); err != nil {
		return fromSDK("remove "+memberID+" from group "+groupID, err)
	}
	return nil
}

// IsMember reports whether memberID is a direct member of the group. The
// $filter on a group's members is an advanced query: group-list-members
// (learn.microsoft.com/graph/api/group-list-members) requires
// ConsistencyLevel: eventual and $count=true with it, so a member added
// seconds ago may not show yet.
func (c *Client) IsMember(ctx context.Context, groupID, memberID string) (bool, error) {
	filter := "id eq '" + memberID + "'"
	count := true
	resp, err := c.Graph.Groups().ByGroupId(groupID).Members().Get(ctx, &groups.ItemMembersRequestBuilderGetRequestConfiguration{
		Headers:         eventual(),
		QueryParameters: &groups.ItemMembersRequestBuilderGetQueryParameters{Filter: &filter, Select: []string{"id"}, Count: &count}})
	if err != nil {
		return false, fromSDK("check membership of "+memberID+" in "+groupID, err)
	}
	if resp == nil {
		return false, noContent("check membership of " + memberID + " in " + groupID)
	}
	for _, m := range resp.GetValue() {
		if m != nil && str(m.GetId()) == memberID {
			return true, nil
		}
	}
	return false, nil
}

func eventual() *abstractions.RequestHeaders {
	h := abstractions.NewRequestHeaders()
	h.Add("ConsistencyLevel", "eventual")
	return h
}

// Counts are the directory counts behind the indicators.
type Counts struct {
	Users, UsersEnabled, UsersLicensed, Groups int
}

// CountDirectory counts users (all, enabled, licensed) and groups with
// $count and ConsistencyLevel: eventual (the counts may lag by seconds).
func (c *Client) CountDirectory(ctx context.Context) (Counts, error) {
	var out Counts
	var err error
	if out.Users, err = c.countUsers(ctx, "count users", ""); err != nil {
		return out, err
	}
	if out.UsersEnabled, err = c.countUsers(ctx, "count enabled users", "accountEnabled eq true"); err != nil {
		return out, err
	}
	if out.UsersLicensed, err = c.countUsers(ctx, "count licensed users", "assignedLicenses/$count ne 0"); err != nil {
		return out, err
	}
	n, err := c.Graph.Groups().Count().Get(ctx, &groups.CountRequestBuilderGetRequestConfiguration{Headers: eventual()})
	out.Groups, err = countOf("count groups", n, err)
	return out, err
}

// countUsers counts the users matching filter ("" for all).
func (c *Client) countUsers(ctx context.Context, op, filter string) (int, error) {
	cfg := &users.CountRequestBuilderGetRequestConfiguration{Headers: eventual()}
	if filter != "" {
		cfg.QueryParameters = &users.CountRequestBuilderGetQueryParameters{Filter: &filter}
	}
	n, err := c.Graph.Users().Count().Get(ctx, cfg)
	return countOf(op, n, err)
}

// countOf is the SDK's answer to a $count, which is nil on a 204.
func countOf(op string, n *int32, err error) (int, error) {
	if err != nil {
		return 0, fromSDK(op, err)
	}
	if n == nil {
		return 0, noContent(op)
	}
	return int(*n), nil
}

// noContent is the error for an SDK call that gave no value (Graph
// answered 204 No Content) where one was due.
func noContent(op string) *Error {
	return badResponse(op, http.StatusNoContent, "Graph answered without a body where a value was due")
}

// withHint adds hint to err when it matches target.
func withHint(err error, target error, hint string) {
	var ge *Error
	if errors.As(err, &ge) && errors.Is(ge, target) {
		ge.Hint = hint
	}
}

// BatchRequest is one item of a JSON batch.
type BatchRequest struct {
	ID        string            `json:"id"`
	Method    string            `json:"method"`
	URL       string            `json:"url"` // relative to /v1.0, e.g. "/users/{id}"
	Headers   map[string]string `json:"headers,omitempty"`
	Body      any               `json:"body,omitempty"`
	DependsOn []string          `json:"dependsOn,omitempty"`
}

// BatchResponse is one item's answer.
type BatchResponse struct {
	ID      string            `json:"id"`
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    json.RawMessage   `json:"body"`
}

// Err returns the item's error, or nil for a 2xx.
func (r BatchResponse) Err() error {
	if r.Status < 300 {
		return nil
	}
	return graphError("batch item "+r.ID, r.Status, r.Body, r.Headers["Retry-After"])
}

// Batch sends up to 20 requests as one $batch, retrying throttled (429)
// items after their Retry-After until every item has a final answer or the
// attempts run out. Responses come back in request order.
func (c *Client) Batch(ctx context.Context, reqs []BatchRequest) ([]BatchResponse, error) {
	if len(reqs) > 20 {
		return nil, &Error{Op: "batch", Message: fmt.Sprintf("%d requests; a batch takes at most 20", len(reqs))}
	}
	final := map[string]BatchResponse{}
	pending := reqs
	for attempt := 1; len(pending) > 0; attempt++ {
		out, err := c.sendBatch(ctx, pending)
		if err != nil {
			return nil, err
		}
		var retry []BatchRequest
		var wait time.Duration
		byID := map[string]BatchRequest{}
		for _, r := range pending {
			byID[r.ID] = r
		}
		for _, r := range out {
			if ra, _ := strconv.Atoi(r.Headers["x-ms-resource-unit"]); ra > 0 {
				c.counters.ru.Add(int64(ra))
			}
			if r.Status == http.StatusTooManyRequests && attempt < 5 {
				c.counters.throttled.Add(1)
				c.counters.retries.Add(1)
				d, ok := parseRetryAfter(http.Header{"Retry-After": {r.Headers["Retry-After"]}}, time.Now())
				if !ok {
					d = time.Duration(attempt) * time.Second
				}
				c.tenant.throttled(d)
				wait = max(wait, d)
				retry = append(retry, byID[r.ID])
				continue
			}
			final[r.ID] = r
		}
		// Dependents of a retried item (424) are retried with it.
		retried := map[string]bool{}
		for _, r := range retry {
			retried[r.ID] = true
		}
		for _, r := range pending {
			if f, ok := final[r.ID]; ok && f.Status == http.StatusFailedDependency {
				for _, d := range r.DependsOn {
					if retried[d] {
						delete(final, r.ID)
						retry = append(retry, r)
						retried[r.ID] = true
						break
					}
				}
			}
		}
		idx := map[string]int{}
		for i, r := range reqs {
			idx[r.ID] = i
		}
		sort.Slice(retry, func(i, j int) bool { return idx[retry[i].ID] < idx[retry[j].ID] })
		pending = retry
		if len(pending) > 0 {
			if err := sleepCtx(ctx, wait); err != nil {
				return nil, err
			}
		}
	}
	res := make([]BatchResponse, 0, len(reqs))
	for _, r := range reqs {
		res = append(res, final[r.ID])
	}
	return res, nil
}

// sendBatch posts one $batch envelope and reads its items' answers.
func (c *Client) sendBatch(ctx context.Context, reqs []BatchRequest) ([]BatchResponse, error) {
	b, _ := json.Marshal(map[string]any{"requests": reqs})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.graphURL+"/$batch", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fromSDK("batch", unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, c.responseError("batch", resp)
	}
	var out struct {
		Responses []BatchResponse `json:"responses"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, c.limits.pageBytes+1)).Decode(&out); err != nil {
		return nil, readError("batch", "unreadable batch response", err)
	}
	return out.Responses, nil
}

func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// MemberIDs lists a group's direct member ids, sorted.
func (c *Client) MemberIDs(ctx context.Context, groupID string) ([]string, error) {
	top := int32(999)
	resp, err := c.Graph.Groups().ByGroupId(groupID).Members().Get(ctx, &groups.ItemMembersRequestBuilderGetRequestConfiguration{
		QueryParameters: &groups.ItemMembersRequestBuilderGetQueryParameters{Select: []string{"id"}, Top: &top}})
	op := "list members of " + groupID
	w := c.walk(op, "")
	var ids []string
	for {
		if err != nil {
			return nil, fromSDK(op, err)
		}
		if resp == nil {
			return nil, noContent(op)
		}
		for _, m := range resp.GetValue() {
			if m != nil {
				ids = append(ids, str(m.GetId()))
			}
		}
		next := resp.GetOdataNextLink()
		if next == nil || *next == "" {
			break
		}
		if err := w.next(*next); err != nil {
			return nil, err
		}
		resp, err = c.Graph.Groups().ByGroupId(groupID).Members().WithUrl(*next).Get(ctx, nil)
	}
	sort.Strings(ids)
	return ids, nil
}

// RecycledID returns the id of a deleted user (or group) in the recycle bin,
// named by id, UPN or mail nickname; "" when it is not there.
func (c *Client) RecycledID(ctx context.Context, ref string, group bool) (string, error) {
	if isGUID(ref) {
		o, err := c.Graph.Directory().DeletedItems().ByDirectoryObjectId(ref).Get(ctx, nil)
		if err == nil && o == nil {
			return "", noContent("read deleted item " + ref)
		}
		if err == nil {
			return ref, nil
		}
		if e := fromSDK("read deleted item "+ref, err); errors.Is(e, ErrNotFound) {
			return "", nil
		} else {
			return "", e
		}
	}
	prop, path := "userPrincipalName", "/directory/deletedItems/microsoft.graph.user"
	if group {
		prop, path = "mailNickname", "/directory/deletedItems/microsoft.graph.group"
	}
	u := c.graphURL + path + "?$select=id&$filter=" + url.QueryEscape(prop+" eq '"+strings.ReplaceAll(ref, "'", "''")+"'")
	p, err := getPage[struct {
		ID string `json:"id"`
	}](ctx, c, "search the recycle bin", u)
	if err != nil || len(p.Value) == 0 {
		return "", err
	}
	return p.Value[0].ID, nil
}

// CountUsers counts the tenant's users ($count, eventually consistent).
func (c *Client) CountUsers(ctx context.Context) (int, error) {
	return c.countUsers(ctx, "count users", "")
}

// CountGroups counts the tenant's groups ($count, eventually consistent).
func (c *Client) CountGroups(ctx context.Context) (int, error) {
	n, err := c.Graph.Groups().Count().Get(ctx, &groups.CountRequestBuilderGetRequestConfiguration{Headers: eventual()})
	return countOf("count groups", n, err)
}

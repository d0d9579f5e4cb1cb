package graphsim

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

var groupDefaults = []string{"description", "displayName", "groupTypes", "mail", "mailEnabled", "mailNickname", "securityEnabled", "visibility", "membershipRule", "createdDateTime"}

var groupWritable = map[string]bool{"displayName": true, "description": true, "mailNickname": true, "mailEnabled": true, "securityEnabled": true,
	"groupTypes": true, "visibility": true, "members@odata.bind": true, "owners@odata.bind": true, "membershipRule": true, "membershipRuleProcessingState": true}

func groupProps(g *Group) map[string]any {
	return map[string]any{
		"id": g.ID, "displayName": g.DisplayName, "description": g.Description, "mail": g.Mail, "mailNickname": g.MailNickname,
		"mailEnabled": g.MailEnabled, "securityEnabled": g.SecurityEnabled, "groupTypes": nonNil(g.GroupTypes),
		"visibility": g.Visibility, "membershipRule": g.MembershipRule, "createdDateTime": g.CreatedDateTime.UTC().Format(time.RFC3339),
	}
}

func (c *gctx) findGroup(key string) *Group {
	g := c.t.groups[key]
	if g == nil || !c.visible(g.visibleAt) {
		return nil
	}
	return g
}

func (c *gctx) listGroups() (*response, *apiError) {
	if e := c.require(readRoles("groups")...); e != nil {
		return nil, e
	}
	ids := c.t.sortedGroupIDs()
	vis := ids[:0:0]
	for _, id := range ids {
		if c.visible(c.t.groups[id].visibleAt) {
			vis = append(vis, id)
		}
	}
	return c.list("groups", "group", vis, func(id string) map[string]any { return groupProps(c.t.groups[id]) },
		func(id, p string) any { return groupProps(c.t.groups[id])[p] }, groupDefaults)
}

func (c *gctx) getGroup(key string) (*response, *apiError) {
	if e := c.require(readRoles("groups")...); e != nil {
		return nil, e
	}
	g := c.findGroup(key)
	if g == nil {
		return nil, notFound("group", key)
	}
	p, e := project(groupProps(g), c.q.selects, groupDefaults, "group")
	if e != nil {
		return nil, e
	}
	p["@odata.context"] = c.context("groups/$entity")
	c.objects = 1
	return &response{status: 200, body: p}, nil
}

func (c *gctx) createGroup() (*response, *apiError) {
	if e := c.require("Group.ReadWrite.All", "Directory.ReadWrite.All", "Group.Create"); e != nil {
		return nil, e
	}
	m, e := decodeStrict(c.body, "group", groupWritable)
	if e != nil {
		return nil, e
	}
	for _, req := range []string{"displayName", "mailEnabled", "mailNickname", "securityEnabled"} {
		if _, ok := m[req]; !ok {
			return nil, newErr(400, "Request_BadRequest", fmt.Sprintf("Property '%s' is required when creating the resource.", req))
		}
	}
	g := &Group{Members: map[string]bool{}, GroupTypes: []string{}, CreatedDateTime: time.Now().UTC().Truncate(time.Second)}
	if e := c.applyGroup(g, m); e != nil {
		return nil, e
	}
	unified := false
	for _, t := range g.GroupTypes {
		if t == "Unified" {
			unified = true
		}
	}
	if g.MailEnabled && !unified {
		return nil, newErr(400, "Request_BadRequest", "Creating mail-enabled security groups or distribution groups is not supported through Microsoft Graph.")
	}
	if unified {
		g.Mail = strp(g.MailNickname + "@" + c.t.DefaultDomain())
		if g.Visibility == nil {
			g.Visibility = strp("Public")
		}
	} else if g.Visibility != nil {
		return nil, newErr(400, "Request_BadRequest", "Visibility can only be set on Microsoft 365 groups.")
	}
	var members []string
	if raw, ok := m["members@odata.bind"]; ok {
		var binds []string
		if err := json.Unmarshal(raw, &binds); err != nil {
			return nil, newErr(400, "BadRequest", "Invalid members@odata.bind.")
		}
		for _, b := range binds {
			id := b[strings.LastIndex(b, "/")+1:]
			if c.findUser(id) == nil {
				return nil, notFound("directoryObject", id)
			}
			members = append(members, id)
		}
	}
	g.ID = newID()
	g.visibleAt = time.Now().Add(c.s.opts.ConsistencyDelay)
	c.t.lastVisibleAt = maxTime(c.t.lastVisibleAt, g.visibleAt)
	c.t.addGroup(g)
	for _, id := range members {
		c.t.setMember(g, id, true)
	}
	p, _ := project(groupProps(g), nil, groupDefaults, "group")
	p["@odata.context"] = c.context("groups/$entity")
	c.objects = 1
	return &response{status: 201, body: p}, nil
}

func (c *gctx) applyGroup(g *Group, m map[string]json.RawMessage) *apiError {
	for _, k := range []string{"mailEnabled", "securityEnabled"} {
		if raw, ok := m[k]; ok {
			dst := &g.MailEnabled
			if k == "securityEnabled" {
				dst = &g.SecurityEnabled
			}
			if err := json.Unmarshal(raw, dst); err != nil {
				return newErr(400, "Request_BadRequest", fmt.Sprintf("Invalid value specified for property '%s' of resource 'Group'.", k))
			}
		}
	}
	if raw, ok := m["groupTypes"]; ok {
		if err := json.Unmarshal(raw, &g.GroupTypes); err != nil {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'groupTypes' of resource 'Group'.")
		}
		g.GroupTypes = nonNil(g.GroupTypes)
	}
	if v, ok, e := str(m, "displayName"); e != nil {
		return e
	} else if ok {
		if v == nil || strings.TrimSpace(*v) == "" {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'displayName' of resource 'Group'.")
		}
		g.DisplayName = *v
	}
	if v, ok, e := str(m, "mailNickname"); e != nil {
		return e
	} else if ok {
		if v == nil || *v == "" || len(*v) > 64 || strings.ContainsAny(*v, "@()\\[]\";:<>, ") {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'mailNickname' of resource 'Group'.")
		}
		if id, taken := c.t.nickname[strings.ToLower(*v)]; taken && id != g.ID {
			e := newErr(400, "Request_BadRequest", "Another object with the same value for property mailNickname already exists.")
			e.details = []map[string]string{{"code": "ObjectConflict", "target": "mailNickname"}}
			return e
		}
		if g.ID != "" {
			delete(c.t.nickname, strings.ToLower(g.MailNickname))
			c.t.nickname[strings.ToLower(*v)] = g.ID
		}
		g.MailNickname = *v
	}
	if v, ok, e := str(m, "description"); e != nil {
		return e
	} else if ok {
		g.Description = v
	}
	if v, ok, e := str(m, "visibility"); e != nil {
		return e
	} else if ok {
		if v != nil && *v != "Public" && *v != "Private" && *v != "HiddenMembership" {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'visibility' of resource 'Group'.")
		}
		g.Visibility = v
	}
	if v, ok, e := str(m, "membershipRule"); e != nil {
		return e
	} else if ok {
		g.MembershipRule = v
	}
	return nil
}

func (c *gctx) updateGroup(key string) (*response, *apiError) {
	if e := c.require("Group.ReadWrite.All", "Directory.ReadWrite.All"); e != nil {
		return nil, e
	}
	g := c.findGroup(key)
	if g == nil {
		return nil, notFound("group", key)
	}
	m, e := decodeStrict(c.body, "group", groupWritable)
	if e != nil {
		return nil, e
	}
	cp := *g
	if e := c.applyGroup(&cp, m); e != nil {
		return nil, e
	}
	*g = cp
	c.t.touchGroup(g)
	return &response{status: 204}, nil
}

func (c *gctx) deleteGroup(key string) (*response, *apiError) {
	if e := c.require("Group.ReadWrite.All", "Directory.ReadWrite.All"); e != nil {
		return nil, e
	}
	g := c.findGroup(key)
	if g == nil {
		return nil, notFound("group", key)
	}
	c.t.removeGroup(g, true, time.Now())
	return &response{status: 204}, nil
}

func (c *gctx) listMembers(key string) (*response, *apiError) {
	if e := c.require(append(readRoles("groups"), "GroupMember.Read.All")...); e != nil {
		return nil, e
	}
	g := c.findGroup(key)
	if g == nil {
		return nil, notFound("group", key)
	}
	ids := g.MemberIDs()
	props := func(id string) map[string]any {
		if u := c.t.users[id]; u != nil {
			p := c.userProps(u)
			p["@odata.type"] = "#microsoft.graph.user"
			return p
		}
		return map[string]any{"id": id, "@odata.type": "#microsoft.graph.directoryObject"}
	}
	return c.list("directoryObjects", "directoryObject", ids, props, func(id, p string) any { return props(id)[p] },
		append([]string{"@odata.type"}, userDefaults...))
}

func (c *gctx) addMember(key string) (*response, *apiError) {
	if e := c.require("Group.ReadWrite.All", "GroupMember.ReadWrite.All", "Directory.ReadWrite.All"); e != nil {
		return nil, e
	}
	g := c.findGroup(key)
	if g == nil {
		return nil, notFound("group", key)
	}
	var ref struct {
		ID string `json:"@odata.id"`
	}
	if err := json.Unmarshal(c.body, &ref); err != nil || ref.ID == "" {
		return nil, newErr(400, "Request_BadRequest", "Invalid object identifier ''.")
	}
	mid := ref.ID[strings.LastIndex(ref.ID, "/")+1:]
	if c.findUser(mid) == nil && c.findGroup(mid) == nil {
		return nil, notFound("directoryObject", mid)
	}
	if g.Dynamic() {
		return nil, newErr(400, "Request_BadRequest", "Insufficient privileges to complete the operation. Members of a group with dynamic membership cannot be changed.")
	}
	if g.Members[mid] {
		return nil, newErr(400, "Request_BadRequest", "One or more added object references already exist for the following modified properties: 'members'.")
	}
	c.t.setMember(g, mid, true)
	return &response{status: 204}, nil
}

func (c *gctx) removeMember(key, mid string) (*response, *apiError) {
	if e := c.require("Group.ReadWrite.All", "GroupMember.ReadWrite.All", "Directory.ReadWrite.All"); e != nil {
		return nil, e
	}
	g := c.findGroup(key)
	if g == nil {
		return nil, notFound("group", key)
	}
	if g.Dynamic() {
		return nil, newErr(400, "Request_BadRequest", "Insufficient privileges to complete the operation. Members of a group with dynamic membership cannot be changed.")
	}
	if !g.Members[mid] {
		return nil, notFound("directoryObject", mid)
	}
	c.t.setMember(g, mid, false)
	return &response{status: 204}, nil
}

func (c *gctx) subscribedSkus() (*response, *apiError) {
	if e := c.require("Directory.Read.All", "Organization.Read.All", "Directory.ReadWrite.All", "LicenseAssignment.ReadWrite.All"); e != nil {
		return nil, e
	}
	values := make([]map[string]any, 0, len(c.t.skus))
	used := c.t.consumedAll()
	for _, s := range c.t.skus {
		plans := make([]map[string]any, 0, len(s.Plans))
		for _, p := range s.Plans {
			plans = append(plans, map[string]any{"servicePlanId": p.ID, "servicePlanName": p.Name, "provisioningStatus": "Success", "appliesTo": "User"})
		}
		all := map[string]any{
			"id": c.t.ID + "_" + s.SkuID, "skuId": s.SkuID, "skuPartNumber": s.SkuPartNumber, "capabilityStatus": s.CapabilityStatus,
			"appliesTo": s.AppliesTo, "consumedUnits": used[s.SkuID], "accountId": s.AccountID, "accountName": s.AccountName,
			"subscriptionIds": s.SubscriptionIDs, "servicePlans": plans,
			"prepaidUnits": map[string]any{"enabled": s.Enabled, "suspended": s.Suspended, "warning": s.Warning, "lockedOut": s.LockedOut},
		}
		if c.q.hasSelect {
			p, e := project(all, c.q.selects, nil, "subscribedSku")
			if e != nil {
				return nil, e
			}
			all = p
		}
		values = append(values, all)
	}
	c.objects = len(values)
	return &response{status: 200, body: map[string]any{"@odata.context": c.context("subscribedSkus"), "value": values}}, nil
}

// --- recycle bin ------------------------------------------------------------

func (c *gctx) deletedProps(d deletedItem) map[string]any {
	var p map[string]any
	if d.user != nil {
		p = c.userProps(d.user)
		p["@odata.type"] = "#microsoft.graph.user"
	} else {
		p = groupProps(d.group)
		p["@odata.type"] = "#microsoft.graph.group"
	}
	p["deletedDateTime"] = d.deletedAt.UTC().Format(time.RFC3339)
	return p
}

func (c *gctx) listDeleted(users bool) (*response, *apiError) {
	if users {
		if e := c.require(readRoles("users")...); e != nil {
			return nil, e
		}
	} else if e := c.require(readRoles("groups")...); e != nil {
		return nil, e
	}
	var ids []string
	for id, d := range c.t.deleted {
		if (d.user != nil) == users {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	props := func(id string) map[string]any { return c.deletedProps(c.t.deleted[id]) }
	set := "directory/deletedItems/microsoft.graph.group"
	if users {
		set = "directory/deletedItems/microsoft.graph.user"
	}
	return c.list(set, "directoryObject", ids, props, func(id, p string) any { return props(id)[p] },
		[]string{"@odata.type", "displayName", "deletedDateTime", "userPrincipalName", "mailNickname"})
}

func (c *gctx) getDeleted(id string) (*response, *apiError) {
	if e := c.require("Directory.Read.All", "User.Read.All", "Group.Read.All", "User.ReadWrite.All", "Group.ReadWrite.All"); e != nil {
		return nil, e
	}
	d, ok := c.t.deleted[id]
	if !ok {
		return nil, notFound("directoryObject", id)
	}
	c.objects = 1
	p, e := project(c.deletedProps(d), c.q.selects, deletedDefaults(d), "directoryObject")
	if e != nil {
		return nil, e
	}
	p["@odata.context"] = c.context("directory/deletedItems/$entity")
	return &response{status: 200, body: p}, nil
}

func (c *gctx) requireWriteFor(d deletedItem) *apiError {
	if d.user != nil {
		return c.require("User.ReadWrite.All", "Directory.ReadWrite.All")
	}
	return c.require("Group.ReadWrite.All", "Directory.ReadWrite.All")
}

func (c *gctx) purgeDeleted(id string) (*response, *apiError) {
	d, ok := c.t.deleted[id]
	if !ok {
		return nil, notFound("directoryObject", id)
	}
	if e := c.requireWriteFor(d); e != nil {
		return nil, e
	}
	c.t.purge(id, d)
	return &response{status: 204}, nil
}

func (c *gctx) restoreDeleted(id string) (*response, *apiError) {
	d, ok := c.t.deleted[id]
	if !ok {
		return nil, notFound("directoryObject", id)
	}
	if e := c.requireWriteFor(d); e != nil {
		return nil, e
	}
	if d.user != nil {
		if _, taken := c.t.upn[strings.ToLower(d.user.UserPrincipalName)]; taken {
			return nil, newErr(400, "Request_BadRequest", "Another object with the same value for property userPrincipalName already exists.")
		}
		delete(c.t.deleted, id)
		c.t.addUser(d.user)
	} else {
		if _, taken := c.t.nickname[strings.ToLower(d.group.MailNickname)]; taken {
			return nil, newErr(400, "Request_BadRequest", "Another object with the same value for property mailNickname already exists.")
		}
		delete(c.t.deleted, id)
		c.t.addGroup(d.group)
	}
	all := c.deletedProps(d)
	delete(all, "deletedDateTime")
	p, _ := project(all, nil, deletedDefaults(d), "directoryObject")
	p["@odata.context"] = c.context("directoryObjects/$entity")
	c.objects = 1
	return &response{status: 200, body: p}, nil
}

// deletedDefaults is the default set of a recycled user or group, with its
// deletion date.
func deletedDefaults(d deletedItem) []string {
	if d.user != nil {
		return append([]string{"deletedDateTime"}, userDefaults...)
	}
	return append([]string{"deletedDateTime"}, groupDefaults...)
}

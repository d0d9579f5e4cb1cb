package graphsim

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"
)

// Snapshot is a tenant's ground truth, with Graph's property names.
type Snapshot struct {
	TenantID string          `json:"tenant_id"`
	Users    []SnapshotUser  `json:"users"`
	Groups   []SnapshotGroup `json:"groups"`
	SKUs     []SnapshotSKU   `json:"skus"`
	Deleted  []string        `json:"deleted"` // ids in the recycle bin
}

// SnapshotUser is a user as Graph reports it, licences with part numbers.
type SnapshotUser struct {
	ID                    string            `json:"id"`
	UserPrincipalName     string            `json:"userPrincipalName"`
	DisplayName           string            `json:"displayName"`
	GivenName             *string           `json:"givenName"`
	Surname               *string           `json:"surname"`
	Mail                  *string           `json:"mail"`
	JobTitle              *string           `json:"jobTitle"`
	Department            *string           `json:"department"`
	OfficeLocation        *string           `json:"officeLocation"`
	MobilePhone           *string           `json:"mobilePhone"`
	BusinessPhones        []string          `json:"businessPhones"`
	AccountEnabled        bool              `json:"accountEnabled"`
	UserType              string            `json:"userType"`
	UsageLocation         *string           `json:"usageLocation"`
	CreatedDateTime       time.Time         `json:"createdDateTime"`
	OnPremisesSyncEnabled *bool             `json:"onPremisesSyncEnabled"`
	AssignedLicenses      []SnapshotLicense `json:"assignedLicenses"`
}

// SnapshotLicense is an assigned licence.
type SnapshotLicense struct {
	SkuID         string   `json:"skuId"`
	SkuPartNumber string   `json:"skuPartNumber"`
	DisabledPlans []string `json:"disabledPlans"`
}

// SnapshotGroup is a group with its direct member ids (sorted).
type SnapshotGroup struct {
	ID              string    `json:"id"`
	DisplayName     string    `json:"displayName"`
	Description     *string   `json:"description"`
	Mail            *string   `json:"mail"`
	MailNickname    string    `json:"mailNickname"`
	MailEnabled     bool      `json:"mailEnabled"`
	SecurityEnabled bool      `json:"securityEnabled"`
	GroupTypes      []string  `json:"groupTypes"`
	Visibility      *string   `json:"visibility"`
	MembershipRule  *string   `json:"membershipRule"`
	CreatedDateTime time.Time `json:"createdDateTime"`
	Members         []string  `json:"members"`
}

// SnapshotSKU is a subscribed SKU with its seat counts.
type SnapshotSKU struct {
	SkuID            string `json:"skuId"`
	SkuPartNumber    string `json:"skuPartNumber"`
	CapabilityStatus string `json:"capabilityStatus"`
	Enabled          int    `json:"enabled"`
	Consumed         int    `json:"consumedUnits"`
}

// Export returns a tenant's ground truth (by id or domain).
func (s *Server) Export(tenant string) (*Snapshot, error) {
	t := s.tenant(tenant)
	if t == nil {
		return nil, fmt.Errorf("graphsim: no tenant %q", tenant)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := &Snapshot{TenantID: t.ID, Users: []SnapshotUser{}, Groups: []SnapshotGroup{}}
	for _, id := range t.sortedUserIDs() {
		u := t.users[id]
		su := SnapshotUser{ID: u.ID, UserPrincipalName: u.UserPrincipalName, DisplayName: u.DisplayName, GivenName: u.GivenName,
			Surname: u.Surname, Mail: u.Mail, JobTitle: u.JobTitle, Department: u.Department, OfficeLocation: u.OfficeLocation,
			MobilePhone: u.MobilePhone, BusinessPhones: nonNil(u.BusinessPhones), AccountEnabled: u.AccountEnabled, UserType: u.UserType,
			UsageLocation: u.UsageLocation, CreatedDateTime: u.CreatedDateTime.UTC(), OnPremisesSyncEnabled: u.OnPremisesSyncEnabled,
			AssignedLicenses: []SnapshotLicense{}}
		for _, l := range u.Licenses {
			part := ""
			if sku := t.skuByID(l.SkuID); sku != nil {
				part = sku.SkuPartNumber
			}
			su.AssignedLicenses = append(su.AssignedLicenses, SnapshotLicense{SkuID: l.SkuID, SkuPartNumber: part, DisabledPlans: nonNil(l.DisabledPlans)})
		}
		snap.Users = append(snap.Users, su)
	}
	for _, id := range t.sortedGroupIDs() {
		g := t.groups[id]
		snap.Groups = append(snap.Groups, SnapshotGroup{ID: g.ID, DisplayName: g.DisplayName, Description: g.Description, Mail: g.Mail,
			MailNickname: g.MailNickname, MailEnabled: g.MailEnabled, SecurityEnabled: g.SecurityEnabled, GroupTypes: nonNil(g.GroupTypes),
			Visibility: g.Visibility, MembershipRule: g.MembershipRule, CreatedDateTime: g.CreatedDateTime.UTC(), Members: g.MemberIDs()})
	}
	for _, sku := range t.skus {
		snap.SKUs = append(snap.SKUs, SnapshotSKU{SkuID: sku.SkuID, SkuPartNumber: sku.SkuPartNumber, CapabilityStatus: sku.CapabilityStatus, Enabled: sku.Enabled, Consumed: t.consumed(sku.SkuID)})
	}
	for id := range t.deleted {
		snap.Deleted = append(snap.Deleted, id)
	}
	sort.Strings(snap.Deleted)
	return snap, nil
}

// Admin changes a tenant behind the product's back. Get one with Mutate.
type Admin struct {
	s   *Server
	t   *Tenant
	now time.Time
}

// WriteBudgetLeft is what is left now in the (app, tenant) write bucket
// (3,000 writes / 150 s; GRAPH.md §1): benchmarks read it to show whether a
// window was fed by the bucket's stored burst or by its refill.
func (s *Server) WriteBudgetLeft(appID, tenantID string) float64 {
	return s.th.level(s.th.appTen, "w|"+appID+"|"+tenantID, appTenantWrites)
}

// Mutate runs f with the tenant locked.
func (s *Server) Mutate(tenant string, f func(a *Admin) error) error {
	t := s.tenant(tenant)
	if t == nil {
		return fmt.Errorf("graphsim: no tenant %q", tenant)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return f(&Admin{s: s, t: t, now: time.Now().UTC()})
}

// Tenant returns the tenant being changed.
func (a *Admin) Tenant() *Tenant { return a.t }

// User returns a user by id or UPN.
func (a *Admin) User(key string) *User {
	if u := a.t.users[key]; u != nil {
		return u
	}
	return a.t.users[a.t.upn[strings.ToLower(key)]]
}

// Group returns a group by id or mail nickname.
func (a *Admin) Group(key string) *Group {
	if g := a.t.groups[key]; g != nil {
		return g
	}
	return a.t.groups[a.t.nickname[strings.ToLower(key)]]
}

// CreateUser adds a user with the given alias on the tenant's second domain.
func (a *Admin) CreateUser(alias, displayName string) *User {
	u := &User{ID: newID(), UserPrincipalName: alias + "@" + a.t.Domains[len(a.t.Domains)-1], DisplayName: displayName, MailNickname: alias,
		AccountEnabled: true, UserType: "Member", BusinessPhones: []string{}, CreatedDateTime: a.now.Truncate(time.Second)}
	a.t.addUser(u)
	return u
}

// UpdateUser changes a user through f and records the change.
func (a *Admin) UpdateUser(u *User, f func(u *User)) {
	oldUPN := strings.ToLower(u.UserPrincipalName)
	f(u)
	if l := strings.ToLower(u.UserPrincipalName); l != oldUPN {
		delete(a.t.upn, oldUPN)
		a.t.upn[l] = u.ID
	}
	a.t.touchUser(u)
}

// DeleteUser moves a user to the recycle bin.
func (a *Admin) DeleteUser(u *User) { a.t.removeUser(u, true, a.now) }

// RestoreUser brings a user back from the recycle bin.
func (a *Admin) RestoreUser(id string) error {
	d, ok := a.t.deleted[id]
	if !ok || d.user == nil {
		return fmt.Errorf("graphsim: user %s is not in the recycle bin", id)
	}
	if _, taken := a.t.upn[strings.ToLower(d.user.UserPrincipalName)]; taken {
		return fmt.Errorf("graphsim: UPN %s is taken", d.user.UserPrincipalName)
	}
	delete(a.t.deleted, id)
	a.t.addUser(d.user)
	return nil
}

// Purge deletes a recycled object for good.
func (a *Admin) Purge(id string) error {
	d, ok := a.t.deleted[id]
	if !ok {
		return fmt.Errorf("graphsim: %s is not in the recycle bin", id)
	}
	a.t.purge(id, d)
	return nil
}

// CreateGroup adds a security group.
func (a *Admin) CreateGroup(nickname, displayName string) *Group {
	g := &Group{ID: newID(), DisplayName: displayName, MailNickname: nickname, SecurityEnabled: true, GroupTypes: []string{},
		Members: map[string]bool{}, CreatedDateTime: a.now.Truncate(time.Second)}
	a.t.addGroup(g)
	return g
}

// UpdateGroup changes a group through f.
func (a *Admin) UpdateGroup(g *Group, f func(g *Group)) {
	old := strings.ToLower(g.MailNickname)
	f(g)
	if l := strings.ToLower(g.MailNickname); l != old {
		delete(a.t.nickname, old)
		a.t.nickname[l] = g.ID
	}
	a.t.touchGroup(g)
}

// DeleteGroup moves a group to the recycle bin.
func (a *Admin) DeleteGroup(g *Group) { a.t.removeGroup(g, true, a.now) }

// SetMember adds or removes a member.
func (a *Admin) SetMember(g *Group, memberID string, member bool) { a.t.setMember(g, memberID, member) }

// SetLicenses replaces a user's licences.
func (a *Admin) SetLicenses(u *User, skuIDs ...string) {
	u.Licenses = nil
	for _, id := range skuIDs {
		u.Licenses = append(u.Licenses, License{SkuID: id, DisabledPlans: []string{}})
	}
	a.t.touchUser(u)
}

// InheritLicense gives u the licence skuID through group g (group-based
// licensing): it shows in the user's assignedLicenses and cannot be removed
// per user.
func (a *Admin) InheritLicense(u *User, skuID string, g *Group) {
	for i, l := range u.Licenses {
		if strings.EqualFold(l.SkuID, skuID) {
			u.Licenses[i].ViaGroup = g.ID
			a.t.touchUser(u)
			return
		}
	}
	u.Licenses = append(u.Licenses, License{SkuID: skuID, DisabledPlans: []string{}, ViaGroup: g.ID})
	a.t.touchUser(u)
}

// SetSeats sets a SKU's enabled prepaid units.
func (a *Admin) SetSeats(partNumber string, enabled int) error {
	for _, s := range a.t.skus {
		if s.SkuPartNumber == partNumber {
			s.Enabled = enabled
			return nil
		}
	}
	return fmt.Errorf("graphsim: no SKU %s", partNumber)
}

// AddSKU adds a subscription to the tenant (a SKU bought since).
func (a *Admin) AddSKU(s SKU) {
	if s.CapabilityStatus == "" {
		s.CapabilityStatus = "Enabled"
	}
	if s.AppliesTo == "" {
		s.AppliesTo = "User"
	}
	a.t.skus = append(a.t.skus, &s)
}

// ResetDelta makes every delta token issued so far answer 410 Gone.
func (a *Admin) ResetDelta() { a.t.resetEpoch = a.s.clock.now().Add(time.Nanosecond) }

// ThrottleNext makes the next n Graph requests of the tenant answer 429
// with Retry-After: 1.
func (a *Admin) ThrottleNext(n int) { a.ThrottleNextWith(n, time.Second, false) }

// ThrottleNextWith makes the next n requests answer 429 with Retry-After d,
// as seconds (fractional) or, with asDate, as an HTTP date.
func (a *Admin) ThrottleNextWith(n int, d time.Duration, asDate bool) {
	a.t.forcedThrottle, a.t.forcedWait, a.t.forcedDate = n, d, asDate
}

// ThrottleShare makes share (0..1) of the tenant's Graph requests answer
// 429 with Retry-After d from now on, evenly spread (with 0.5 every second
// request), as when another application draws on the tenant's budget:
// sustained throttling, until ThrottleShare(0, 0). Requests it throttles are
// counted like the model's (Server.Throttled).
func (a *Admin) ThrottleShare(share float64, d time.Duration) {
	a.t.throttleShare, a.t.throttleWait, a.t.throttleAcc = min(max(share, 0), 1), d, 0
}

// sustainedThrottle reports whether the request being served is one of the
// throttle share's. s.mu is held.
func (t *Tenant) sustainedThrottle() bool {
	if t.throttleShare <= 0 {
		return false
	}
	t.throttleAcc += t.throttleShare
	if t.throttleAcc < 1 {
		return false
	}
	t.throttleAcc--
	return true
}

// App returns the tenant's app by client id (the first when empty).
func (a *Admin) App(clientID string) *App {
	if clientID != "" {
		return a.t.apps[clientID]
	}
	for _, app := range a.t.apps {
		return app
	}
	return nil
}

// AddApp registers another app.
func (a *Admin) AddApp(app *App) { a.t.apps[app.ClientID] = app }

// RandomChanges applies n random admin changes (create, update, disable,
// delete, restore, purge users; group and membership changes; licence
// assignments and seat changes), reproducibly from seed.
func (a *Admin) RandomChanges(n int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 7))
	pick := func(ids []string) string { return ids[r.IntN(len(ids))] }
	for i := 0; i < n; i++ {
		users, groups := a.t.sortedUserIDs(), a.t.sortedGroupIDs()
		switch k := r.IntN(12); {
		case k == 0 || len(users) < 5:
			u := a.CreateUser(fmt.Sprintf("new.user.%d.%d", seed, i), fmt.Sprintf("New User %d", i))
			a.t.userIDs = withID(users, u.ID)
		case k == 1:
			a.UpdateUser(a.t.users[pick(users)], func(u *User) { u.JobTitle = strp(jobTitles[r.IntN(len(jobTitles))]) })
		case k == 2:
			a.UpdateUser(a.t.users[pick(users)], func(u *User) { u.AccountEnabled = !u.AccountEnabled })
		case k == 3:
			u := a.t.users[pick(users)]
			a.DeleteUser(u)
			a.t.userIDs = withoutID(users, u.ID)
		case k == 4:
			for id, d := range a.t.deleted {
				if d.user != nil {
					if a.RestoreUser(id) == nil {
						a.t.userIDs = withID(users, id)
					}
					break
				}
			}
		case k == 5:
			for id := range a.t.deleted {
				_ = a.Purge(id)
				break
			}
		case k == 6 && len(groups) > 0:
			g := a.t.groups[pick(groups)]
			if !g.Dynamic() {
				a.SetMember(g, pick(users), !g.Members[pick(users)])
			}
		case k == 7 && len(groups) > 0:
			g := a.t.groups[pick(groups)]
			if !g.Dynamic() {
				for id := range g.Members {
					a.SetMember(g, id, false)
					break
				}
			}
		case k == 8:
			u := a.t.users[pick(users)]
			sku := a.t.skus[r.IntN(len(a.t.skus))]
			if u.UsageLocation == nil {
				u.UsageLocation = strp("US")
			}
			a.SetLicenses(u, sku.SkuID)
		case k == 9:
			sku := a.t.skus[r.IntN(len(a.t.skus))]
			sku.Enabled += r.IntN(10)
		case k == 10:
			a.CreateGroup(fmt.Sprintf("new-group-%d-%d", seed, i), fmt.Sprintf("New Group %d", i))
		case k == 11 && len(groups) > 0:
			a.DeleteGroup(a.t.groups[pick(groups)])
		default:
			a.UpdateGroup(a.t.groups[pick(groups)], func(g *Group) { g.Description = strp(fmt.Sprintf("changed %d", i)) })
		}
	}
}

// withID and withoutID return the sorted ids with id added or taken out,
// as a new list: the tenant's sorted lists are shared with the requests
// that read them, and sorting them again after each of many changes costs
// seconds at 300,000 users.
func withID(ids []string, id string) []string {
	i, found := slices.BinarySearch(ids, id)
	if found {
		return ids
	}
	return slices.Insert(slices.Clip(ids), i, id)
}

func withoutID(ids []string, id string) []string {
	i, found := slices.BinarySearch(ids, id)
	if !found {
		return ids
	}
	return slices.Delete(slices.Clone(ids), i, i+1)
}

// serveAdmin is the HTTP admin interface (outside /v1.0):
//
//	GET  /_admin/tenants                       credentials of every tenant
//	GET  /_admin/tenants/{id}/export           ground truth
//	POST /_admin/tenants/{id}/reset-delta      force 410 on every delta token
//	POST /_admin/tenants/{id}/random-changes   {"count":n,"seed":s}
//	POST /_admin/tenants/{id}/throttle-next    {"count":n}
//	POST /_admin/tenants/{id}/throttle         {"share":0.5,"retry_after":1}
//	POST /_admin/tenants/{id}/seats            {"sku":"POWER_BI_PRO","enabled":n}
func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/_admin/"), "/"), "/")
	if len(parts) == 1 && parts[0] == "tenants" && r.Method == http.MethodGet {
		writeJSON(w, 200, s.Credentials())
		return
	}
	if len(parts) != 3 || parts[0] != "tenants" {
		http.NotFound(w, r)
		return
	}
	id, op := parts[1], parts[2]
	var body struct {
		Count   int    `json:"count"`
		Seed    uint64 `json:"seed"`
		SKU     string `json:"sku"`
		Enabled int    `json:"enabled"`
		// Share and RetryAfter (seconds, default 1) are throttle's.
		Share      float64 `json:"share"`
		RetryAfter float64 `json:"retry_after"`
	}
	if r.Method == http.MethodPost && r.ContentLength != 0 {
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			writeJSON(w, 400, map[string]string{"error": "body must be JSON: " + err.Error()})
			return
		}
	}
	var err error
	switch {
	case op == "export" && r.Method == http.MethodGet:
		snap, err := s.Export(id)
		if err != nil {
			writeJSON(w, 404, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, 200, snap)
		return
	case op == "reset-delta" && r.Method == http.MethodPost:
		err = s.Mutate(id, func(a *Admin) error { a.ResetDelta(); return nil })
	case op == "random-changes" && r.Method == http.MethodPost:
		err = s.Mutate(id, func(a *Admin) error { a.RandomChanges(body.Count, body.Seed); return nil })
	case op == "seats" && r.Method == http.MethodPost:
		err = s.Mutate(id, func(a *Admin) error { return a.SetSeats(body.SKU, body.Enabled) })
	case op == "throttle-next" && r.Method == http.MethodPost:
		err = s.Mutate(id, func(a *Admin) error { a.ThrottleNext(body.Count); return nil })
	case op == "throttle" && r.Method == http.MethodPost:
		if body.Share < 0 || body.Share > 1 || body.RetryAfter < 0 {
			writeJSON(w, 400, map[string]string{"error": "share must be 0..1 and retry_after not negative"})
			return
		}
		wait := time.Second
		if body.RetryAfter > 0 {
			wait = time.Duration(body.RetryAfter * float64(time.Second))
		}
		err = s.Mutate(id, func(a *Admin) error { a.ThrottleShare(body.Share, wait); return nil })
	default:
		http.NotFound(w, r)
		return
	}
	if err != nil {
		writeJSON(w, 404, map[string]string{"error": err.Error()})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

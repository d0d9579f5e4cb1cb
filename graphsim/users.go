package graphsim

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode"
)

var userDefaults = []string{"businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone", "officeLocation", "preferredLanguage", "surname", "userPrincipalName"}

var userWritable = map[string]bool{
	"accountEnabled": true, "displayName": true, "mailNickname": true, "userPrincipalName": true, "passwordProfile": true,
	"givenName": true, "surname": true, "jobTitle": true, "department": true, "officeLocation": true, "mobilePhone": true,
	"businessPhones": true, "usageLocation": true, "mail": true, "passwordPolicies": true, "preferredLanguage": true,
}

func (c *gctx) userProps(u *User) map[string]any {
	lic := make([]any, 0, len(u.Licenses))
	for _, l := range u.Licenses {
		lic = append(lic, map[string]any{"skuId": l.SkuID, "disabledPlans": nonNil(l.DisabledPlans)})
	}
	return map[string]any{
		"id": u.ID, "userPrincipalName": u.UserPrincipalName, "displayName": u.DisplayName, "givenName": u.GivenName,
		"surname": u.Surname, "mail": u.Mail, "mailNickname": u.MailNickname, "jobTitle": u.JobTitle, "department": u.Department,
		"officeLocation": u.OfficeLocation, "mobilePhone": u.MobilePhone, "businessPhones": nonNil(u.BusinessPhones),
		"accountEnabled": u.AccountEnabled, "userType": u.UserType, "usageLocation": u.UsageLocation,
		"createdDateTime": u.CreatedDateTime.UTC().Format(time.RFC3339), "onPremisesSyncEnabled": u.OnPremisesSyncEnabled,
		"assignedLicenses": lic, "preferredLanguage": nil,
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// userField reads one property the way userProps reports it, without
// building the whole record (filters on large tenants).
func (c *gctx) userField(u *User, p string) any {
	switch p {
	case "id":
		return u.ID
	case "userPrincipalName":
		return u.UserPrincipalName
	case "displayName":
		return u.DisplayName
	case "mailNickname":
		return u.MailNickname
	case "accountEnabled":
		return u.AccountEnabled
	case "userType":
		return u.UserType
	case "assignedLicenses":
		out := make([]any, len(u.Licenses))
		return out
	}
	return c.userProps(u)[p]
}

// upnSegment reports whether the request's filter is one startswith on
// the UPN, and the lower-cased first byte of its prefix.
func (c *gctx) upnSegment() (byte, bool) {
	f := c.q.filter
	if f == nil || len(f.or) != 1 || len(f.or[0]) != 1 {
		return 0, false
	}
	t := f.or[0][0]
	p, _ := t.value.(string)
	if t.op != "startswith" || t.prop != "userPrincipalName" || p == "" || p[0] >= 0x80 {
		return 0, false
	}
	return lowerByte(p[0]), true
}

func lowerByte(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + 'a' - 'A'
	}
	return b
}

// usersByUPNFirst is the sorted ids of the users whose UPN starts with the
// byte first (either case), from an index built once per set of users: a
// full round's 36 segments would otherwise each scan every user.
func (t *Tenant) usersByUPNFirst(first byte) []string {
	t.cacheMu.Lock()
	defer t.cacheMu.Unlock()
	ids := t.sortedUserIDsLocked()
	if t.byUPNFirst == nil || len(t.byUPNFirstFor) != len(ids) || len(ids) > 0 && &t.byUPNFirstFor[0] != &ids[0] {
		t.byUPNFirst, t.byUPNFirstFor = map[byte][]string{}, ids
		for _, id := range ids {
			if upn := t.users[id].UserPrincipalName; upn != "" {
				k := lowerByte(upn[0])
				t.byUPNFirst[k] = append(t.byUPNFirst[k], id)
			}
		}
	}
	return t.byUPNFirst[first]
}

// userText reads the string properties a segment's filter names, unboxed.
func (c *gctx) userText(id, p string) (string, bool) {
	u := c.t.users[id]
	switch p {
	case "userPrincipalName":
		return u.UserPrincipalName, true
	case "displayName":
		return u.DisplayName, true
	case "mailNickname":
		return u.MailNickname, true
	}
	return "", false
}

// findUser resolves an id or UPN to a visible user.
func (c *gctx) findUser(key string) *User {
	u := c.t.users[key]
	if u == nil {
		if id, ok := c.t.upn[strings.ToLower(key)]; ok {
			u = c.t.users[id]
		}
	}
	if u == nil || !c.visible(u.visibleAt) {
		return nil
	}
	return u
}

func (c *gctx) listUsers() (*response, *apiError) {
	if e := c.require(readRoles("users")...); e != nil {
		return nil, e
	}
	ids := c.t.sortedUserIDs()
	if first, ok := c.upnSegment(); ok {
		ids = c.t.usersByUPNFirst(first)
	}
	vis := ids
	if !c.visible(c.t.lastVisibleAt) { // some object is still replicating
		vis = ids[:0:0]
		for _, id := range ids {
			if c.visible(c.t.users[id].visibleAt) {
				vis = append(vis, id)
			}
		}
	}
	return c.listText("users", "user", vis, func(id string) map[string]any { return c.userProps(c.t.users[id]) },
		func(id, p string) any { return c.userField(c.t.users[id], p) }, c.userText, userDefaults)
}

func (c *gctx) getUser(key string) (*response, *apiError) {
	if e := c.require(readRoles("users")...); e != nil {
		return nil, e
	}
	u := c.findUser(key)
	if u == nil {
		return nil, notFound("user", key)
	}
	p, e := project(c.userProps(u), c.q.selects, userDefaults, "user")
	if e != nil {
		return nil, e
	}
	p["@odata.context"] = c.context("users/$entity")
	c.objects = 1
	return &response{status: 200, body: p}, nil
}

var passwordRE = regexp.MustCompile(`^.{8,256}$`)

func passwordDigest(p string) string {
	h := sha256.Sum256([]byte(p))
	return hex.EncodeToString(h[:])
}

// PasswordIs reports whether p is the user's current password.
func (u *User) PasswordIs(p string) bool {
	return u.PasswordDigest != "" && u.PasswordDigest == passwordDigest(p)
}

// passwordOK applies Entra's complexity rule: 8 to 256 characters and three
// of lower case, upper case, digits and symbols.
func passwordOK(p string) bool {
	if !passwordRE.MatchString(p) {
		return false
	}
	var lo, up, di, sy int
	for _, r := range p {
		switch {
		case unicode.IsLower(r):
			lo = 1
		case unicode.IsUpper(r):
			up = 1
		case unicode.IsDigit(r):
			di = 1
		default:
			sy = 1
		}
	}
	return lo+up+di+sy >= 3
}

var errWeakPassword = func() *apiError {
	return newErr(400, "Request_BadRequest", "The specified password does not comply with password complexity requirements. Please provide a different password.")
}

func (c *gctx) createUser() (*response, *apiError) {
	if e := c.require("User.ReadWrite.All", "Directory.ReadWrite.All"); e != nil {
		return nil, e
	}
	m, e := decodeStrict(c.body, "user", userWritable)
	if e != nil {
		return nil, e
	}
	for _, req := range []string{"accountEnabled", "displayName", "mailNickname", "userPrincipalName", "passwordProfile"} {
		if _, ok := m[req]; !ok {
			return nil, newErr(400, "Request_BadRequest", fmt.Sprintf("Property '%s' is required when creating the resource.", req))
		}
	}
	u := &User{UserType: "Member", BusinessPhones: []string{}, CreatedDateTime: time.Now().UTC().Truncate(time.Second)}
	if e := c.applyUser(u, m, true); e != nil {
		return nil, e
	}
	u.ID = newID()
	u.visibleAt = time.Now().Add(c.s.opts.ConsistencyDelay)
	c.t.lastVisibleAt = maxTime(c.t.lastVisibleAt, u.visibleAt)
	c.t.addUser(u)
	// 201 with the user's default set: the other properties are
	// "Returned only on $select".
	p, _ := project(c.userProps(u), nil, userDefaults, "user")
	p["@odata.context"] = c.context("users/$entity")
	c.objects = 1
	return &response{status: 201, body: p}, nil
}

// applyUser sets properties from a create or update body.
func (c *gctx) applyUser(u *User, m map[string]json.RawMessage, create bool) *apiError {
	if raw, ok := m["accountEnabled"]; ok {
		if err := json.Unmarshal(raw, &u.AccountEnabled); err != nil {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'accountEnabled' of resource 'User'.")
		}
	}
	if v, ok, e := str(m, "userPrincipalName"); e != nil {
		return e
	} else if ok {
		if v == nil || !strings.Contains(*v, "@") {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'userPrincipalName' of resource 'User'.")
		}
		_, domain, _ := strings.Cut(*v, "@")
		if !c.t.verifiedDomain(domain) {
			return newErr(400, "Request_BadRequest", "The domain portion of the userPrincipalName property is invalid. You must use one of the verified domain names in your organization.")
		}
		if id, taken := c.t.upn[strings.ToLower(*v)]; taken && id != u.ID {
			e := newErr(400, "Request_BadRequest", "Another object with the same value for property userPrincipalName already exists.")
			e.details = []map[string]string{{"code": "ObjectConflict", "message": "Another object with the same value for property userPrincipalName already exists.", "target": "userPrincipalName"}}
			return e
		}
		if !create {
			delete(c.t.upn, strings.ToLower(u.UserPrincipalName))
			c.t.upn[strings.ToLower(*v)] = u.ID
		}
		u.UserPrincipalName = *v
	}
	if raw, ok := m["passwordProfile"]; ok {
		var pp struct {
			Password                      *string `json:"password"`
			ForceChangePasswordNextSignIn *bool   `json:"forceChangePasswordNextSignIn"`
		}
		if err := json.Unmarshal(raw, &pp); err != nil || pp.Password == nil {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'passwordProfile' of resource 'User'.")
		}
		if !create {
			if !c.hasWid(roleUserAdmin) && !c.hasWid(rolePrivilegedAuthAdmin) {
				return errInsufficient()
			}
			if u.Admin && !c.hasWid(rolePrivilegedAuthAdmin) {
				return errInsufficient()
			}
			if u.OnPremisesSyncEnabled != nil && *u.OnPremisesSyncEnabled {
				return newErr(400, "Request_BadRequest", "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration.")
			}
		}
		if !passwordOK(*pp.Password) {
			return errWeakPassword()
		}
		u.PasswordSet++
		u.PasswordDigest = passwordDigest(*pp.Password)
	}
	fields := map[string]**string{"givenName": &u.GivenName, "surname": &u.Surname, "jobTitle": &u.JobTitle, "department": &u.Department,
		"officeLocation": &u.OfficeLocation, "mobilePhone": &u.MobilePhone, "mail": &u.Mail}
	for k, dst := range fields {
		if v, ok, e := str(m, k); e != nil {
			return e
		} else if ok {
			*dst = v
		}
	}
	if v, ok, e := str(m, "usageLocation"); e != nil {
		return e
	} else if ok {
		if v != nil && (len(*v) != 2 || strings.ToUpper(*v) != *v) {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'usageLocation' of resource 'User'.")
		}
		u.UsageLocation = v
	}
	if v, ok, e := str(m, "displayName"); e != nil {
		return e
	} else if ok {
		if v == nil || strings.TrimSpace(*v) == "" {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'displayName' of resource 'User'.")
		}
		u.DisplayName = *v
	}
	if v, ok, e := str(m, "mailNickname"); e != nil {
		return e
	} else if ok {
		if v == nil || *v == "" || strings.ContainsAny(*v, "@()\\[]\";:<>, ") {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'mailNickname' of resource 'User'.")
		}
		u.MailNickname = *v
	}
	if raw, ok := m["businessPhones"]; ok {
		var bp []string
		if err := json.Unmarshal(raw, &bp); err != nil {
			return newErr(400, "Request_BadRequest", "Invalid value specified for property 'businessPhones' of resource 'User'.")
		}
		u.BusinessPhones = bp
	}
	return nil
}

func (c *gctx) updateUser(key string) (*response, *apiError) {
	if e := c.require("User.ReadWrite.All", "Directory.ReadWrite.All", "User-PasswordProfile.ReadWrite.All"); e != nil {
		return nil, e
	}
	u := c.findUser(key)
	if u == nil {
		return nil, notFound("user", key)
	}
	m, e := decodeStrict(c.body, "user", userWritable)
	if e != nil {
		return nil, e
	}
	if _, onlyPwd := m["passwordProfile"]; !(onlyPwd && len(m) == 1) && !c.has("User.ReadWrite.All") && !c.has("Directory.ReadWrite.All") {
		return nil, errInsufficient()
	}
	cp := *u
	if e := c.applyUser(&cp, m, false); e != nil {
		return nil, e
	}
	*u = cp
	c.t.touchUser(u)
	return &response{status: 204}, nil
}

func (c *gctx) deleteUser(key string) (*response, *apiError) {
	if e := c.require("User.ReadWrite.All", "Directory.ReadWrite.All"); e != nil {
		return nil, e
	}
	u := c.findUser(key)
	if u == nil {
		return nil, notFound("user", key)
	}
	c.t.removeUser(u, true, time.Now())
	return &response{status: 204}, nil
}

func (c *gctx) assignLicense(key string) (*response, *apiError) {
	if e := c.require("User.ReadWrite.All", "Directory.ReadWrite.All", "LicenseAssignment.ReadWrite.All"); e != nil {
		return nil, e
	}
	u := c.findUser(key)
	if u == nil {
		return nil, notFound("user", key)
	}
	var body struct {
		AddLicenses []struct {
			SkuID         string   `json:"skuId"`
			DisabledPlans []string `json:"disabledPlans"`
		} `json:"addLicenses"`
		RemoveLicenses []string `json:"removeLicenses"`
	}
	m, e := decodeStrict(c.body, "assignLicense", map[string]bool{"addLicenses": true, "removeLicenses": true})
	if e != nil {
		return nil, e
	}
	if _, ok := m["addLicenses"]; !ok {
		return nil, newErr(400, "Request_BadRequest", "Invalid value specified for property 'addLicenses' of resource 'assignLicense'.")
	}
	if _, ok := m["removeLicenses"]; !ok {
		return nil, newErr(400, "Request_BadRequest", "Invalid value specified for property 'removeLicenses' of resource 'assignLicense'.")
	}
	if err := json.Unmarshal(c.body, &body); err != nil {
		return nil, newErr(400, "BadRequest", "Unable to read JSON request payload.")
	}
	next := append([]License(nil), u.Licenses...)
	for _, rm := range body.RemoveLicenses {
		found := false
		for i, l := range next {
			if strings.EqualFold(l.SkuID, rm) {
				if l.ViaGroup != "" {
					return nil, newErr(400, "Request_BadRequest", "User license is inherited from a group membership and it cannot be removed directly from the user.")
				}
				next = append(next[:i], next[i+1:]...)
				found = true
				break
			}
		}
		if !found {
			return nil, newErr(400, "Request_BadRequest", fmt.Sprintf("User does not have a corresponding license with skuId %s.", rm))
		}
	}
	for _, add := range body.AddLicenses {
		sku := c.t.skuByID(add.SkuID)
		if sku == nil {
			return nil, newErr(400, "Request_BadRequest", fmt.Sprintf("License %s does not correspond to a valid company License.", add.SkuID))
		}
		if u.UsageLocation == nil {
			return nil, newErr(400, "Request_BadRequest", "License assignment cannot be done for user with invalid usage location.")
		}
		for _, p := range add.DisabledPlans {
			ok := false
			for _, pl := range sku.Plans {
				if strings.EqualFold(pl.ID, p) {
					ok = true
				}
			}
			if !ok {
				return nil, newErr(400, "Request_BadRequest", fmt.Sprintf("Service plan %s is not part of SKU %s.", p, sku.SkuID))
			}
		}
		replaced := false
		for i, l := range next {
			if strings.EqualFold(l.SkuID, add.SkuID) {
				next[i].DisabledPlans = nonNil(add.DisabledPlans)
				replaced = true
			}
		}
		if !replaced {
			if c.t.consumed(sku.SkuID) >= sku.Enabled {
				return nil, newErr(400, "Request_BadRequest", fmt.Sprintf("Subscription with SKU %s does not have any available licenses.", sku.SkuID))
			}
			next = append(next, License{SkuID: sku.SkuID, DisabledPlans: nonNil(add.DisabledPlans)})
		}
	}
	u.Licenses = next
	c.t.touchUser(u)
	p, _ := project(c.userProps(u), nil, userDefaults, "user")
	p["@odata.context"] = c.context("users/$entity")
	c.objects = 1
	return &response{status: 200, body: p}, nil
}

// newID is a random GUID for created objects.
func newID() string {
	var b [16]byte
	_, _ = cryptoRead(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

package graphsim

import (
	"sort"
	"strings"
	"sync"
	"time"
)

// User is a simulated Entra user. Pointer fields are null when unset.
type User struct {
	ID                    string
	UserPrincipalName     string
	DisplayName           string
	GivenName             *string
	Surname               *string
	Mail                  *string
	MailNickname          string
	JobTitle              *string
	Department            *string
	OfficeLocation        *string
	MobilePhone           *string
	BusinessPhones        []string
	AccountEnabled        bool
	UserType              string
	UsageLocation         *string
	CreatedDateTime       time.Time
	OnPremisesSyncEnabled *bool
	Licenses              []License // assignedLicenses
	// PasswordSet counts password changes; PasswordDigest is the SHA-256 of
	// the current password (hex), the password itself is dropped. Tests
	// check with PasswordIs which password works.
	PasswordSet    int
	PasswordDigest string
	// Admin marks a user holding an admin role (needs a privileged role to
	// reset).
	Admin bool

	version   uint64    // tenant version of the last change
	visibleAt time.Time // eventual consistency: invisible to reads before
}

// License is one assigned licence.
type License struct {
	SkuID         string
	DisabledPlans []string
	// ViaGroup is the group the licence is inherited from (group-based
	// licensing), "" for a direct assignment. An inherited licence cannot be
	// removed per user.
	ViaGroup string
}

// Group is a simulated group.
type Group struct {
	ID              string
	DisplayName     string
	Description     *string
	Mail            *string
	MailNickname    string
	MailEnabled     bool
	SecurityEnabled bool
	GroupTypes      []string
	Visibility      *string
	MembershipRule  *string
	CreatedDateTime time.Time
	Members         map[string]bool

	version   uint64
	visibleAt time.Time
	// memberLog records membership changes for delta.
	memberLog []memberChange
}

type memberChange struct {
	member  string
	added   bool
	version uint64
}

// Dynamic reports whether membership is rule-based.
func (g *Group) Dynamic() bool {
	for _, t := range g.GroupTypes {
		if t == "DynamicMembership" {
			return true
		}
	}
	return false
}

// MemberIDs returns the member ids, sorted.
func (g *Group) MemberIDs() []string {
	out := make([]string, 0, len(g.Members))
	for id := range g.Members {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// SKU is a subscribed SKU.
type SKU struct {
	SkuID            string
	SkuPartNumber    string
	CapabilityStatus string
	AppliesTo        string
	Enabled          int
	Suspended        int
	Warning          int
	LockedOut        int
	Plans            []Plan
	AccountID        string
	AccountName      string
	SubscriptionIDs  []string
}

// Plan is a service plan of a SKU.
type Plan struct {
	ID   string
	Name string
}

// tombstone remembers a deleted object for delta.
type tombstone struct {
	id      string
	reason  string // "changed" (soft) or "deleted" (hard)
	version uint64
}

// App is an app registration that may call the tenant.
type App struct {
	ClientID string
	Secret   string
	// SecretEnds is when Secret expires (its passwordCredential's
	// endDateTime); past it the token endpoint answers AADSTS7000222. Zero:
	// it never does. Seeded apps' secrets end two years after the seed day.
	SecretEnds time.Time
	// MoreSecrets are the app's other client secrets (a rotation's overlap:
	// Entra takes any unexpired one).
	MoreSecrets []AppSecret
	// Federated are the app's federated identity credentials.
	Federated []FederatedCredential
	// CertPEM is the registered certificate (for client assertions).
	CertPEM []byte
	// Roles are the granted application permissions.
	Roles []string
	// UserAdmin: the app's service principal holds the User Administrator
	// role (needed for password resets).
	UserAdmin bool
	// PrivilegedAuthAdmin: it holds Privileged Authentication
	// Administrator (needed to reset admins' passwords).
	PrivilegedAuthAdmin bool
	// Disabled apps get AADSTS7000112.
	Disabled bool
}

// AppSecret is one client secret of an app.
type AppSecret struct {
	Value string
	Ends  time.Time // zero: never
}

// secrets are all the app's client secrets.
func (a *App) secrets() []AppSecret {
	out := []AppSecret{}
	if a.Secret != "" {
		out = append(out, AppSecret{Value: a.Secret, Ends: a.SecretEnds})
	}
	return append(out, a.MoreSecrets...)
}

// checkSecret reports whether v is one of the app's secrets and, if so,
// whether it has expired.
func (a *App) checkSecret(v string, now time.Time) (known, expired bool) {
	for _, s := range a.secrets() {
		if s.Value == v {
			return true, !s.Ends.IsZero() && now.After(s.Ends)
		}
	}
	return false, false
}

func (a *App) has(role string) bool {
	for _, r := range a.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// FullPermissions are the module's permissions.
var FullPermissions = []string{"User.Read.All", "Group.Read.All", "Directory.Read.All", "User.ReadWrite.All", "Group.ReadWrite.All", "User.ManageIdentities.All"}

// ReadOnlyPermissions are enough for sync.
var ReadOnlyPermissions = []string{"User.Read.All", "Group.Read.All", "Directory.Read.All"}

// Tenant is one simulated directory.
type Tenant struct {
	ID      string
	Domains []string // verified domains; the first is the default
	Name    string

	// lastVisibleAt is the latest visibleAt of any object created: after
	// it, lists skip the per-object visibility check.
	lastVisibleAt time.Time

	apps     map[string]*App
	users    map[string]*User
	upn      map[string]string // lower-case UPN → id
	groups   map[string]*Group
	nickname map[string]string // lower-case mailNickname → group id
	skus     []*SKU
	deleted  map[string]deletedItem // recycle bin

	// sorted id caches, dropped when the sets change
	// The sorted id lists and the UPN index are built on demand, by
	// requests that hold the server's lock only for reading: cacheMu
	// guards their building. A change drops them (under the write lock).
	cacheMu           sync.Mutex
	userIDs, groupIDs []string
	// byUPNFirst indexes userIDs by the lower-cased first byte of the UPN
	// (built for the userIDs it names), for a round's UPN segments.
	byUPNFirst    map[byte][]string
	byUPNFirstFor []string

	version        uint64
	userTombs      []tombstone
	groupTombs     []tombstone
	resetEpoch     time.Time // delta tokens issued before it get 410
	forcedThrottle int       // next N requests get 429 (fault injection)
	forcedWait     time.Duration
	forcedDate     bool
	throttleShare  float64 // this share of requests get 429 until set to 0 (fault injection)
	throttleWait   time.Duration
	throttleAcc    float64        // the share's running sum: a request whose turn makes it reach 1 is throttled
	responseFaults ResponseFaults // a broken Graph's answers (fault injection)
	// onChange hears every change to a user or group (change
	// notifications, subscriptions.go); nil while seeding.
	onChange func(kind, id string, purged bool)
}

type deletedItem struct {
	user      *User
	group     *Group
	deletedAt time.Time
}

func (t *Tenant) bump() uint64 {
	t.version++
	return t.version
}

// changed records a change to user or group id (kind "users" or "groups"):
// the version delta reports it under and, for change notifications, the
// tenant's onChange. purged is a permanent delete. Every change to a user or
// group goes through here.
func (t *Tenant) changed(kind, id string, purged bool) uint64 {
	v := t.bump()
	if t.onChange != nil {
		t.onChange(kind, id, purged)
	}
	return v
}

// DefaultDomain is the tenant's first verified domain.
func (t *Tenant) DefaultDomain() string { return t.Domains[0] }

func (t *Tenant) verifiedDomain(d string) bool {
	for _, v := range t.Domains {
		if strings.EqualFold(v, d) {
			return true
		}
	}
	return false
}

// sizeClass by user count, GRAPH.md §1.
func (t *Tenant) ruBudget() float64 {
	n := len(t.users)
	switch {
	case n < 50:
		return 3500
	case n <= 500:
		return 5000
	}
	return 8000
}

func (t *Tenant) consumed(skuID string) int {
	n := 0
	for _, u := range t.users {
		for _, l := range u.Licenses {
			if l.SkuID == skuID {
				n++
			}
		}
	}
	return n
}

// consumedAll counts the assigned licences of every SKU in one pass.
func (t *Tenant) consumedAll() map[string]int {
	n := make(map[string]int, len(t.skus))
	for _, u := range t.users {
		for _, l := range u.Licenses {
			n[l.SkuID]++
		}
	}
	return n
}

func (t *Tenant) skuByID(id string) *SKU {
	for _, s := range t.skus {
		if strings.EqualFold(s.SkuID, id) {
			return s
		}
	}
	return nil
}

func (t *Tenant) addUser(u *User) {
	t.userIDs = nil
	t.users[u.ID] = u
	t.upn[strings.ToLower(u.UserPrincipalName)] = u.ID
	u.version = t.changed("users", u.ID, false)
}

func (t *Tenant) addGroup(g *Group) {
	t.groupIDs = nil
	t.groups[g.ID] = g
	t.nickname[strings.ToLower(g.MailNickname)] = g.ID
	g.version = t.changed("groups", g.ID, false)
}

func (t *Tenant) touchUser(u *User)   { u.version = t.changed("users", u.ID, false) }
func (t *Tenant) touchGroup(g *Group) { g.version = t.changed("groups", g.ID, false) }

func (t *Tenant) setMember(g *Group, member string, add bool) {
	if add == g.Members[member] {
		return
	}
	if add {
		g.Members[member] = true
	} else {
		delete(g.Members, member)
	}
	v := t.changed("groups", g.ID, false)
	g.version = v
	g.memberLog = append(g.memberLog, memberChange{member: member, added: add, version: v})
}

// removeUser takes a user out of the directory (soft: recycle bin).
func (t *Tenant) removeUser(u *User, soft bool, now time.Time) {
	t.userIDs = nil
	delete(t.users, u.ID)
	delete(t.upn, strings.ToLower(u.UserPrincipalName))
	reason := "deleted"
	if soft {
		reason = "changed"
		t.deleted[u.ID] = deletedItem{user: u, deletedAt: now}
	}
	for _, g := range t.groups {
		if g.Members[u.ID] {
			t.setMember(g, u.ID, false)
		}
	}
	t.userTombs = append(t.userTombs, tombstone{id: u.ID, reason: reason, version: t.changed("users", u.ID, !soft)})
}

func (t *Tenant) removeGroup(g *Group, soft bool, now time.Time) {
	t.groupIDs = nil
	delete(t.groups, g.ID)
	delete(t.nickname, strings.ToLower(g.MailNickname))
	reason := "deleted"
	if soft {
		reason = "changed"
		t.deleted[g.ID] = deletedItem{group: g, deletedAt: now}
	}
	t.groupTombs = append(t.groupTombs, tombstone{id: g.ID, reason: reason, version: t.changed("groups", g.ID, !soft)})
}

// purge deletes a recycled object for good.
func (t *Tenant) purge(id string, d deletedItem) {
	delete(t.deleted, id)
	if d.user != nil {
		t.userTombs = append(t.userTombs, tombstone{id: id, reason: "deleted", version: t.changed("users", id, true)})
	} else {
		t.groupTombs = append(t.groupTombs, tombstone{id: id, reason: "deleted", version: t.changed("groups", id, true)})
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// UserCount is the number of users in the tenant (deleted ones not
// counted).
func (t *Tenant) UserCount() int { return len(t.users) }

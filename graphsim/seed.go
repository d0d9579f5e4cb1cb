package graphsim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"time"
)

var (
	firstNames  = []string{"Adele", "Alex", "Allan", "Amelia", "Ben", "Bianca", "Carlos", "Chloe", "Christie", "Daniel", "Debra", "Diego", "Elena", "Emily", "Enrico", "Fatima", "Grady", "Hana", "Henrietta", "Isaiah", "Ivan", "Jamal", "Joni", "Johanna", "Kenji", "Lee", "Lidia", "Lynne", "Megan", "Miriam", "Nestor", "Noor", "Olga", "Patti", "Pradeep", "Priya", "Quentin", "Rosa", "Sakura", "Samuel", "Tomas", "Uma", "Victor", "Wei", "Xavier", "Yara", "Zoe"}
	lastNames   = []string{"Vance", "Wilber", "Deyoung", "Nguyen", "Berg", "Garcia", "Cline", "Fernandez", "Gonzalez", "Mueller", "Holt", "Kowalski", "Lindqvist", "Mensah", "Nakamura", "Okafor", "Patel", "Quinn", "Rossi", "Sato", "Tanaka", "Ulrich", "Varga", "Wright", "Xu", "Yamamoto", "Zimmerman", "Adams", "Brown", "Chen", "Dubois", "Evans", "Fischer", "Gupta", "Hughes", "Ivanova", "Jensen", "Khan", "Larsen", "Moreau"}
	departments = []string{"Sales", "Marketing", "Finance", "Engineering", "Operations", "Human Resources", "Legal", "Support", "IT", "Research"}
	jobTitles   = []string{"Analyst", "Engineer", "Manager", "Director", "Specialist", "Consultant", "Coordinator", "Administrator", "Designer", "Accountant"}
	offices     = []string{"Seattle", "London", "Berlin", "Paris", "Tokyo", "Sydney", "Toronto", "Madrid", "Mumbai", "São Paulo"}
	countries   = []string{"US", "GB", "DE", "FR", "JP", "AU", "CA", "ES", "IN", "BR"}
	tenantNames = []string{"contoso", "fabrikam", "northwind", "adatum", "tailspin", "woodgrove", "litware", "proseware", "wingtip", "alpineski"}
)

var seedSKUs = []SKU{
	{SkuID: "6fd2c87f-b296-42f0-b197-1e91e994b900", SkuPartNumber: "ENTERPRISEPACK", Plans: []Plan{{"efb87545-963c-4e0d-99df-69c6916d9eb0", "EXCHANGE_S_ENTERPRISE"}, {"5dbe027f-2339-4123-9542-606e4d348a72", "SHAREPOINTENTERPRISE"}, {"57ff2da0-773e-42df-b2af-ffb7a2317929", "TEAMS1"}, {"0feaeb32-d00e-4d66-bd5a-43b5b83db82c", "MCOSTANDARD"}, {"43de0ff5-c92c-492b-9116-175376d08c38", "OFFICESUBSCRIPTION"}}},
	{SkuID: "06ebc4ee-1bb5-47dd-8120-11324bc54e06", SkuPartNumber: "SPE_E5", Plans: []Plan{{"efb87545-963c-4e0d-99df-69c6916d9eb0", "EXCHANGE_S_ENTERPRISE"}, {"57ff2da0-773e-42df-b2af-ffb7a2317929", "TEAMS1"}, {"70d33638-9c74-4d01-bfd3-562de28bd4ba", "BI_AZURE_P2"}}},
	{SkuID: "f245ecc8-75af-4f8e-b61f-27d8114de5f3", SkuPartNumber: "O365_BUSINESS_PREMIUM", Plans: []Plan{{"9aaf7827-d63c-4b61-89c3-182f06f82e5c", "EXCHANGE_S_STANDARD"}, {"57ff2da0-773e-42df-b2af-ffb7a2317929", "TEAMS1"}}},
	{SkuID: "f8a1db68-be16-40ed-86d5-cb42ce701560", SkuPartNumber: "POWER_BI_PRO", Plans: []Plan{{"70d33638-9c74-4d01-bfd3-562de28bd4ba", "BI_AZURE_P2"}}},
	{SkuID: "f30db892-07e9-47e9-837c-80727f46fd3d", SkuPartNumber: "FLOW_FREE", Plans: []Plan{{"50e68c76-46c6-4674-81f9-75456511b170", "FLOW_P2_VIRAL"}}},
}

// idGen makes deterministic GUIDs.
type idGen struct{ r *rand.Rand }

func (g idGen) next() string {
	a, b := g.r.Uint64(), g.r.Uint64()
	return fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", a>>32, (a>>16)&0xffff, a&0xfff, 0x8000|(b>>48)&0x3fff, b&0xffffffffffff)
}

func strp(s string) *string { return &s }
func boolp(b bool) *bool    { return &b }

// seedTenant builds tenant number i deterministically from seed.
func seedTenant(i int, seed int64, users, groups int, now time.Time) (*Tenant, *App) {
	r := rand.New(rand.NewPCG(uint64(seed), uint64(i)+1))
	ids := idGen{r}
	name := tenantNames[i%len(tenantNames)]
	if i >= len(tenantNames) {
		name = fmt.Sprintf("%s%d", name, i/len(tenantNames))
	}
	t := &Tenant{
		ID: ids.next(), Name: name,
		Domains: []string{name + ".onmicrosoft.com", name + ".com"},
		apps:    map[string]*App{}, users: make(map[string]*User, users), upn: make(map[string]string, users),
		groups: make(map[string]*Group, groups), nickname: make(map[string]string, groups), deleted: map[string]deletedItem{},
	}
	app := &App{ClientID: ids.next(), Secret: randomSecret(r), SecretEnds: now.AddDate(2, 0, 0), Roles: append([]string(nil), FullPermissions...), UserAdmin: true}
	t.apps[app.ClientID] = app

	for k := range seedSKUs {
		s := seedSKUs[k]
		s.Plans = append([]Plan(nil), s.Plans...)
		s.CapabilityStatus, s.AppliesTo, s.AccountID, s.AccountName = "Enabled", "User", t.ID, name
		s.SubscriptionIDs = []string{ids.next()}
		t.skus = append(t.skus, &s)
	}

	userIDs := make([]string, 0, users)
	byDeptOffice := map[string][]string{}
	for n := 0; n < users; n++ {
		first, last := firstNames[r.IntN(len(firstNames))], lastNames[r.IntN(len(lastNames))]
		alias := strings.ToLower(fmt.Sprintf("%s.%s%d", first, last, n))
		u := &User{
			ID: ids.next(), DisplayName: first + " " + last, GivenName: strp(first), Surname: strp(last),
			AccountEnabled: r.Float64() >= 0.08, UserType: "Member", BusinessPhones: []string{},
			CreatedDateTime: now.Add(-time.Duration(r.IntN(3*365*24)) * time.Hour).Truncate(time.Second),
		}
		if r.Float64() < 0.03 {
			ext := strings.ToLower(last) + ".example"
			u.UserType = "Guest"
			u.UserPrincipalName = fmt.Sprintf("%s_%s#EXT#@%s", alias, ext, t.DefaultDomain())
			u.Mail = strp(alias + "@" + ext)
			u.MailNickname = alias + "_" + ext + "#EXT#"
		} else {
			u.UserPrincipalName = alias + "@" + t.Domains[1]
			u.Mail = strp(u.UserPrincipalName)
			u.MailNickname = alias
			dept := departments[r.IntN(len(departments))]
			u.Department = strp(dept)
			u.JobTitle = strp(jobTitles[r.IntN(len(jobTitles))])
			oi := r.IntN(len(offices))
			u.OfficeLocation = strp(offices[oi])
			if r.Float64() < 0.9 {
				u.UsageLocation = strp(countries[oi])
			}
			if r.Float64() < 0.5 {
				u.BusinessPhones = []string{fmt.Sprintf("+1 425 555 %04d", n%10000)}
			}
			if r.Float64() < 0.2 {
				u.OnPremisesSyncEnabled = boolp(true)
			}
			if u.UsageLocation != nil && r.Float64() < 0.75 {
				main := []int{0, 0, 0, 1, 2}[r.IntN(5)]
				u.Licenses = append(u.Licenses, License{SkuID: t.skus[main].SkuID, DisabledPlans: []string{}})
				if r.Float64() < 0.2 {
					u.Licenses = append(u.Licenses, License{SkuID: t.skus[3].SkuID, DisabledPlans: []string{}})
				}
			}
			byDeptOffice[dept+"|"+offices[oi]] = append(byDeptOffice[dept+"|"+offices[oi]], u.ID)
		}
		u.Admin = n < 3
		t.addUser(u)
		userIDs = append(userIDs, u.ID)
	}
	// Seats: 10 % slack, except POWER_BI_PRO which is full (no free seat)
	// and FLOW_FREE, a large free pool.
	for k, s := range t.skus {
		used := t.consumed(s.SkuID)
		switch k {
		case 3:
			s.Enabled = used
		case 4:
			s.Enabled = 10000
		default:
			s.Enabled = used + used/10 + 5
		}
	}

	for n := 0; n < groups; n++ {
		g := &Group{ID: ids.next(), Members: map[string]bool{}, CreatedDateTime: now.Add(-time.Duration(r.IntN(3*365*24)) * time.Hour).Truncate(time.Second)}
		dept := departments[r.IntN(len(departments))]
		kind := r.Float64()
		switch {
		case kind < 0.03:
			office := offices[r.IntN(len(offices))]
			g.DisplayName = fmt.Sprintf("%s %s (dynamic %d)", dept, office, n)
			g.MailNickname = fmt.Sprintf("dyn-%s-%d", strings.ToLower(strings.ReplaceAll(dept, " ", "")), n)
			g.SecurityEnabled = true
			g.GroupTypes = []string{"DynamicMembership"}
			g.MembershipRule = strp(fmt.Sprintf(`(user.department -eq "%s") -and (user.officeLocation -eq "%s")`, dept, office))
			for _, id := range byDeptOffice[dept+"|"+office] {
				g.Members[id] = true
			}
		case kind < 0.4:
			g.DisplayName = fmt.Sprintf("%s Team %d", dept, n)
			g.MailNickname = fmt.Sprintf("%s-team-%d", strings.ToLower(strings.ReplaceAll(dept, " ", "")), n)
			g.MailEnabled, g.SecurityEnabled = true, false
			g.GroupTypes = []string{"Unified"}
			g.Mail = strp(g.MailNickname + "@" + t.Domains[1])
			g.Visibility = strp([]string{"Private", "Public"}[r.IntN(2)])
		default:
			g.DisplayName = fmt.Sprintf("SG %s %d", dept, n)
			g.MailNickname = fmt.Sprintf("sg-%s-%d", strings.ToLower(strings.ReplaceAll(dept, " ", "")), n)
			g.SecurityEnabled = true
			g.GroupTypes = []string{}
		}
		if r.Float64() < 0.3 {
			g.Description = strp("Group for " + dept)
		}
		if !g.Dynamic() && len(userIDs) > 0 {
			// Long tail: most groups small, a few with thousands.
			size := min(int(2/math.Pow(1-r.Float64(), 1/1.5)), 1500)
			if n < 3 && users >= 5000 {
				size = 2000 + r.IntN(3000)
			}
			size = min(size, len(userIDs))
			for k := 0; k < size; k++ {
				g.Members[userIDs[r.IntN(len(userIDs))]] = true
			}
		}
		t.addGroup(g)
	}
	return t, app
}

func randomSecret(r *rand.Rand) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789~._-"
	b := make([]byte, 40)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(b)
}

// sortedUserIDs returns the tenant's user ids in order (shared: do not
// modify).
func (t *Tenant) sortedUserIDs() []string {
	t.cacheMu.Lock()
	defer t.cacheMu.Unlock()
	return t.sortedUserIDsLocked()
}

func (t *Tenant) sortedUserIDsLocked() []string {
	if t.userIDs == nil {
		t.userIDs = make([]string, 0, len(t.users))
		for id := range t.users {
			t.userIDs = append(t.userIDs, id)
		}
		sort.Strings(t.userIDs)
	}
	return t.userIDs
}

// sortedGroupIDs returns the tenant's group ids in order (shared).
func (t *Tenant) sortedGroupIDs() []string {
	t.cacheMu.Lock()
	defer t.cacheMu.Unlock()
	if t.groupIDs == nil {
		t.groupIDs = make([]string, 0, len(t.groups))
		for id := range t.groups {
			t.groupIDs = append(t.groupIDs, id)
		}
		sort.Strings(t.groupIDs)
	}
	return t.groupIDs
}

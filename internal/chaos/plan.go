package chaos

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
)

// The plan is a set of scripts, each a sequence of jobs on one target (a
// user or a group, always named the same way), interleaved at random:
// the workers guarantee order per target only, so the expected end state
// follows from each script alone. Scripts share nothing that could make
// the outcome depend on cross-target timing: members come from a pool of
// users no script deletes, licences are assigned only within the seats
// free at the start, and every deliberately failing job has a target of
// its own.

// job is one planned job.
type job struct {
	ID      string
	Action  string // full name, or jobs.ActionSync
	Subject string
	Params  json.RawMessage
	Target  string
	// Expect is the error code the job must fail with ("" = succeed).
	Expect string
	// Script is the index of the script the job belongs to (-1: none).
	Script int

	// Password jobs (create_user, reset_password): Given is the password
	// sealed into the job (empty when generated and sealed to the reply
	// key); PasswordUser keys the user in the model.
	Given        string
	PasswordUser string

	// Create jobs: the key of the object made ("user:<upn>", "group:<nick>").
	Creates string

	// Copy: publish once more later with the same job id (a republished
	// job: the ledger must suppress it).
	// CopyAfter is how many jobs later.
	CopyAfter int
	// Twice: publish twice at once (a publisher's retry after a lost ack:
	// the ledger must suppress the second).
	Twice bool
}

// mUser is the model of a user.
type mUser struct {
	Key             string // model key: the seeded id, or "new:<upn>"
	ID              string // seeded users; created ones learn it from the result
	UPN             string
	Created         bool
	CreateJob       string
	DisplayName     string
	GivenName       *string
	JobTitle        *string
	Department      *string
	OfficeLocation  *string
	MobilePhone     *string
	UsageLocation   *string
	Enabled         bool
	Licenses        map[string][]string // skuId → disabled plan ids
	HasPBI          bool
	Deleted         bool
	LastPasswordJob string
	PasswordJobs    []string
	Touched         bool
	ref             string // how the script names the user
}

// mGroup is the model of a group.
type mGroup struct {
	Key         string // seeded id or "new:<nick>"
	ID          string
	Nick        string
	Created     bool
	CreateJob   string
	DisplayName string
	Description *string
	Visibility  *string
	Unified     bool
	Members     map[string]bool // user ids
	Deleted     bool
	ref         string
}

type plan struct {
	seed     int64
	instance string
	jobs     []*job // publication order
	byID     map[string]*job
	users    map[string]*mUser  // model key → user
	groups   map[string]*mGroup // model key → group
	touchedG map[string]bool    // seeded group ids with a script
	special  map[string]bool    // seeded user ids used by failing jobs (must stay unchanged)
	pool     []string           // member pool user ids
	deletedU map[string]bool    // seeded user ids the plan deletes
	actions  map[string]int
	syncJobs []string
	replyKey string // the requester's curve public key
	poolKey  string // the pool's public key (to seal given passwords)
	domain   string
	skuPart  map[string]string // skuId → part number
	planIDs  map[string]map[string]string
}

// skuInfo is what the plan needs of a SKU.
type skuInfo struct {
	ID, Part string
	Free     int
	Plans    map[string]string // name → id
}

type planInput struct {
	Seed     int64
	Instance string
	Jobs     int
	Snap     *graphsim.Snapshot
	Admins   map[string]bool
	SKUs     []skuInfo
	Dynamic  string // id of a dynamic group
	ReplyKey string
	PoolKey  string
	Seal     func(pw string, b jobs.Binding) (*jobs.SealedSecret, error)
}

func sp(s string) *string { return &s }

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// makePlan builds the jobs and the model of their effects.
func makePlan(in planInput) (*plan, error) {
	r := rand.New(rand.NewPCG(uint64(in.Seed), 0x91))
	p := &plan{seed: in.Seed, instance: in.Instance, byID: map[string]*job{}, users: map[string]*mUser{}, groups: map[string]*mGroup{},
		touchedG: map[string]bool{}, special: map[string]bool{}, deletedU: map[string]bool{}, actions: map[string]int{},
		replyKey: in.ReplyKey, poolKey: in.PoolKey, skuPart: map[string]string{}, planIDs: map[string]map[string]string{}}
	skus := map[string]*skuInfo{}
	for i := range in.SKUs {
		s := in.SKUs[i]
		skus[s.Part] = &s
		p.skuPart[s.ID] = s.Part
		p.planIDs[s.ID] = s.Plans
	}
	pbi := skus["POWER_BI_PRO"]
	// Seats: each assignment of a SKU the user lacks uses one of the seats
	// free at the start (margin 2), whatever the order; none is given back.
	budget := map[string]int{}
	for part, s := range skus {
		if part != "POWER_BI_PRO" {
			budget[part] = s.Free - 2
		}
	}

	var eligible []graphsim.SnapshotUser
	for _, u := range in.Snap.Users {
		if u.UserType == "Member" && !in.Admins[u.ID] && (u.OnPremisesSyncEnabled == nil || !*u.OnPremisesSyncEnabled) {
			eligible = append(eligible, u)
			p.domain = u.UserPrincipalName[strings.Index(u.UserPrincipalName, "@")+1:]
		}
	}
	r.Shuffle(len(eligible), func(i, j int) { eligible[i], eligible[j] = eligible[j], eligible[i] })
	take := func(ok func(u graphsim.SnapshotUser) bool) *graphsim.SnapshotUser {
		for i, u := range eligible {
			if ok(u) {
				eligible = append(eligible[:i:i], eligible[i+1:]...)
				return &u
			}
		}
		return nil
	}
	hasSKU := func(u graphsim.SnapshotUser, id string) bool {
		for _, l := range u.AssignedLicenses {
			if strings.EqualFold(l.SkuID, id) {
				return true
			}
		}
		return false
	}
	noSeatUser := take(func(u graphsim.SnapshotUser) bool { return u.UsageLocation != nil && pbi != nil && !hasSKU(u, pbi.ID) })
	noLocUser := take(func(u graphsim.SnapshotUser) bool { return u.UsageLocation == nil && len(u.AssignedLicenses) == 0 })
	conflictUser := take(func(u graphsim.SnapshotUser) bool { return true })
	for _, u := range []*graphsim.SnapshotUser{noSeatUser, noLocUser, conflictUser} {
		if u != nil {
			p.special[u.ID] = true
		}
	}
	poolSize := min(40, len(eligible)/4)
	for i := 0; i < poolSize; i++ {
		p.pool = append(p.pool, eligible[0].ID)
		p.special[eligible[0].ID] = true
		eligible = eligible[1:]
	}
	poolUPN := map[string]string{}
	for _, u := range in.Snap.Users {
		poolUPN[u.ID] = u.UserPrincipalName
	}
	var editable []graphsim.SnapshotGroup
	var conflictGroup *graphsim.SnapshotGroup
	for _, g := range in.Snap.Groups {
		dyn := false
		for _, t := range g.GroupTypes {
			dyn = dyn || t == "DynamicMembership"
		}
		if dyn {
			continue
		}
		if conflictGroup == nil {
			g := g
			conflictGroup = &g
			continue
		}
		editable = append(editable, g)
	}
	r.Shuffle(len(editable), func(i, j int) { editable[i], editable[j] = editable[j], editable[i] })

	n := 0
	newID := func(action string) string {
		n++
		return fmt.Sprintf("chaos-%d-%04d-%s", in.Seed, n, jobs.ShortAction(action))
	}
	var scripts [][]*job
	mk := func(script int, action string, params any, target string) *job {
		raw, _ := json.Marshal(params)
		j := &job{ID: newID(action), Action: action, Params: raw, Target: target, Script: script,
			Subject: "m365.jobs." + jobs.DefaultPool + "." + in.Instance + ".action." + jobs.ShortAction(action)}
		p.actions[action]++
		return j
	}
	// password is the password options of the next job made (by mk): a
	// given password is sealed for that job and its user.
	password := func(script int, action, user string) (jobs.PasswordOptions, string, error) {
		if r.IntN(10) < 6 {
			return jobs.PasswordOptions{ReplyKey: in.ReplyKey}, "", nil
		}
		pw := fmt.Sprintf("Chaos-%d-%06d!x", script, r.IntN(1000000))
		next := fmt.Sprintf("chaos-%d-%04d-%s", in.Seed, n+1, jobs.ShortAction(action))
		s, err := in.Seal(pw, jobs.PasswordBinding(in.Instance, next, user))
		return jobs.PasswordOptions{Password: s}, pw, err
	}
	boolp := func(b bool) *bool { return &b }

	// userOp appends operation op on u to script s: 0 update, 1 disable or
	// enable, 2 reset the password, 3 assign a licence, 4 remove one.
	userOp := func(si int, s []*job, u *mUser, op int) ([]*job, error) {
		{
			switch op {
			case 0:
				var pp jobs.UpdateUserParams
				pp.User = u.ref
				for f := 0; f < 1+r.IntN(3); f++ {
					switch r.IntN(7) {
					case 0:
						v := []string{"Analyst", "Chaos Engineer", "Manager", ""}[r.IntN(4)]
						pp.JobTitle, u.JobTitle = sp(v), sp(v)
					case 1:
						v := []string{"Sales", "Research", "Chaos", "Legal"}[r.IntN(4)]
						pp.Department, u.Department = sp(v), sp(v)
					case 2:
						v := fmt.Sprintf("Chaos %s %d", []string{"Ada", "Bo", "Cy"}[r.IntN(3)], r.IntN(1000))
						pp.DisplayName, u.DisplayName = sp(v), v
					case 3:
						v := []string{"Berlin", "Oslo", ""}[r.IntN(3)]
						pp.OfficeLocation, u.OfficeLocation = sp(v), sp(v)
					case 4:
						v := fmt.Sprintf("+47 555 %04d", r.IntN(10000))
						pp.MobilePhone, u.MobilePhone = sp(v), sp(v)
					case 5:
						v := []string{"Kari", "Ola"}[r.IntN(2)]
						pp.GivenName, u.GivenName = sp(v), sp(v)
					default:
						v := []string{"NO", "SE", "DE", "US"}[r.IntN(4)]
						pp.UsageLocation, u.UsageLocation = sp(v), sp(v)
					}
				}
				s = append(s, mk(si, jobs.ActionUpdateUser, pp, "user:"+u.ref))
			case 1:
				if u.Enabled {
					s = append(s, mk(si, jobs.ActionDisableUser, jobs.DisableUserParams{UserRef: jobs.UserRef{User: u.ref}}, "user:"+u.ref))
				} else {
					s = append(s, mk(si, jobs.ActionEnableUser, jobs.EnableUserParams{UserRef: jobs.UserRef{User: u.ref}}, "user:"+u.ref))
				}
				u.Enabled = !u.Enabled
				if r.IntN(4) == 0 { // an idempotent repeat
					if u.Enabled {
						s = append(s, mk(si, jobs.ActionEnableUser, jobs.EnableUserParams{UserRef: jobs.UserRef{User: u.ref}}, "user:"+u.ref))
					} else {
						s = append(s, mk(si, jobs.ActionDisableUser, jobs.DisableUserParams{UserRef: jobs.UserRef{User: u.ref}}, "user:"+u.ref))
					}
				}
			case 2:
				po, given, err := password(si, jobs.ActionResetPassword, u.ref)
				if err != nil {
					return nil, err
				}
				po.ForceChangePassword = boolp(r.IntN(2) == 0)
				j := mk(si, jobs.ActionResetPassword, jobs.ResetPasswordParams{UserRef: jobs.UserRef{User: u.ref}, PasswordOptions: po}, "user:"+u.ref)
				j.Given, j.PasswordUser = given, u.Key
				u.LastPasswordJob = j.ID
				u.PasswordJobs = append(u.PasswordJobs, j.ID)
				s = append(s, j)
			case 3:
				if u.UsageLocation == nil {
					v := "NO"
					s = append(s, mk(si, jobs.ActionUpdateUser, jobs.UpdateUserParams{UserRef: jobs.UserRef{User: u.ref}, UsageLocation: &v}, "user:"+u.ref))
					u.UsageLocation = sp(v)
				}
				parts := []string{"FLOW_FREE", "FLOW_FREE", "ENTERPRISEPACK", "SPE_E5", "O365_BUSINESS_PREMIUM"}
				part := parts[r.IntN(len(parts))]
				sku := skus[part]
				if sku == nil {
					sku, part = skus["FLOW_FREE"], "FLOW_FREE"
				}
				_, has := u.Licenses[sku.ID]
				if !has && budget[part] <= 0 {
					sku, part = skus["FLOW_FREE"], "FLOW_FREE"
					_, has = u.Licenses[sku.ID]
					if !has && budget[part] <= 0 {
						return s, nil
					}
				}
				pp := jobs.AssignLicenseParams{UserRef: jobs.UserRef{User: u.ref}, SKU: part}
				if r.IntN(2) == 0 {
					pp.SKU = sku.ID
				}
				disabled := []string{}
				if r.IntN(4) == 0 && len(sku.Plans) > 0 {
					names := make([]string, 0, len(sku.Plans))
					for name := range sku.Plans {
						names = append(names, name)
					}
					sort.Strings(names)
					name := names[r.IntN(len(names))]
					pp.DisabledPlans = []string{name}
					disabled = []string{sku.Plans[name]}
				}
				if !has {
					budget[part]--
				}
				u.Licenses[sku.ID] = disabled
				s = append(s, mk(si, jobs.ActionAssignLicense, pp, "user:"+u.ref))
			default:
				var ids []string
				for id := range u.Licenses {
					if pbi == nil || id != pbi.ID {
						ids = append(ids, id)
					}
				}
				sort.Strings(ids)
				id := skus["FLOW_FREE"].ID
				if len(ids) > 0 && r.IntN(5) > 0 {
					id = ids[r.IntN(len(ids))]
				}
				ref := p.skuPart[id]
				if r.IntN(2) == 0 {
					ref = id
				}
				delete(u.Licenses, id)
				s = append(s, mk(si, jobs.ActionRemoveLicense, jobs.RemoveLicenseParams{UserRef: jobs.UserRef{User: u.ref}, SKU: ref}, "user:"+u.ref))
			}
		}
		return s, nil
	}
	deleteUser := func(si int, s []*job, u *mUser) []*job {
		u.Deleted = true
		u.Licenses = map[string][]string{}
		if !u.Created {
			p.deletedU[u.ID] = true
		}
		return append(s, mk(si, jobs.ActionDeleteUser, jobs.DeleteUserParams{UserRef: jobs.UserRef{User: u.ref}}, "user:"+u.ref))
	}
	// userOps appends k random operations on u, and maybe its deletion.
	userOps := func(si int, s []*job, u *mUser, k int, mayDelete bool) ([]*job, error) {
		weights := []int{0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4}
		for i := 0; i < k; i++ {
			var err error
			if s, err = userOp(si, s, u, weights[r.IntN(len(weights))]); err != nil {
				return nil, err
			}
		}
		if mayDelete && !u.HasPBI && r.IntN(5) == 0 {
			s = deleteUser(si, s, u)
		}
		return s, nil
	}
	// groupOp appends operation op on g to script s: 0 update, 1 add a
	// member, 2 remove one.
	groupOp := func(si int, s []*job, g *mGroup, op int) []*job {
		{
			switch {
			case op == 0:
				var pp jobs.UpdateGroupParams
				pp.Group = g.ref
				switch r.IntN(4) {
				case 0:
					v := fmt.Sprintf("Chaos group %d", r.IntN(10000))
					pp.DisplayName, g.DisplayName = &v, v
				case 1:
					if g.Unified {
						v := []string{"Public", "Private"}[r.IntN(2)]
						pp.Visibility, g.Visibility = &v, &v
						break
					}
					fallthrough
				default:
					v := fmt.Sprintf("described by chaos %d", r.IntN(10000))
					pp.Description, g.Description = &v, &v
				}
				s = append(s, mk(si, jobs.ActionUpdateGroup, pp, "group:"+g.ref))
			case op == 1 && len(p.pool) > 0:
				m := p.pool[r.IntN(len(p.pool))]
				ref := m
				if r.IntN(2) == 0 {
					ref = poolUPN[m]
				}
				s = append(s, mk(si, jobs.ActionAddGroupMember, jobs.AddGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: g.ref}, Member: ref}}, "group:"+g.ref))
				g.Members[m] = true
			case len(p.pool) > 0:
				// a pool member of the group when there is one, else an
				// idempotent removal
				var in []string
				for _, m := range p.pool {
					if g.Members[m] {
						in = append(in, m)
					}
				}
				m := p.pool[r.IntN(len(p.pool))]
				if len(in) > 0 && r.IntN(4) > 0 {
					m = in[r.IntN(len(in))]
				}
				ref := m
				if r.IntN(2) == 0 {
					ref = poolUPN[m]
				}
				s = append(s, mk(si, jobs.ActionRemoveGroupMember, jobs.RemoveGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: g.ref}, Member: ref}}, "group:"+g.ref))
				delete(g.Members, m)
			}
		}
		return s
	}
	deleteGroup := func(si int, s []*job, g *mGroup) []*job {
		g.Deleted = true
		return append(s, mk(si, jobs.ActionDeleteGroup, jobs.DeleteGroupParams{GroupRef: jobs.GroupRef{Group: g.ref}}, "group:"+g.ref))
	}
	groupOps := func(si int, s []*job, g *mGroup, k int) []*job {
		weights := []int{0, 0, 1, 1, 1, 1, 1, 2, 2, 2}
		for i := 0; i < k; i++ {
			s = groupOp(si, s, g, weights[r.IntN(len(weights))])
		}
		return s
	}

	// Deliberate failures, each on a target of its own.
	var fails []*job
	rounds := max(1, in.Jobs/300)
	for k := 0; k < rounds; k++ {
		si := -1
		if noSeatUser != nil {
			fails = append(fails, mk(si, jobs.ActionAssignLicense, jobs.AssignLicenseParams{UserRef: jobs.UserRef{User: noSeatUser.ID}, SKU: "POWER_BI_PRO"}, "user:"+noSeatUser.ID))
			fails[len(fails)-1].Expect = "no_free_seat"
		}
		if noLocUser != nil {
			fails = append(fails, mk(si, jobs.ActionAssignLicense, jobs.AssignLicenseParams{UserRef: jobs.UserRef{User: noLocUser.UserPrincipalName}, SKU: "FLOW_FREE"}, "user:"+noLocUser.UserPrincipalName))
			fails[len(fails)-1].Expect = "usage_location_missing"
		}
		nobody := fmt.Sprintf("chaos.nobody%d.%d@%s", k, in.Seed, p.domain)
		fails = append(fails, mk(si, jobs.ActionDisableUser, jobs.DisableUserParams{UserRef: jobs.UserRef{User: nobody}}, "user:"+nobody))
		fails[len(fails)-1].Expect = "user_not_found"
		if in.Dynamic != "" && len(p.pool) > 0 {
			fails = append(fails, mk(si, jobs.ActionAddGroupMember, jobs.AddGroupMemberParams{MemberParams: jobs.MemberParams{GroupRef: jobs.GroupRef{Group: in.Dynamic}, Member: p.pool[0]}}, "group:"+in.Dynamic))
			fails[len(fails)-1].Expect = "dynamic_group"
		}
		if conflictUser != nil {
			j := mk(si, jobs.ActionCreateUser, jobs.CreateUserParams{DisplayName: "Chaos Conflict", UserPrincipalName: conflictUser.UserPrincipalName, PasswordOptions: jobs.PasswordOptions{ReplyKey: in.ReplyKey}}, "user:"+conflictUser.UserPrincipalName)
			j.Expect, j.Creates = "upn_conflict", "user:"+conflictUser.UserPrincipalName
			fails = append(fails, j)
		}
		if conflictGroup != nil {
			j := mk(si, jobs.ActionCreateGroup, jobs.CreateGroupParams{DisplayName: "Chaos Conflict", MailNickname: conflictGroup.MailNickname, GroupType: jobs.GroupTypeSecurity}, "group:"+conflictGroup.MailNickname)
			j.Expect, j.Creates = "mail_nickname_conflict", "group:"+conflictGroup.MailNickname
			fails = append(fails, j)
		}
		if len(p.pool) > 0 {
			fails = append(fails, mk(si, jobs.ActionUpdateUser, map[string]string{"user": poolUPN[p.pool[len(p.pool)-1]]}, "user:"+poolUPN[p.pool[len(p.pool)-1]]))
			fails[len(fails)-1].Expect = jobs.CodeInvalidParams
		}
		nogroup := fmt.Sprintf("chaos-nogroup-%d-%d", k, in.Seed)
		fails = append(fails, mk(si, jobs.ActionUpdateGroup, jobs.UpdateGroupParams{GroupRef: jobs.GroupRef{Group: nogroup}, Description: sp("x")}, "group:"+nogroup))
		fails[len(fails)-1].Expect = "group_not_found"
		j := mk(si, jobs.ActionPrefix+"frobnicate", map[string]string{"user": "nobody@" + p.domain}, "")
		j.Expect = jobs.CodeUnknownAction
		fails = append(fails, j)
	}
	scripts = append(scripts, nil) // index 0: the failures, one job each below
	budgetJobs := in.Jobs - len(fails)

	newUsers, newGroups := 0, 0
	// newUser starts a script creating a user; forced lists the operations
	// to follow (nil: random ones, maybe a deletion).
	newUser := func(si int, forced []int, del bool) ([]*job, error) {
		newUsers++
		upn := fmt.Sprintf("chaos.u%d.%d@%s", newUsers, in.Seed, p.domain)
		u := &mUser{Key: "new:" + strings.ToLower(upn), UPN: upn, Created: true, ref: upn, Enabled: r.IntN(6) > 0,
			DisplayName: fmt.Sprintf("Chaos User %d", newUsers), Licenses: map[string][]string{}, Touched: true}
		if forced != nil {
			u.Enabled = true
		}
		po, given, err := password(si, jobs.ActionCreateUser, upn)
		if err != nil {
			return nil, err
		}
		cp := jobs.CreateUserParams{DisplayName: u.DisplayName, UserPrincipalName: upn, GivenName: "Chaos", Surname: fmt.Sprintf("U%d", newUsers),
			Department: "Chaos", PasswordOptions: po}
		u.GivenName, u.Department = sp("Chaos"), sp("Chaos")
		if !u.Enabled {
			cp.AccountEnabled = boolp(false)
		}
		if forced != nil || r.IntN(5) > 0 {
			cp.UsageLocation = []string{"NO", "US", "DE"}[r.IntN(3)]
			u.UsageLocation = sp(cp.UsageLocation)
		}
		j := mk(si, jobs.ActionCreateUser, cp, "user:"+upn)
		j.Given, j.PasswordUser, j.Creates = given, u.Key, "user:"+upn
		u.CreateJob, u.LastPasswordJob, u.PasswordJobs = j.ID, j.ID, []string{j.ID}
		s := []*job{j}
		p.users[u.Key] = u
		if forced == nil {
			return userOps(si, s, u, r.IntN(6), true)
		}
		for _, op := range forced {
			if s, err = userOp(si, s, u, op); err != nil {
				return nil, err
			}
		}
		if del {
			s = deleteUser(si, s, u)
		}
		return s, nil
	}
	newGroup := func(si int, forced []int, del bool) []*job {
		newGroups++
		nick := fmt.Sprintf("chaos-g%d-%d", newGroups, in.Seed)
		g := &mGroup{Key: "new:" + nick, Nick: nick, Created: true, DisplayName: fmt.Sprintf("Chaos Group %d", newGroups), Members: map[string]bool{}, ref: nick}
		cp := jobs.CreateGroupParams{DisplayName: g.DisplayName, MailNickname: nick, GroupType: jobs.GroupTypeSecurity}
		if r.IntN(2) == 0 {
			cp.GroupType, g.Unified = jobs.GroupTypeMicrosoft365, true
			g.Visibility = sp("Public")
			if r.IntN(2) == 0 {
				cp.Visibility, g.Visibility = "Private", sp("Private")
			}
		}
		if r.IntN(2) == 0 {
			cp.Description, g.Description = "made by chaos", sp("made by chaos")
		}
		for k := r.IntN(4); k > 0 && len(p.pool) > 0; k-- {
			m := p.pool[r.IntN(len(p.pool))]
			if g.Members[m] {
				continue
			}
			g.Members[m] = true
			if r.IntN(2) == 0 {
				cp.Members = append(cp.Members, m)
			} else {
				cp.Members = append(cp.Members, poolUPN[m])
			}
		}
		j := mk(si, jobs.ActionCreateGroup, cp, "group:"+nick)
		j.Creates, g.CreateJob = "group:"+nick, j.ID
		s := []*job{j}
		p.groups[g.Key] = g
		if forced == nil {
			s = groupOps(si, s, g, r.IntN(5))
			del = r.IntN(4) == 0
		}
		for _, op := range forced {
			s = groupOp(si, s, g, op)
		}
		if del {
			s = deleteGroup(si, s, g)
		}
		return s
	}

	// Two scripts cover every action whatever the dice say.
	total := 0
	for _, cover := range []func(si int) ([]*job, error){
		func(si int) ([]*job, error) { return newUser(si, []int{0, 1, 2, 3, 4, 1}, true) },
		func(si int) ([]*job, error) { return newGroup(si, []int{0, 1, 1, 2}, true), nil },
	} {
		s, err := cover(len(scripts))
		if err != nil {
			return nil, err
		}
		scripts = append(scripts, s)
		total += len(s)
	}
	for total < budgetJobs {
		si := len(scripts)
		var s []*job
		kind := r.IntN(100)
		switch {
		case kind < 30 || (kind < 60 && len(eligible) == 0):
			var err error
			if s, err = newUser(si, nil, false); err != nil {
				return nil, err
			}
		case kind < 60:
			su := eligible[0]
			eligible = eligible[1:]
			u := &mUser{Key: su.ID, ID: su.ID, UPN: su.UserPrincipalName, DisplayName: su.DisplayName, GivenName: su.GivenName, JobTitle: su.JobTitle,
				Department: su.Department, OfficeLocation: su.OfficeLocation, MobilePhone: su.MobilePhone, UsageLocation: su.UsageLocation,
				Enabled: su.AccountEnabled, Licenses: map[string][]string{}, Touched: true}
			for _, l := range su.AssignedLicenses {
				u.Licenses[l.SkuID] = append([]string{}, l.DisabledPlans...)
				if pbi != nil && strings.EqualFold(l.SkuID, pbi.ID) {
					u.HasPBI = true
				}
			}
			u.ref = su.ID
			if r.IntN(2) == 0 {
				u.ref = su.UserPrincipalName
			}
			p.users[u.Key] = u
			var err error
			if s, err = userOps(si, s, u, 1+r.IntN(5), true); err != nil {
				return nil, err
			}
		case kind < 80 && len(editable) > 0:
			sg := editable[0]
			editable = editable[1:]
			g := &mGroup{Key: sg.ID, ID: sg.ID, Nick: sg.MailNickname, DisplayName: sg.DisplayName, Description: sg.Description, Visibility: sg.Visibility,
				Members: map[string]bool{}, ref: sg.ID}
			for _, t := range sg.GroupTypes {
				g.Unified = g.Unified || t == "Unified"
			}
			for _, m := range sg.Members {
				g.Members[m] = true
			}
			s = groupOps(si, s, g, 1+r.IntN(6))
			if r.IntN(10) == 0 {
				s = deleteGroup(si, s, g)
			}
			p.groups[g.Key] = g
			p.touchedG[g.ID] = true
		default:
			s = newGroup(si, nil, false)
		}
		scripts = append(scripts, s)
		total += len(s)
	}
	for _, f := range fails {
		scripts = append(scripts, []*job{f})
	}

	// Interleave the scripts at random, keeping each one's order, and put
	// sync jobs in between (the first job is a full round).
	var order []*job
	for {
		var live []int
		for i, s := range scripts {
			if len(s) > 0 {
				live = append(live, i)
			}
		}
		if len(live) == 0 {
			break
		}
		i := live[r.IntN(len(live))]
		order = append(order, scripts[i][0])
		scripts[i] = scripts[i][1:]
	}
	syncs := max(4, in.Jobs/40)
	syncAt := map[int]bool{}
	for len(syncAt) < syncs-1 {
		syncAt[1+r.IntN(len(order))] = true
	}
	mkSync := func(full bool) *job {
		raw, _ := json.Marshal(jobs.SyncParams{Full: full})
		n++
		j := &job{ID: fmt.Sprintf("chaos-%d-%04d-sync", in.Seed, n), Action: jobs.ActionSync, Params: raw, Script: -1,
			Subject: "m365.jobs." + jobs.DefaultPool + "." + in.Instance + ".sync"}
		p.syncJobs = append(p.syncJobs, j.ID)
		return j
	}
	p.jobs = append(p.jobs, mkSync(true))
	for i, j := range order {
		if syncAt[i] {
			p.jobs = append(p.jobs, mkSync(r.IntN(3) == 0))
		}
		p.jobs = append(p.jobs, j)
	}
	for _, j := range p.jobs {
		p.byID[j.ID] = j
		switch {
		case r.IntN(100) < 8:
			j.Twice = true
		case r.IntN(100) < 5 && j.Action != jobs.ActionPrefix+"frobnicate":
			j.CopyAfter = 3 + r.IntN(40)
		}
	}
	for _, a := range jobs.Actions() {
		if a != jobs.ActionSync && p.actions[a] == 0 {
			return nil, fmt.Errorf("plan of %d jobs (seed %d) has no %s job: give more jobs", in.Jobs, in.Seed, a)
		}
	}
	return p, nil
}

// actionJobs counts the plan's action jobs.
func (p *plan) actionJobs() int { return len(p.jobs) - len(p.syncJobs) }

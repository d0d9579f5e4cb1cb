package handlers

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

func jobKey(jobID string) string { return base64.RawURLEncoding.EncodeToString([]byte(jobID)) }

// UserOutput is the output of the user actions.
type UserOutput struct {
	UserID            string `json:"user_id"`
	UserPrincipalName string `json:"user_principal_name,omitempty"`
	// Changed is false when the user already was as asked (an idempotent
	// success) or on a dry run.
	Changed bool `json:"changed"`
	// WouldChange lists, on a dry run, what the action would change.
	WouldChange []string `json:"would_change,omitempty"`
	// Password is a generated password sealed to the job's reply_key.
	Password *jobs.SealedSecret `json:"password,omitempty"`
	// License names the licence of assign_license / remove_license.
	License string `json:"license,omitempty"`
}

func aliasOf(upn string) string {
	alias, _, _ := strings.Cut(upn, "@")
	var b strings.Builder
	for _, r := range alias {
		if r > 0x20 && r < 0x7f && !strings.ContainsRune(`@()\[]";:<>, `, r) {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func (a *Actions) createUser(ctx context.Context, j *worker.Job, p *jobs.CreateUserParams) (any, error) {
	c, err := a.client(j)
	if err != nil {
		return nil, err
	}
	if j.DryRun {
		_, err := c.GetUser(ctx, p.UserPrincipalName)
		switch {
		case err == nil:
			return nil, fail(CodeUPNConflict, "a user "+p.UserPrincipalName+" already exists", err)
		case !errors.Is(err, graphclient.ErrNotFound):
			return nil, classify(err, CodeUserNotFound, "user "+p.UserPrincipalName)
		}
		return UserOutput{UserPrincipalName: p.UserPrincipalName, WouldChange: []string{"create user " + p.UserPrincipalName}}, nil
	}
	prior, err := a.effect(ctx, j)
	if err != nil {
		return nil, err
	}
	if prior == nil {
		// The first delivery: a user already there is someone else's.
		if _, err := c.GetUser(ctx, p.UserPrincipalName); err == nil {
			return nil, worker.Permanent(CodeUPNConflict, "a user "+p.UserPrincipalName+" already exists")
		} else if !errors.Is(err, graphclient.ErrNotFound) {
			return nil, classify(err, CodeUserNotFound, "user "+p.UserPrincipalName)
		}
	}
	pw, ef, err := a.jobPassword(ctx, j, p.PasswordOptions, prior)
	if err != nil {
		return nil, err
	}
	nick := p.MailNickname
	if nick == "" {
		nick = aliasOf(p.UserPrincipalName)
	}
	enabled := p.AccountEnabled == nil || *p.AccountEnabled
	nu := graphclient.NewUser{DisplayName: p.DisplayName, UserPrincipalName: p.UserPrincipalName, MailNickname: nick, GivenName: p.GivenName,
		Surname: p.Surname, JobTitle: p.JobTitle, Department: p.Department, OfficeLocation: p.OfficeLocation, MobilePhone: p.MobilePhone,
		UsageLocation: p.UsageLocation, AccountEnabled: enabled, Password: pw, ForceChangePassword: p.ForceChange()}
	u, err := c.CreateUser(ctx, nu)
	if errors.Is(err, graphclient.ErrConflict) {
		// Made by this job: an earlier delivery, or this one's own request
		// whose answer was lost and which the transport sent again.
		existing, gerr := c.GetUser(ctx, p.UserPrincipalName)
		if gerr == nil && existing.DisplayName == p.DisplayName {
			a.refreshUser(ctx, j, c, existing.ID)
			return UserOutput{UserID: existing.ID, UserPrincipalName: existing.UserPrincipalName, Changed: true, Password: ef.Password}, nil
		}
		if errors.Is(gerr, graphclient.ErrNotFound) {
			// Not readable yet (replication): the redelivery finds it.
			return nil, worker.RetryAfter(time.Second, fmt.Errorf("user %s exists but cannot be read yet: %w", p.UserPrincipalName, gerr))
		}
		return nil, fail(CodeUPNConflict, "a user "+p.UserPrincipalName+" already exists", err)
	}
	if err != nil {
		return nil, classify(err, CodeUserNotFound, "user "+p.UserPrincipalName)
	}
	ef.ObjectID = u.ID
	_ = a.recordEffect(ctx, j, *ef)
	a.refreshUserRecord(ctx, j, c, createdUser(ctx, c, u, nu))
	return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, Changed: true, Password: ef.Password}, nil
}

// createdUser is the record published for a user just created. POST /users
// answers with Graph's default set only: accountEnabled, usageLocation,
// userType, createdDateTime, assignedLicenses and the rest are "Returned
// only on $select". So the user is read back with the sync's $select, and
// the asset is what the next round publishes; while the read still misses
// it (replication), the answer is completed from what the job set and what
// Graph gives a new cloud user (userType Member, no licences), with no
// creation date until the next round.
func createdUser(ctx context.Context, c *graphclient.Client, answer *graphclient.User, nu graphclient.NewUser) *graphclient.User {
	if u, err := c.GetUser(ctx, answer.ID); err == nil {
		return u
	}
	u := *answer
	opt := func(have *string, set string) *string {
		if have != nil || set == "" {
			return have
		}
		return &set
	}
	u.AccountEnabled = &nu.AccountEnabled
	u.MailNickname = opt(u.MailNickname, nu.MailNickname)
	u.Department = opt(u.Department, nu.Department)
	u.UsageLocation = opt(u.UsageLocation, nu.UsageLocation)
	u.UserType = opt(u.UserType, "Member")
	u.AssignedLicenses = []graphclient.AssignedLicense{}
	return &u
}

func (a *Actions) updateUser(ctx context.Context, j *worker.Job, p *jobs.UpdateUserParams) (any, error) {
	c, err := a.client(j)
	if err != nil {
		return nil, err
	}
	u, err := a.user(ctx, j, c, p.User)
	if err != nil {
		return nil, err
	}
	patch := graphclient.UserPatch{DisplayName: p.DisplayName, UserPrincipalName: p.UserPrincipalName, MailNickname: p.MailNickname, GivenName: p.GivenName,
		Surname: p.Surname, JobTitle: p.JobTitle, Department: p.Department, OfficeLocation: p.OfficeLocation, MobilePhone: p.MobilePhone, UsageLocation: p.UsageLocation}
	var fields []string
	for name, v := range map[string]*string{"display_name": p.DisplayName, "user_principal_name": p.UserPrincipalName, "mail_nickname": p.MailNickname,
		"given_name": p.GivenName, "surname": p.Surname, "job_title": p.JobTitle, "department": p.Department, "office_location": p.OfficeLocation,
		"mobile_phone": p.MobilePhone, "usage_location": p.UsageLocation} {
		if v != nil {
			fields = append(fields, name)
		}
	}
	if j.DryRun {
		return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, WouldChange: fields}, nil
	}
	if err := c.UpdateUser(ctx, u.ID, patch); err != nil {
		if errors.Is(err, graphclient.ErrConflict) {
			return nil, fail(CodeUPNConflict, "another user already has that user principal name", err)
		}
		return nil, classify(err, CodeUserNotFound, "user "+p.User)
	}
	a.refreshUser(ctx, j, c, u.ID)
	return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, Changed: true}, nil
}

func (a *Actions) deleteUser(ctx context.Context, j *worker.Job, p *jobs.DeleteUserParams) (any, error) {
	c, err := a.client(j)
	if err != nil {
		return nil, err
	}
	u, err := c.GetUser(ctx, p.User)
	if errors.Is(err, graphclient.ErrNotFound) {
		// Already in the recycle bin (an earlier delivery, or an admin):
		// the effect the job asks for is there.
		// The delete is published again: an earlier delivery may have
		// deleted it and died before its refresh.
		if id, rerr := c.RecycledID(ctx, p.User, false); rerr == nil && id != "" {
			if j.DryRun {
				return UserOutput{UserID: id, Changed: false}, nil
			}
			a.refreshDeleted(ctx, j, jobs.AssetUser, id)
			// An earlier delivery of this job deleted it: the same output.
			if prior, _ := a.effect(ctx, j); prior != nil && prior.ObjectID == id {
				return UserOutput{UserID: id, UserPrincipalName: prior.Name, Changed: true}, nil
			}
			return UserOutput{UserID: id, Changed: false}, nil
		}
		return nil, classify(a.find(ctx, j, p.User, func() error { return err }), CodeUserNotFound, "user "+p.User)
	}
	if err != nil {
		return nil, classify(err, CodeUserNotFound, "user "+p.User)
	}
	if j.DryRun {
		return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, WouldChange: []string{"move to the recycle bin (restorable for 30 days)"}}, nil
	}
	if err := a.recordEffect(ctx, j, effect{ObjectID: u.ID, Name: u.UserPrincipalName}); err != nil {
		return nil, err
	}
	if err := c.DeleteUser(ctx, u.ID); err != nil && !errors.Is(err, graphclient.ErrNotFound) {
		return nil, classify(err, CodeUserNotFound, "user "+p.User)
	}
	a.refreshDeleted(ctx, j, jobs.AssetUser, u.ID)
	return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, Changed: true}, nil
}

func (a *Actions) setEnabled(ctx context.Context, j *worker.Job, ref string, enabled bool) (any, error) {
	c, err := a.client(j)
	if err != nil {
		return nil, err
	}
	u, err := a.user(ctx, j, c, ref)
	if err != nil {
		return nil, err
	}
	if u.AccountEnabled != nil && *u.AccountEnabled == enabled {
		return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, Changed: false}, nil
	}
	if j.DryRun {
		return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, WouldChange: []string{fmt.Sprintf("accountEnabled → %v", enabled)}}, nil
	}
	if err := c.UpdateUser(ctx, u.ID, graphclient.UserPatch{AccountEnabled: &enabled}); err != nil {
		return nil, classify(err, CodeUserNotFound, "user "+ref)
	}
	a.refreshUser(ctx, j, c, u.ID)
	return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, Changed: true}, nil
}

func (a *Actions) resetPassword(ctx context.Context, j *worker.Job, p *jobs.ResetPasswordParams) (any, error) {
	c, err := a.client(j)
	if err != nil {
		return nil, err
	}
	u, err := a.user(ctx, j, c, p.User)
	if err != nil {
		return nil, err
	}
	if j.DryRun {
		return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, WouldChange: []string{"new password"}}, nil
	}
	prior, err := a.effect(ctx, j)
	if err != nil {
		return nil, err
	}
	pw, ef, err := a.jobPassword(ctx, j, p.PasswordOptions, prior)
	if err != nil {
		return nil, err
	}
	sealed := ef.Password
	if err := c.SetPassword(ctx, u.ID, pw, p.ForceChange()); err != nil {
		if errors.Is(err, graphclient.ErrForbidden) {
			return nil, fail(CodeInsufficientPrivileges, "password resets need the app to hold the User Administrator directory role (Privileged Authentication Administrator for administrators' passwords) besides User.ReadWrite.All: assign the role to the app in Entra ID → Roles and administrators", err)
		}
		return nil, classify(err, CodeUserNotFound, "user "+p.User)
	}
	return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, Changed: true, Password: sealed}, nil
}

// jobPassword is the password a job sets, the same on every delivery of the
// job: given by the requester (sealed to the pool), or generated once and
// recorded, sealed to the requester and to the pool, before Graph is called.
// A redelivery sets that same password again and returns the same sealed
// copy, so the password the requester receives is the one that works. The
// job's intent is recorded either way (the returned effect), so a
// redelivery knows an earlier delivery may have acted.
func (a *Actions) jobPassword(ctx context.Context, j *worker.Job, o jobs.PasswordOptions, prior *effect) (string, *effect, error) {
	if prior != nil && prior.PoolPassword != nil {
		b, err := j.OpenSecret(prior.PoolPassword, passwordBinding(j))
		if err != nil {
			return "", nil, worker.Permanent(CodeSecretUnreadable, "cannot open the password an earlier delivery of this job recorded: "+err.Error())
		}
		return string(b), prior, nil
	}
	pw, sealed, err := password(j, o)
	if err != nil {
		return "", nil, err
	}
	ef := effect{Password: sealed}
	if sealed != nil {
		if ef.PoolPassword, err = j.SealForPool([]byte(pw), passwordBinding(j)); err != nil {
			return "", nil, worker.Permanent(CodeSecretUnreadable, "cannot keep the generated password for redeliveries: "+err.Error())
		}
	}
	if prior == nil || sealed != nil {
		if err := a.recordEffect(ctx, j, ef); err != nil {
			return "", nil, err
		}
	}
	return pw, &ef, nil
}

// sku resolves a licence and the disabled plans (ids or names).
func (a *Actions) sku(ctx context.Context, c *graphclient.Client, ref string, plans []string) (*graphclient.SKU, []string, error) {
	s, err := c.FindSKU(ctx, ref)
	if err != nil {
		if errors.Is(err, graphclient.ErrNotFound) {
			return nil, nil, fail(CodeSKUNotFound, err.Error(), err)
		}
		return nil, nil, classify(err, CodeSKUNotFound, "licence "+ref)
	}
	var ids []string
	for _, p := range plans {
		found := ""
		for _, sp := range s.ServicePlans {
			if strings.EqualFold(sp.ID, p) || strings.EqualFold(sp.Name, p) {
				found = sp.ID
			}
		}
		if found == "" {
			var names []string
			for _, sp := range s.ServicePlans {
				names = append(names, sp.Name)
			}
			return nil, nil, worker.Permanent(CodePlanNotFound, fmt.Sprintf("%s has no service plan %q (it has %s)", s.SkuPartNumber, p, strings.Join(names, ", ")))
		}
		ids = append(ids, found)
	}
	return s, ids, nil
}

func hasLicense(u *graphclient.User, skuID string) (bool, []string) {
	for _, l := range u.AssignedLicenses {
		if strings.EqualFold(l.SkuID, skuID) {
			return true, l.DisabledPlans
		}
	}
	return false, nil
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]bool{}
	for _, x := range a {
		m[strings.ToLower(x)] = true
	}
	for _, x := range b {
		if !m[strings.ToLower(x)] {
			return false
		}
	}
	return true
}

func (a *Actions) assignLicense(ctx context.Context, j *worker.Job, p *jobs.AssignLicenseParams) (any, error) {
	c, err := a.client(j)
	if err != nil {
		return nil, err
	}
	u, err := a.user(ctx, j, c, p.User)
	if err != nil {
		return nil, err
	}
	s, plans, err := a.sku(ctx, c, p.SKU, p.DisabledPlans)
	if err != nil {
		return nil, err
	}
	out := UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, License: s.SkuPartNumber}
	if has, disabled := hasLicense(u, s.SkuID); has && sameSet(disabled, plans) {
		return out, nil // already assigned as asked
	} else if !has && s.Available() <= 0 {
		return nil, worker.Permanent(CodeNoFreeSeat, fmt.Sprintf("%s has no available licence (%d of %d used)", s.SkuPartNumber, s.ConsumedUnits, s.Enabled))
	}
	if u.UsageLocation == nil {
		return nil, worker.Permanent(CodeUsageLocationMissing, "user "+p.User+" has no usage location: set usage_location (an ISO country code) with update_user first")
	}
	if j.DryRun {
		out.WouldChange = []string{"assign " + s.SkuPartNumber}
		return out, nil
	}
	if err := c.AssignLicense(ctx, u.ID, []graphclient.LicenseChange{{SkuID: s.SkuID, DisabledPlans: plans}}, nil); err != nil {
		if errors.Is(err, graphclient.ErrNoFreeSeat) { // taken since the SKU was read
			return nil, fail(CodeNoFreeSeat, fmt.Sprintf("%s has no available licence (all %d used)", s.SkuPartNumber, s.Enabled), err)
		}
		return nil, classify(err, CodeUserNotFound, "user "+p.User)
	}
	out.Changed = true
	a.refreshUser(ctx, j, c, u.ID)
	a.refreshLicense(ctx, j, c, s.SkuID)
	return out, nil
}

func (a *Actions) removeLicense(ctx context.Context, j *worker.Job, p *jobs.RemoveLicenseParams) (any, error) {
	c, err := a.client(j)
	if err != nil {
		return nil, err
	}
	u, err := a.user(ctx, j, c, p.User)
	if err != nil {
		return nil, err
	}
	s, _, err := a.sku(ctx, c, p.SKU, nil)
	if err != nil {
		return nil, err
	}
	out := UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, License: s.SkuPartNumber}
	if has, _ := hasLicense(u, s.SkuID); !has {
		return out, nil // nothing to remove
	}
	if j.DryRun {
		out.WouldChange = []string{"remove " + s.SkuPartNumber}
		return out, nil
	}
	if err := c.AssignLicense(ctx, u.ID, nil, []string{s.SkuID}); err != nil {
		// Refused because it is gone already: this job's own request,
		// whose answer was lost and which the transport sent again.
		if !errors.Is(err, graphclient.ErrBadRequest) || !a.licenseGone(ctx, c, u.ID, s.SkuID) {
			return nil, classify(err, CodeUserNotFound, "user "+p.User)
		}
	}
	out.Changed = true
	a.refreshUser(ctx, j, c, u.ID)
	a.refreshLicense(ctx, j, c, s.SkuID)
	return out, nil
}

// licenseGone reads the user again and reports whether it no longer holds
// the SKU.
func (a *Actions) licenseGone(ctx context.Context, c *graphclient.Client, userID, skuID string) bool {
	u, err := c.GetUser(ctx, userID)
	if err != nil {
		return false
	}
	has, _ := hasLicense(u, skuID)
	return !has
}

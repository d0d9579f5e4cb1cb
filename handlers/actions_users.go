package handlers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/publisher"
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

// refresh publishes the affected assets right after an action, so Tevyra
// shows the change before the next sync.
func (a *Actions) refresh(ctx context.Context, j *worker.Job, typ string, changes []jobs.AssetChange) {
	d := &jobs.AssetDelta{SchemaVersion: jobs.SchemaVersion, Instance: j.Job.Instance, SyncID: "action:" + j.ID, Type: typ,
		Mode: jobs.ModeIncremental, Batch: 1, Last: true, Changes: changes}
	if _, err := a.pub.Publish(context.WithoutCancel(ctx), publisher.Message{Subject: a.sub.Assets(j.Job.Instance, typ), MsgID: "assets:action:" + j.Job.Instance + ":" + j.ID + ":" + typ, Value: d}); err != nil {
		j.Logger.Warn("action: post-action refresh not published; the next sync will carry the change", "error", err)
	}
}

func (a *Actions) refreshUser(ctx context.Context, j *worker.Job, c *graphclient.Client, id string) {
	u, err := c.GetUser(ctx, id)
	if err != nil {
		j.Logger.Debug("action: post-action refresh skipped", "error", err)
		return
	}
	a.refreshUserRecord(ctx, j, c, u)
}

// refreshUserRecord publishes a user record already at hand.
func (a *Actions) refreshUserRecord(ctx context.Context, j *worker.Job, c *graphclient.Client, u *graphclient.User) {
	skus, err := c.SubscribedSKUs(ctx)
	if err != nil {
		return
	}
	part := map[string]string{}
	for _, s := range skus {
		part[strings.ToLower(s.SkuID)] = s.SkuPartNumber
	}
	raw, _ := json.Marshal(userAssetOf(u, part))
	a.refresh(ctx, j, jobs.AssetUser, []jobs.AssetChange{{Op: jobs.OpUpsert, ID: u.ID, Asset: raw}})
}

func (a *Actions) refreshLicense(ctx context.Context, j *worker.Job, c *graphclient.Client, skuID string) {
	skus, err := c.SubscribedSKUs(ctx)
	if err != nil {
		return
	}
	for _, s := range skus {
		if strings.EqualFold(s.SkuID, skuID) {
			raw, _ := json.Marshal(licenseAssetOf(s))
			a.refresh(ctx, j, jobs.AssetLicense, []jobs.AssetChange{{Op: jobs.OpUpsert, ID: s.SkuID, Asset: raw}})
		}
	}
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
	pw, sealed, err := password(j, p.PasswordOptions)
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
	// Record the intent (with the sealed password) before the effect: a
	// redelivery after a crash finds the user it created.
	if prior == nil {
		if err := a.recordEffect(ctx, j, effect{Password: sealed}); err != nil {
			return nil, err
		}
	}
	u, err := c.CreateUser(ctx, nu)
	if errors.Is(err, graphclient.ErrConflict) {
		existing, gerr := c.GetUser(ctx, p.UserPrincipalName)
		if prior != nil && gerr == nil && existing.DisplayName == p.DisplayName {
			// Created by an earlier delivery of this job.
			a.refreshUser(ctx, j, c, existing.ID)
			return UserOutput{UserID: existing.ID, UserPrincipalName: existing.UserPrincipalName, Changed: true, Password: prior.Password}, nil
		}
		return nil, fail(CodeUPNConflict, "a user "+p.UserPrincipalName+" already exists", err)
	}
	if err != nil {
		return nil, classify(err, CodeUserNotFound, "user "+p.UserPrincipalName)
	}
	_ = a.recordEffect(ctx, j, effect{ObjectID: u.ID, Password: sealed})
	a.refreshUserRecord(ctx, j, c, u) // the created record: a read could still miss it
	return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, Changed: true, Password: sealed}, nil
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
		if in, rerr := c.InRecycleBin(ctx, p.User, false); rerr == nil && in {
			return UserOutput{UserID: p.User, Changed: false}, nil
		}
		return nil, classify(a.find(ctx, j, p.User, func() error { return err }), CodeUserNotFound, "user "+p.User)
	}
	if err != nil {
		return nil, classify(err, CodeUserNotFound, "user "+p.User)
	}
	if j.DryRun {
		return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, WouldChange: []string{"move to the recycle bin (restorable for 30 days)"}}, nil
	}
	if err := c.DeleteUser(ctx, u.ID); err != nil && !errors.Is(err, graphclient.ErrNotFound) {
		return nil, classify(err, CodeUserNotFound, "user "+p.User)
	}
	a.refresh(ctx, j, jobs.AssetUser, []jobs.AssetChange{{Op: jobs.OpDelete, ID: u.ID, Reason: jobs.ReasonSoftDeleted}})
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
	pw, sealed, err := a.resetPasswordOf(ctx, j, p.PasswordOptions)
	if err != nil {
		return nil, err
	}
	if err := c.SetPassword(ctx, u.ID, pw, p.ForceChange()); err != nil {
		if errors.Is(err, graphclient.ErrForbidden) {
			return nil, fail(CodeInsufficientPrivileges, "password resets need the app to hold the User Administrator directory role (Privileged Authentication Administrator for administrators' passwords) besides User.ReadWrite.All: assign the role to the app in Entra ID → Roles and administrators", err)
		}
		return nil, classify(err, CodeUserNotFound, "user "+p.User)
	}
	return UserOutput{UserID: u.ID, UserPrincipalName: u.UserPrincipalName, Changed: true, Password: sealed}, nil
}

// resetPasswordOf is the password a reset_password job sets. A generated one
// is recorded (sealed to the requester and to the pool) before Graph is
// called: a redelivery sets the same password again and returns the same
// sealed copy, so the password the requester receives is the one that works.
func (a *Actions) resetPasswordOf(ctx context.Context, j *worker.Job, o jobs.PasswordOptions) (string, *jobs.SealedSecret, error) {
	prior, err := a.effect(ctx, j)
	if err != nil {
		return "", nil, err
	}
	if prior != nil && prior.PoolPassword != nil {
		b, err := j.OpenSecret(prior.PoolPassword)
		if err != nil {
			return "", nil, worker.Permanent(CodeSecretUnreadable, "cannot open the password an earlier delivery of this job recorded: "+err.Error())
		}
		return string(b), prior.Password, nil
	}
	pw, sealed, err := password(j, o)
	if err != nil || sealed == nil {
		return pw, sealed, err // given by the requester: the same on every delivery
	}
	kept, err := j.SealForPool([]byte(pw))
	if err != nil {
		return "", nil, worker.Permanent(CodeSecretUnreadable, "cannot keep the generated password for redeliveries: "+err.Error())
	}
	if err := a.recordEffect(ctx, j, effect{Password: sealed, PoolPassword: kept}); err != nil {
		return "", nil, err
	}
	return pw, sealed, nil
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
		return nil, classify(err, CodeUserNotFound, "user "+p.User)
	}
	out.Changed = true
	a.refreshUser(ctx, j, c, u.ID)
	a.refreshLicense(ctx, j, c, s.SkuID)
	return out, nil
}

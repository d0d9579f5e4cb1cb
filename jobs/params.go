package jobs

// Params are the typed parameters of one action. Validate adds every problem
// it finds to ve, naming fields by their JSON names (without "params.").
type Params interface {
	Validate(ve *ValidationError)
	// Target names the object the job acts on (a user, a group), as given
	// in the job; jobs of one instance with the same target take effect in
	// publication order. Empty for the sync job.
	Target() string
}

// SyncParams are the parameters of a sync job.
type SyncParams struct {
	// Full forces a full round instead of an incremental one.
	Full bool `json:"full,omitempty"`
}

func (p *SyncParams) Validate(*ValidationError) {}
func (p *SyncParams) Target() string            { return "" }

// UserRef names a user by object id or user principal name.
type UserRef struct {
	User string `json:"user"`
}

func (p *UserRef) Validate(ve *ValidationError) { userRef(ve, "user", p.User) }
func (p *UserRef) Target() string               { return "user:" + p.User }

// GroupRef names a group by object id or mail nickname.
type GroupRef struct {
	Group string `json:"group"`
}

func (p *GroupRef) Validate(ve *ValidationError) { groupRef(ve, "group", p.Group) }
func (p *GroupRef) Target() string               { return "group:" + p.Group }

// PasswordOptions are shared by create_user and reset_password. Either a
// Password sealed to the pool's key is given, or the worker generates one that
// meets Entra's complexity rules and returns it sealed to ReplyKey.
type PasswordOptions struct {
	// Password is the new password, sealed to the pool's public key.
	Password *SealedSecret `json:"password,omitempty"`
	// ReplyKey is the requester's curve public key; a generated password is
	// returned sealed to it. Required when Password is absent.
	ReplyKey string `json:"reply_key,omitempty"`
	// ForceChangePassword makes the user change the password at next
	// sign-in. Default true.
	ForceChangePassword *bool `json:"force_change_password,omitempty"`
}

func (p *PasswordOptions) validate(ve *ValidationError) {
	switch {
	case p.Password != nil && p.ReplyKey != "":
		ve.Add("reply_key", "must not be given with password (reply_key receives a generated password; none is generated when password is given)")
	case p.Password != nil:
		p.Password.validate(ve, "password")
	case p.ReplyKey == "":
		ve.Add("reply_key", "is required when password is not given: the generated password is sealed to it")
	default:
		xkey(ve, "reply_key", p.ReplyKey)
	}
}

// ForceChange returns ForceChangePassword with its default (true).
func (p *PasswordOptions) ForceChange() bool {
	return p.ForceChangePassword == nil || *p.ForceChangePassword
}

// CreateUserParams are the parameters of microsoft-365.create_user.
type CreateUserParams struct {
	DisplayName       string `json:"display_name"`
	UserPrincipalName string `json:"user_principal_name"`
	// MailNickname defaults to the alias of UserPrincipalName.
	MailNickname   string `json:"mail_nickname,omitempty"`
	GivenName      string `json:"given_name,omitempty"`
	Surname        string `json:"surname,omitempty"`
	JobTitle       string `json:"job_title,omitempty"`
	Department     string `json:"department,omitempty"`
	OfficeLocation string `json:"office_location,omitempty"`
	MobilePhone    string `json:"mobile_phone,omitempty"`
	// UsageLocation (ISO 3166-1 alpha-2) is needed before a licence can be
	// assigned.
	UsageLocation string `json:"usage_location,omitempty"`
	// AccountEnabled defaults to true.
	AccountEnabled *bool `json:"account_enabled,omitempty"`
	PasswordOptions
}

func (p *CreateUserParams) Validate(ve *ValidationError) {
	if required(ve, "display_name", p.DisplayName) {
		maxLen(ve, "display_name", p.DisplayName, 256)
	}
	upn(ve, "user_principal_name", p.UserPrincipalName)
	if p.MailNickname != "" {
		nickname(ve, "mail_nickname", p.MailNickname)
	}
	p.validateProfile(ve)
	if p.UsageLocation != "" {
		usageLocation(ve, "usage_location", p.UsageLocation)
	}
	p.PasswordOptions.validate(ve)
}

func (p *CreateUserParams) validateProfile(ve *ValidationError) {
	maxLen(ve, "given_name", p.GivenName, 64)
	maxLen(ve, "surname", p.Surname, 64)
	maxLen(ve, "job_title", p.JobTitle, 128)
	maxLen(ve, "department", p.Department, 64)
	maxLen(ve, "office_location", p.OfficeLocation, 128)
	maxLen(ve, "mobile_phone", p.MobilePhone, 64)
}

func (p *CreateUserParams) Target() string { return "user:" + p.UserPrincipalName }

// UpdateUserParams are the parameters of microsoft-365.update_user. Only the
// fields given change; an empty string clears an optional property.
type UpdateUserParams struct {
	UserRef
	DisplayName       *string `json:"display_name,omitempty"`
	UserPrincipalName *string `json:"user_principal_name,omitempty"`
	MailNickname      *string `json:"mail_nickname,omitempty"`
	GivenName         *string `json:"given_name,omitempty"`
	Surname           *string `json:"surname,omitempty"`
	JobTitle          *string `json:"job_title,omitempty"`
	Department        *string `json:"department,omitempty"`
	OfficeLocation    *string `json:"office_location,omitempty"`
	MobilePhone       *string `json:"mobile_phone,omitempty"`
	UsageLocation     *string `json:"usage_location,omitempty"`
}

func (p *UpdateUserParams) Validate(ve *ValidationError) {
	p.UserRef.Validate(ve)
	changes := 0
	str := func(field string, v *string, n int, cleared bool) {
		if v == nil {
			return
		}
		changes++
		if *v == "" && !cleared {
			ve.Add(field, "cannot be cleared")
		}
		maxLen(ve, field, *v, n)
	}
	str("display_name", p.DisplayName, 256, false)
	str("given_name", p.GivenName, 64, true)
	str("surname", p.Surname, 64, true)
	str("job_title", p.JobTitle, 128, true)
	str("department", p.Department, 64, true)
	str("office_location", p.OfficeLocation, 128, true)
	str("mobile_phone", p.MobilePhone, 64, true)
	if p.UserPrincipalName != nil {
		changes++
		upn(ve, "user_principal_name", *p.UserPrincipalName)
	}
	if p.MailNickname != nil {
		changes++
		nickname(ve, "mail_nickname", *p.MailNickname)
	}
	if p.UsageLocation != nil {
		changes++
		// Graph's usageLocation is "Not nullable": it can be changed, not
		// cleared.
		if *p.UsageLocation == "" {
			ve.Add("usage_location", "cannot be cleared: Graph's usageLocation is not nullable; give another country code")
		} else {
			usageLocation(ve, "usage_location", *p.UsageLocation)
		}
	}
	if changes == 0 && !ve.Has("user") {
		ve.Add("params", "must name at least one property to change besides user")
	}
}

// DeleteUserParams are the parameters of microsoft-365.delete_user.
type DeleteUserParams struct{ UserRef }

// DisableUserParams are the parameters of microsoft-365.disable_user.
type DisableUserParams struct{ UserRef }

// EnableUserParams are the parameters of microsoft-365.enable_user.
type EnableUserParams struct{ UserRef }

// ResetPasswordParams are the parameters of microsoft-365.reset_password.
type ResetPasswordParams struct {
	UserRef
	PasswordOptions
}

func (p *ResetPasswordParams) Validate(ve *ValidationError) {
	p.UserRef.Validate(ve)
	p.PasswordOptions.validate(ve)
}

// AssignLicenseParams are the parameters of microsoft-365.assign_license.
type AssignLicenseParams struct {
	UserRef
	// SKU is a skuId or a skuPartNumber (ENTERPRISEPACK).
	SKU string `json:"sku"`
	// DisabledPlans are service plans (servicePlanId or servicePlanName)
	// to leave off.
	DisabledPlans []string `json:"disabled_plans,omitempty"`
}

func (p *AssignLicenseParams) Validate(ve *ValidationError) {
	p.UserRef.Validate(ve)
	skuRef(ve, "sku", p.SKU)
	seen := map[string]bool{}
	for _, plan := range p.DisabledPlans {
		if !IsGUID(plan) && !planNameRE.MatchString(plan) {
			ve.Add("disabled_plans", "must list servicePlanIds (GUIDs) or servicePlanNames such as EXCHANGE_S_ENTERPRISE")
		} else if seen[plan] {
			ve.Add("disabled_plans", "lists "+plan+" twice")
		}
		seen[plan] = true
	}
}

// RemoveLicenseParams are the parameters of microsoft-365.remove_license.
type RemoveLicenseParams struct {
	UserRef
	SKU string `json:"sku"`
}

func (p *RemoveLicenseParams) Validate(ve *ValidationError) {
	p.UserRef.Validate(ve)
	skuRef(ve, "sku", p.SKU)
}

// Group types accepted by create_group.
const (
	GroupTypeSecurity     = "security"
	GroupTypeMicrosoft365 = "microsoft_365"
)

// Group visibilities (Microsoft 365 groups only).
const (
	VisibilityPublic           = "Public"
	VisibilityPrivate          = "Private"
	VisibilityHiddenMembership = "HiddenMembership"
)

// CreateGroupParams are the parameters of microsoft-365.create_group.
type CreateGroupParams struct {
	DisplayName  string `json:"display_name"`
	MailNickname string `json:"mail_nickname"`
	Description  string `json:"description,omitempty"`
	// GroupType is "security" or "microsoft_365".
	GroupType string `json:"group_type"`
	// Visibility applies to Microsoft 365 groups only; Graph's default is
	// Public.
	Visibility string `json:"visibility,omitempty"`
	// Members are users (object id or UPN) to add once the group exists.
	Members []string `json:"members,omitempty"`
}

// MaxCreateMembers bounds the members given to create_group.
const MaxCreateMembers = 20

func (p *CreateGroupParams) Validate(ve *ValidationError) {
	if required(ve, "display_name", p.DisplayName) {
		maxLen(ve, "display_name", p.DisplayName, 256)
	}
	if required(ve, "mail_nickname", p.MailNickname) {
		groupNickname(ve, "mail_nickname", p.MailNickname)
	}
	maxLen(ve, "description", p.Description, 1024)
	if required(ve, "group_type", p.GroupType) {
		oneOf(ve, "group_type", p.GroupType, GroupTypeSecurity, GroupTypeMicrosoft365)
	}
	if p.Visibility != "" {
		if p.GroupType == GroupTypeSecurity {
			ve.Add("visibility", "applies only to group_type microsoft_365")
		} else {
			oneOf(ve, "visibility", p.Visibility, VisibilityPublic, VisibilityPrivate, VisibilityHiddenMembership)
		}
	}
	if len(p.Members) > MaxCreateMembers {
		ve.Add("members", "must list at most 20 users; add more with add_group_member")
	}
	for _, m := range p.Members {
		if !IsGUID(m) && !IsUPN(m) {
			ve.Add("members", "must list user object ids (GUIDs) or user principal names")
		}
	}
}

func (p *CreateGroupParams) Target() string { return "group:" + p.MailNickname }

// UpdateGroupParams are the parameters of microsoft-365.update_group. Only
// the fields given change.
type UpdateGroupParams struct {
	GroupRef
	DisplayName  *string `json:"display_name,omitempty"`
	MailNickname *string `json:"mail_nickname,omitempty"`
	Description  *string `json:"description,omitempty"`
	Visibility   *string `json:"visibility,omitempty"`
}

func (p *UpdateGroupParams) Validate(ve *ValidationError) {
	p.GroupRef.Validate(ve)
	changes := 0
	if p.DisplayName != nil {
		changes++
		if required(ve, "display_name", *p.DisplayName) {
			maxLen(ve, "display_name", *p.DisplayName, 256)
		}
	}
	if p.MailNickname != nil {
		changes++
		groupNickname(ve, "mail_nickname", *p.MailNickname)
	}
	if p.Description != nil {
		changes++
		maxLen(ve, "description", *p.Description, 1024)
	}
	if p.Visibility != nil {
		changes++
		// Graph's visibility description: "HiddenMembership can be set only
		// for Microsoft 365 groups when the groups are created. It can't be
		// updated later."
		if *p.Visibility == VisibilityHiddenMembership {
			ve.Add("visibility", "HiddenMembership can be set only when a Microsoft 365 group is created; it can't be updated later (Graph's rule)")
		} else {
			oneOf(ve, "visibility", *p.Visibility, VisibilityPublic, VisibilityPrivate)
		}
	}
	if changes == 0 && !ve.Has("group") {
		ve.Add("params", "must name at least one property to change besides group")
	}
}

// DeleteGroupParams are the parameters of microsoft-365.delete_group.
type DeleteGroupParams struct{ GroupRef }

// MemberParams name a group and a member.
type MemberParams struct {
	GroupRef
	// Member is a user (object id or UPN) or any directory object id.
	Member string `json:"member"`
}

func (p *MemberParams) Validate(ve *ValidationError) {
	p.GroupRef.Validate(ve)
	userRef(ve, "member", p.Member)
}

// AddGroupMemberParams are the parameters of microsoft-365.add_group_member.
type AddGroupMemberParams struct{ MemberParams }

// RemoveGroupMemberParams are the parameters of
// microsoft-365.remove_group_member.
type RemoveGroupMemberParams struct{ MemberParams }

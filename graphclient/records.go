package graphclient

import (
	"time"

	"github.com/google/uuid"
	"github.com/microsoftgraph/msgraph-sdk-go/models"
)

// User is a user as the operations return it (Graph's properties).
type User struct {
	ID                    string
	UserPrincipalName     string
	DisplayName           string
	GivenName             *string
	Surname               *string
	Mail                  *string
	MailNickname          *string
	JobTitle              *string
	Department            *string
	OfficeLocation        *string
	MobilePhone           *string
	BusinessPhones        []string
	AccountEnabled        *bool
	UserType              *string
	UsageLocation         *string
	CreatedDateTime       *time.Time
	OnPremisesSyncEnabled *bool
	AssignedLicenses      []AssignedLicense
}

// AssignedLicense is a licence on a user.
type AssignedLicense struct {
	SkuID         string
	DisabledPlans []string
}

// Group is a group (Graph's properties).
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
	CreatedDateTime *time.Time
}

// Dynamic reports whether the group's membership is rule-based.
func (g *Group) Dynamic() bool {
	for _, t := range g.GroupTypes {
		if t == "DynamicMembership" {
			return true
		}
	}
	return false
}

// SKU is a subscribed SKU.
type SKU struct {
	ID               string
	SkuID            string
	SkuPartNumber    string
	CapabilityStatus string
	AppliesTo        string
	Enabled          int
	Suspended        int
	Warning          int
	LockedOut        int
	ConsumedUnits    int
	ServicePlans     []ServicePlan
}

// Available is the number of free seats.
func (s SKU) Available() int { return s.Enabled - s.ConsumedUnits }

// ServicePlan is one plan of a SKU.
type ServicePlan struct {
	ID                 string
	Name               string
	ProvisioningStatus string
	AppliesTo          string
}

// UserSelect is every user property the module reads.
var UserSelect = []string{"id", "userPrincipalName", "displayName", "givenName", "surname", "mail", "mailNickname", "jobTitle", "department",
	"officeLocation", "mobilePhone", "businessPhones", "accountEnabled", "userType", "usageLocation", "createdDateTime",
	"onPremisesSyncEnabled", "assignedLicenses"}

// GroupSelect is every group property the module reads ("members" adds
// members@delta on delta).
var GroupSelect = []string{"id", "displayName", "description", "mail", "mailNickname", "mailEnabled", "securityEnabled", "groupTypes",
	"visibility", "membershipRule", "createdDateTime"}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func boolv(p *bool) bool { return p != nil && *p }

func userFrom(u models.Userable) User {
	out := User{ID: str(u.GetId()), UserPrincipalName: str(u.GetUserPrincipalName()), DisplayName: str(u.GetDisplayName()),
		GivenName: u.GetGivenName(), Surname: u.GetSurname(), Mail: u.GetMail(), MailNickname: u.GetMailNickname(), JobTitle: u.GetJobTitle(),
		Department: u.GetDepartment(), OfficeLocation: u.GetOfficeLocation(), MobilePhone: u.GetMobilePhone(),
		BusinessPhones: u.GetBusinessPhones(), AccountEnabled: u.GetAccountEnabled(), UserType: u.GetUserType(),
		UsageLocation: u.GetUsageLocation(), CreatedDateTime: u.GetCreatedDateTime(), OnPremisesSyncEnabled: u.GetOnPremisesSyncEnabled()}
	for _, l := range u.GetAssignedLicenses() {
		if l == nil {
			continue
		}
		al := AssignedLicense{DisabledPlans: []string{}}
		if id := l.GetSkuId(); id != nil {
			al.SkuID = id.String()
		}
		for _, p := range l.GetDisabledPlans() {
			al.DisabledPlans = append(al.DisabledPlans, p.String())
		}
		out.AssignedLicenses = append(out.AssignedLicenses, al)
	}
	return out
}

func groupFrom(g models.Groupable) Group {
	return Group{ID: str(g.GetId()), DisplayName: str(g.GetDisplayName()), Description: g.GetDescription(), Mail: g.GetMail(),
		MailNickname: str(g.GetMailNickname()), MailEnabled: boolv(g.GetMailEnabled()), SecurityEnabled: boolv(g.GetSecurityEnabled()),
		GroupTypes: g.GetGroupTypes(), Visibility: g.GetVisibility(), MembershipRule: g.GetMembershipRule(), CreatedDateTime: g.GetCreatedDateTime()}
}

func skuFrom(s models.SubscribedSkuable) SKU {
	out := SKU{ID: str(s.GetId()), SkuPartNumber: str(s.GetSkuPartNumber()), CapabilityStatus: str(s.GetCapabilityStatus()), AppliesTo: str(s.GetAppliesTo())}
	if id := s.GetSkuId(); id != nil {
		out.SkuID = id.String()
	}
	if c := s.GetConsumedUnits(); c != nil {
		out.ConsumedUnits = int(*c)
	}
	if p := s.GetPrepaidUnits(); p != nil {
		out.Enabled, out.Suspended, out.Warning, out.LockedOut = i32(p.GetEnabled()), i32(p.GetSuspended()), i32(p.GetWarning()), i32(p.GetLockedOut())
	}
	for _, sp := range s.GetServicePlans() {
		if sp == nil {
			continue
		}
		p := ServicePlan{Name: str(sp.GetServicePlanName()), ProvisioningStatus: str(sp.GetProvisioningStatus()), AppliesTo: str(sp.GetAppliesTo())}
		if id := sp.GetServicePlanId(); id != nil {
			p.ID = id.String()
		}
		out.ServicePlans = append(out.ServicePlans, p)
	}
	return out
}

func i32(p *int32) int {
	if p == nil {
		return 0
	}
	return int(*p)
}

func parseUUIDs(ss []string) ([]uuid.UUID, error) {
	out := make([]uuid.UUID, 0, len(ss))
	for _, s := range ss {
		u, err := uuid.Parse(s)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

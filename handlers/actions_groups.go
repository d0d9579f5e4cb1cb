package handlers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// GroupOutput is the output of the group actions.
type GroupOutput struct {
	GroupID      string   `json:"group_id"`
	MailNickname string   `json:"mail_nickname,omitempty"`
	MemberID     string   `json:"member_id,omitempty"`
	Changed      bool     `json:"changed"`
	WouldChange  []string `json:"would_change,omitempty"`
}

func (a *Actions) createGroup(ctx context.Context, j *worker.Job, p *jobs.CreateGroupParams) (any, error) {
	c, err := a.client(j)
	if err != nil {
		return nil, err
	}
	var members []string
	for _, m := range p.Members {
		u, err := a.user(ctx, j, c, m)
		if err != nil {
			return nil, err
		}
		members = append(members, u.ID)
	}
	existing, err := c.GetGroup(ctx, p.MailNickname)
	if err != nil && !errors.Is(err, graphclient.ErrNotFound) {
		return nil, classify(err, CodeGroupNotFound, "group "+p.MailNickname)
	}
	prior, perr := a.effect(ctx, j)
	if perr != nil {
		return nil, perr
	}
	if existing != nil {
		if prior != nil && existing.DisplayName == p.DisplayName {
			a.refreshGroup(ctx, j, c, existing.ID)
			return GroupOutput{GroupID: existing.ID, MailNickname: existing.MailNickname, Changed: true}, nil // an earlier delivery made it
		}
		return nil, worker.Permanent(CodeNicknameConflict, "a group with mail nickname "+p.MailNickname+" already exists")
	}
	if j.DryRun {
		return GroupOutput{MailNickname: p.MailNickname, WouldChange: []string{"create " + p.GroupType + " group " + p.MailNickname}}, nil
	}
	if prior == nil {
		if err := a.recordEffect(ctx, j, effect{}); err != nil {
			return nil, err
		}
	}
	g, err := c.CreateGroup(ctx, graphclient.NewGroup{DisplayName: p.DisplayName, MailNickname: p.MailNickname, Description: p.Description,
		Unified: p.GroupType == jobs.GroupTypeMicrosoft365, Visibility: p.Visibility, Members: members})
	if errors.Is(err, graphclient.ErrConflict) {
		// Made by this job's own request, whose answer was lost and which
		// the transport sent again (the nickname was free a moment ago).
		mine, gerr := c.GetGroup(ctx, p.MailNickname)
		if gerr == nil && mine.DisplayName == p.DisplayName {
			a.refreshGroup(ctx, j, c, mine.ID)
			return GroupOutput{GroupID: mine.ID, MailNickname: mine.MailNickname, Changed: true}, nil
		}
		if errors.Is(gerr, graphclient.ErrNotFound) {
			// Not readable yet (replication): the redelivery finds it.
			return nil, worker.RetryAfter(time.Second, fmt.Errorf("group %s exists but cannot be read yet: %w", p.MailNickname, gerr))
		}
		return nil, fail(CodeNicknameConflict, "a group with mail nickname "+p.MailNickname+" already exists", err)
	}
	if err != nil {
		return nil, classify(err, CodeGroupNotFound, "group "+p.MailNickname)
	}
	_ = a.recordEffect(ctx, j, effect{ObjectID: g.ID})
	a.refreshGroupRecord(ctx, j, g, members) // the created record: a read could still miss it
	return GroupOutput{GroupID: g.ID, MailNickname: g.MailNickname, Changed: true}, nil
}

func (a *Actions) updateGroup(ctx context.Context, j *worker.Job, p *jobs.UpdateGroupParams) (any, error) {
	c, err := a.client(j)
	if err != nil {
		return nil, err
	}
	g, err := a.group(ctx, j, c, p.Group)
	if err != nil {
		return nil, err
	}
	if p.Visibility != nil && !containsStr(g.GroupTypes, "Unified") {
		return nil, worker.Permanent(jobs.CodeInvalidParams, "visibility applies only to Microsoft 365 groups; "+p.Group+" is a security group")
	}
	if j.DryRun {
		return GroupOutput{GroupID: g.ID, MailNickname: g.MailNickname, WouldChange: []string{"update group properties"}}, nil
	}
	if err := c.UpdateGroup(ctx, g.ID, graphclient.GroupPatch{DisplayName: p.DisplayName, MailNickname: p.MailNickname, Description: p.Description, Visibility: p.Visibility}); err != nil {
		if errors.Is(err, graphclient.ErrConflict) {
			return nil, fail(CodeNicknameConflict, "another group already has that mail nickname", err)
		}
		return nil, classify(err, CodeGroupNotFound, "group "+p.Group)
	}
	a.refreshGroup(ctx, j, c, g.ID)
	return GroupOutput{GroupID: g.ID, MailNickname: g.MailNickname, Changed: true}, nil
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func (a *Actions) deleteGroup(ctx context.Context, j *worker.Job, p *jobs.DeleteGroupParams) (any, error) {
	c, err := a.client(j)
	if err != nil {
		return nil, err
	}
	g, err := c.GetGroup(ctx, p.Group)
	if errors.Is(err, graphclient.ErrNotFound) {
		// Already deleted (an earlier delivery may have died before its
		// refresh): the delete is published again.
		if id, rerr := c.RecycledID(ctx, p.Group, true); rerr == nil && id != "" {
			if j.DryRun {
				return GroupOutput{GroupID: id, Changed: false}, nil
			}
			a.refreshDeleted(ctx, j, jobs.AssetGroup, id)
			// An earlier delivery of this job deleted it: the same output.
			if prior, _ := a.effect(ctx, j); prior != nil && prior.ObjectID == id {
				return GroupOutput{GroupID: id, MailNickname: prior.Name, Changed: true}, nil
			}
			return GroupOutput{GroupID: id, Changed: false}, nil
		}
		return nil, classify(a.find(ctx, j, p.Group, func() error { return err }), CodeGroupNotFound, "group "+p.Group)
	}
	if err != nil {
		return nil, classify(err, CodeGroupNotFound, "group "+p.Group)
	}
	if j.DryRun {
		return GroupOutput{GroupID: g.ID, MailNickname: g.MailNickname, WouldChange: []string{"delete the group (restorable for 30 days)"}}, nil
	}
	if err := a.recordEffect(ctx, j, effect{ObjectID: g.ID, Name: g.MailNickname}); err != nil {
		return nil, err
	}
	if err := c.DeleteGroup(ctx, g.ID); err != nil && !errors.Is(err, graphclient.ErrNotFound) {
		return nil, classify(err, CodeGroupNotFound, "group "+p.Group)
	}
	a.refreshDeleted(ctx, j, jobs.AssetGroup, g.ID)
	return GroupOutput{GroupID: g.ID, MailNickname: g.MailNickname, Changed: true}, nil
}

func (a *Actions) memberOp(ctx context.Context, j *worker.Job, p jobs.MemberParams, add bool) (any, error) {
	c, err := a.client(j)
	if err != nil {
		return nil, err
	}
	g, err := a.group(ctx, j, c, p.Group)
	if err != nil {
		return nil, err
	}
	u, err := a.user(ctx, j, c, p.Member)
	if err != nil {
		return nil, err
	}
	out := GroupOutput{GroupID: g.ID, MailNickname: g.MailNickname, MemberID: u.ID}
	if g.Dynamic() {
		return nil, worker.Permanent(CodeDynamicGroup, "group "+p.Group+" has rule-based (dynamic) membership: change its rule in Entra, not its members")
	}
	if j.DryRun {
		in, err := c.IsMember(ctx, g.ID, u.ID)
		if err != nil {
			return nil, classify(err, CodeGroupNotFound, "group "+p.Group)
		}
		if in != add {
			out.WouldChange = []string{map[bool]string{true: "add ", false: "remove "}[add] + u.UserPrincipalName}
		}
		return out, nil
	}
	if add {
		err = a.find(ctx, j, u.ID, func() error { return c.AddMember(ctx, g.ID, u.ID) })
		if errors.Is(err, graphclient.ErrConflict) {
			return out, nil // already a member
		}
	} else {
		err = c.RemoveMember(ctx, g.ID, u.ID)
		if errors.Is(err, graphclient.ErrNotFound) || errors.Is(err, graphclient.ErrBadRequest) && !g.Dynamic() {
			return out, nil // not a member
		}
	}
	if err != nil {
		return nil, classify(err, CodeGroupNotFound, "group "+p.Group)
	}
	out.Changed = true
	a.refreshGroup(ctx, j, c, g.ID)
	return out, nil
}

func (a *Actions) addMember(ctx context.Context, j *worker.Job, p *jobs.AddGroupMemberParams) (any, error) {
	return a.memberOp(ctx, j, p.MemberParams, true)
}

func (a *Actions) removeMember(ctx context.Context, j *worker.Job, p *jobs.RemoveGroupMemberParams) (any, error) {
	return a.memberOp(ctx, j, p.MemberParams, false)
}

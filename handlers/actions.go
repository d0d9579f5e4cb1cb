package handlers

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/publisher"
	"github.com/tevyra/m365-worker/worker"
)

// Action error codes (docs/contract.md lists them with their meaning).
const (
	CodeUserNotFound           = "user_not_found"
	CodeGroupNotFound          = "group_not_found"
	CodeSKUNotFound            = "sku_not_found"
	CodePlanNotFound           = "service_plan_not_found"
	CodeUPNConflict            = "upn_conflict"
	CodeNicknameConflict       = "mail_nickname_conflict"
	CodePasswordPolicy         = "password_policy"
	CodeNoFreeSeat             = "no_free_seat"
	CodeUsageLocationMissing   = "usage_location_missing"
	CodeLicenseFromGroup       = "license_inherited_from_group"
	CodeInsufficientPrivileges = "insufficient_privileges"
	CodeDynamicGroup           = "dynamic_group"
	CodeAuthFailed             = "auth_failed"
	CodeGraphRejected          = "graph_rejected"
	CodeSecretUnreadable       = "secret_unreadable"
)

// ActionsConfig configures the action handlers. Zero values take defaults.
type ActionsConfig struct {
	Topology worker.Topology
	Graph    *graphclient.Pool
	// ConsistencyWait is how long after a job's publication a not-found
	// target is taken for Graph's replication delay and retried. Default
	// 15s.
	ConsistencyWait time.Duration
	Logger          *slog.Logger
}

// Actions runs the microsoft-365.* jobs.
type Actions struct {
	cfg ActionsConfig
	pub *publisher.Publisher
	sub jobs.Subjects
}

// NewActions returns the action handlers, publishing through js.
func NewActions(ctx context.Context, js jetstream.JetStream, cfg ActionsConfig) (*Actions, error) {
	if cfg.ConsistencyWait <= 0 {
		cfg.ConsistencyWait = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Graph == nil {
		return nil, errors.New("actions: no Graph client pool")
	}
	return &Actions{cfg: cfg, pub: publisher.New(js, publisher.Config{Subjects: cfg.Topology.Subjects}), sub: cfg.Topology.Subjects}, nil
}

// Register adds the 13 action handlers to reg, each ordered per target and
// with its Graph requests guarded by the target's lock.
func (a *Actions) Register(reg worker.Registry) {
	own := worker.Registry{}
	a.register(own)
	for name, h := range own {
		fn := h.Func
		h.Func = func(ctx context.Context, j *worker.Job) (any, error) {
			out, err := fn(graphclient.WithGuard(ctx, j.StillHolds), j)
			return out, rotated(ctx, j, err)
		}
		reg[name] = h
	}
}

func (a *Actions) register(reg worker.Registry) {
	worker.Register(reg, jobs.ActionCreateUser, a.createUser)
	worker.Register(reg, jobs.ActionUpdateUser, a.updateUser)
	worker.Register(reg, jobs.ActionDeleteUser, a.deleteUser)
	worker.Register(reg, jobs.ActionDisableUser, func(ctx context.Context, j *worker.Job, p *jobs.DisableUserParams) (any, error) {
		return a.setEnabled(ctx, j, p.User, false)
	})
	worker.Register(reg, jobs.ActionEnableUser, func(ctx context.Context, j *worker.Job, p *jobs.EnableUserParams) (any, error) {
		return a.setEnabled(ctx, j, p.User, true)
	})
	worker.Register(reg, jobs.ActionResetPassword, a.resetPassword)
	worker.Register(reg, jobs.ActionAssignLicense, a.assignLicense)
	worker.Register(reg, jobs.ActionRemoveLicense, a.removeLicense)
	worker.Register(reg, jobs.ActionCreateGroup, a.createGroup)
	worker.Register(reg, jobs.ActionUpdateGroup, a.updateGroup)
	worker.Register(reg, jobs.ActionDeleteGroup, a.deleteGroup)
	worker.Register(reg, jobs.ActionAddGroupMember, a.addMember)
	worker.Register(reg, jobs.ActionRemoveGroupMember, a.removeMember)
}

func (a *Actions) client(j *worker.Job) (*graphclient.Client, error) {
	return graphClient(a.cfg.Graph, j, 0)
}

// find runs a lookup. A not-found within ConsistencyWait of the job's
// publication (or of its first miss) may be Graph's replication delay (an object created moments
// ago, perhaps by the job published just before): the job is given back for
// a retry a moment later, without holding a worker slot or using an
// attempt. After that window, not-found is final.
func (a *Actions) find(ctx context.Context, j *worker.Job, ref string, f func() error) error {
	err := f()
	if !errors.Is(err, graphclient.ErrNotFound) {
		return err
	}
	// The window runs from the job's publication, or from when it first
	// missed the object if that is later (it waited for its turn).
	since := j.Published
	if first, ferr := j.State().FirstMiss(ctx, j.ID); ferr == nil && first.After(since) {
		since = first
	}
	if time.Since(since) < a.cfg.ConsistencyWait {
		wait := min(max(time.Since(since)/2, 500*time.Millisecond), 4*time.Second)
		return worker.RetryAfter(wait, fmt.Errorf("%s not found yet (Graph replicates new objects with a delay): %w", ref, err))
	}
	return err
}

func (a *Actions) user(ctx context.Context, j *worker.Job, c *graphclient.Client, ref string) (*graphclient.User, error) {
	var u *graphclient.User
	err := a.find(ctx, j, ref, func() (err error) { u, err = c.GetUser(ctx, ref); return err })
	return u, classify(err, CodeUserNotFound, "user "+ref)
}

func (a *Actions) group(ctx context.Context, j *worker.Job, c *graphclient.Client, ref string) (*graphclient.Group, error) {
	var g *graphclient.Group
	err := a.find(ctx, j, ref, func() (err error) { g, err = c.GetGroup(ctx, ref); return err })
	return g, classify(err, CodeGroupNotFound, "group "+ref)
}

// --- effect records: what a job already did, for redeliveries ------------

type effect struct {
	ObjectID string `json:"object_id,omitempty"`
	// Name is the object's UPN or mail nickname as the first delivery saw
	// it, so a redelivery reports the same output.
	Name     string             `json:"name,omitempty"`
	Password *jobs.SealedSecret `json:"password,omitempty"` // sealed to the requester
	// PoolPassword is the same password sealed to the pool, so that a
	// redelivery sets the very password the requester was given.
	PoolPassword *jobs.SealedSecret `json:"pool_password,omitempty"`
	At           time.Time          `json:"at"`
}

// effect reads what an earlier delivery of the job recorded (nil if none).
func (a *Actions) effect(ctx context.Context, j *worker.Job) (*effect, error) {
	var ef effect
	ok, err := j.State().Effect(ctx, j.ID, &ef)
	if err != nil || !ok {
		return nil, err
	}
	return &ef, nil
}

func (a *Actions) recordEffect(ctx context.Context, j *worker.Job, ef effect) error {
	ef.At = time.Now().UTC()
	return j.State().PutEffect(context.WithoutCancel(ctx), j.ID, ef)
}

// --- passwords ------------------------------------------------------------

const (
	pwLower  = "abcdefghijkmnopqrstuvwxyz"
	pwUpper  = "ABCDEFGHJKLMNPQRSTUVWXYZ"
	pwDigits = "23456789"
	pwSymbol = "!@#$%^&*-_=+?"
)

// generatePassword returns 20 random characters with each class present,
// which meets Entra's complexity rules.
func generatePassword() (string, error) {
	all := pwLower + pwUpper + pwDigits + pwSymbol
	pick := func(set string) (byte, error) {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(set))))
		if err != nil {
			return 0, err
		}
		return set[n.Int64()], nil
	}
	out := make([]byte, 0, 20)
	for _, set := range []string{pwLower, pwUpper, pwDigits, pwSymbol} {
		b, err := pick(set)
		if err != nil {
			return "", err
		}
		out = append(out, b)
	}
	for len(out) < 20 {
		b, err := pick(all)
		if err != nil {
			return "", err
		}
		out = append(out, b)
	}
	// Shuffle so the classes are not at fixed places.
	for i := len(out) - 1; i > 0; i-- {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(i+1)))
		k := n.Int64()
		out[i], out[k] = out[k], out[i]
	}
	return string(out), nil
}

// passwordBinding is what a password in this job is sealed for: the
// instance, the job and its user.
func passwordBinding(j *worker.Job) jobs.Binding {
	return jobs.PasswordBinding(j.Job.Instance, j.ID, strings.TrimPrefix(j.Params.Target(), "user:"))
}

// password returns the plaintext to set and, when generated, the sealed copy
// for the requester.
func password(j *worker.Job, o jobs.PasswordOptions) (string, *jobs.SealedSecret, error) {
	if o.Password != nil {
		b, err := j.OpenSecret(o.Password, passwordBinding(j))
		if err != nil {
			return "", nil, worker.Permanent(CodeSecretUnreadable, "cannot open the sealed password: "+err.Error())
		}
		return string(b), nil, nil
	}
	pw, err := generatePassword()
	if err != nil {
		return "", nil, err
	}
	sealed, err := jobs.Seal([]byte(pw), o.ReplyKey)
	if err != nil {
		return "", nil, worker.Permanent(jobs.CodeInvalidParams, err.Error())
	}
	return pw, sealed, nil
}

package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tevyra/m365-worker/worker"
)

// Audit actions.
const (
	AuditReplay = "replay"
	AuditSync   = "sync"
	AuditReveal = "reveal"
)

// AuditStream is the stream of operator actions in the console: one
// message per replay, sync now and reveal, with who and when.
func AuditStream(t worker.Topology) string { return strings.ToUpper(prefix(t)) + "_AUDIT" }

// AuditSubjects are the audit stream's subjects: <prefix>.audit.<action>.
func AuditSubjects(t worker.Topology) string { return prefix(t) + ".audit.>" }

func auditSubject(t worker.Topology, action string) string { return prefix(t) + ".audit." + action }

func prefix(t worker.Topology) string {
	if t.Subjects.Prefix == "" {
		return "m365"
	}
	return t.Subjects.Prefix
}

// EnsureAuditStream creates or updates the audit stream (the operator's
// step, called by `m365-worker setup` and `run`): a year of operator
// actions, never discarded for size.
func EnsureAuditStream(ctx context.Context, js jetstream.JetStream, t worker.Topology, replicas int) error {
	if replicas <= 0 {
		replicas = 1
	}
	cfg := jetstream.StreamConfig{Name: AuditStream(t), Description: "m365-worker console: every operator action (replay, sync now, reveal) with who and when",
		Subjects: []string{AuditSubjects(t)}, Storage: jetstream.FileStorage, Replicas: replicas, MaxAge: 365 * 24 * time.Hour}
	st, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, cfg)
		return err
	}
	if err != nil {
		return err
	}
	if info := st.CachedInfo(); info != nil && info.Config.Replicas > replicas {
		cfg.Replicas = info.Config.Replicas // never lowered
	}
	_, err = js.UpdateStream(ctx, cfg)
	return err
}

// record publishes an audit entry and waits for the stream's ack: an
// action whose record cannot be stored is not done.
func record(ctx context.Context, js jetstream.JetStream, t worker.Topology, ss *session, action, target, detail string) error {
	e := auditEntry{At: time.Now().UTC(), Who: ss.Name, Sub: ss.Subject, Role: ss.Role, Action: action, Target: target, Detail: detail}
	b, _ := json.Marshal(e)
	if _, err := js.Publish(ctx, auditSubject(t, action), b); err != nil {
		return fmt.Errorf("record the %s in the audit stream %s: %w (nothing was done)", action, AuditStream(t), err)
	}
	return nil
}

// auditMissing says what to do when the audit stream is not there.
func auditMissing(cfg Config, err error) error {
	return fmt.Errorf("console: the audit stream %s: %w (create it with `m365-worker setup`, the operator's step; run does it itself)", AuditStream(cfg.Topology), err)
}

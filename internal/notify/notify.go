// Package notify receives Microsoft Graph change notifications for users and
// groups over HTTPS and turns them into sync triggers on JetStream: the
// receiver behind `m365-worker notify` (docs/notify.md).
//
// A subscription of instance I in pool P notifies <base>/P/I and, for its
// lifecycle events, <base>/P/I/lifecycle. Its clientState is derived from a
// master key (ClientState(PoolKey(master, P), I)), so the receiver needs no
// database: a notification whose clientState matches is Graph speaking for
// that instance. An instance's notifications make at most one trigger per
// spacing (Config.Spacing), a sync job published on
// <prefix>.jobs.P.I.notified with Nats-Rollup: sub, so that at most one
// waits in the jobs stream. The first is stored before the notification is
// answered (503 when it cannot be); what any request costs before its
// clientState is checked is bounded (body.go, Config's caps).
package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"

	"github.com/tevyra/m365-worker/jobs"
)

// MinMasterKey is the shortest master key the receiver accepts, in bytes.
const MinMasterKey = 32

// LifecycleSuffix ends a subscription's lifecycleNotificationUrl.
const LifecycleSuffix = "/lifecycle"

// RequestedBy is the requested_by of every trigger.
const RequestedBy = "graph-notification"

// PoolKey derives a pool's key from the receiver's master key:
// HMAC-SHA256(master, "m365-notify-pool:"+pool). A pool's workers are given
// their pool key, never the master.
func PoolKey(master []byte, pool string) []byte {
	m := hmac.New(sha256.New, master)
	m.Write([]byte("m365-notify-pool:" + pool))
	return m.Sum(nil)
}

// ClientState is the clientState of every subscription of an instance:
// base64url without padding of HMAC-SHA256(poolKey,
// "m365-notify-instance:"+instance), 43 characters (Graph allows 128).
func ClientState(poolKey []byte, instance string) string {
	m := hmac.New(sha256.New, poolKey)
	m.Write([]byte("m365-notify-instance:" + instance))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// KeyID names the pool key an instance's subscriptions were made with,
// without revealing it: base64url of the first 9 bytes of
// HMAC-SHA256(poolKey, "m365-notify-key-id"). The workers keep it with the
// subscriptions and make them again under the current key's clientState
// after a master-key rotation.
func KeyID(poolKey []byte) string {
	m := hmac.New(sha256.New, poolKey)
	m.Write([]byte("m365-notify-key-id"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:9])
}

// NotificationURL is the notificationUrl of an instance's subscriptions,
// base being where the receiver is reached (https://hooks.example.com).
func NotificationURL(base, pool, instance string) string {
	return strings.TrimRight(base, "/") + "/" + pool + "/" + instance
}

// LifecycleURL is the lifecycleNotificationUrl of an instance's
// subscriptions.
func LifecycleURL(base, pool, instance string) string {
	return NotificationURL(base, pool, instance) + LifecycleSuffix
}

// TriggerSubject is the subject of an instance's triggers:
// <prefix>.jobs.<pool>.<instance>.notified.
func TriggerSubject(s jobs.Subjects, pool, instance string) string {
	return s.NotifiedJob(pool, instance)
}

// TriggerJob is the envelope of an instance's triggers: a sync job with
// the id notified-<instance>, requested by RequestedBy. It carries no
// Nats-Msg-Id, like every job (docs/contract.md).
func TriggerJob(instance string) *jobs.Job {
	return &jobs.Job{SchemaVersion: jobs.SchemaVersion, ID: "notified-" + instance, Instance: instance,
		Action: jobs.ActionSync, RequestedBy: RequestedBy}
}

// parsePath splits a receiver path: /<pool>/<instance> or
// /<pool>/<instance>/lifecycle, pool and instance being jobs.ValidToken.
func parsePath(p string) (pool, instance string, lifecycle, ok bool) {
	rest, ok := strings.CutPrefix(p, "/")
	if !ok {
		return "", "", false, false
	}
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 2:
	case len(parts) == 3 && "/"+parts[2] == LifecycleSuffix:
		lifecycle = true
	default:
		return "", "", false, false
	}
	if !jobs.ValidToken(parts[0]) || !jobs.ValidToken(parts[1]) {
		return "", "", false, false
	}
	return parts[0], parts[1], lifecycle, true
}

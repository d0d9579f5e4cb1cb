// Package redact masks what must not be shown: secrets a requester sent in
// clear (never shown, by the CLI or the console) and personal data (shown
// in the console only when an operator reveals it).
package redact

import (
	"regexp"
	"sort"
	"strings"
)

// Redacted replaces a secret-like value that arrived in clear.
const Redacted = "[redacted: sent in clear; secrets must be sealed (jobs.SealFor)]"

// Secrets masks, in a decoded job, every value under a password-, secret-,
// token- or private-key-like name that is not a sealed object, so that
// printing a job never shows a secret a requester sent by mistake. It
// returns the paths it masked.
func Secrets(v any) (any, []string) {
	var paths []string
	out := walk(v, "job", &paths, func(k string, val any) (any, bool) {
		if SecretLike(k) && !sealedObject(val) && val != nil {
			return Redacted, true
		}
		return nil, false
	})
	sort.Strings(paths)
	return out, paths
}

// Personal masks personal data in a decoded job (secrets first, as
// Secrets): every string value under params except the few that name no
// person (a SKU, a group type), and e-mail-like text anywhere. It returns
// the paths it masked.
func Personal(v any) (any, []string) {
	v, paths := Secrets(v)
	out := walk(v, "job", &paths, func(k string, val any) (any, bool) {
		switch s := val.(type) {
		case string:
			if k == "id" || k == "action" || k == "instance" || notPersonal[k] {
				return Text(s), Text(s) != s
			}
			if s != "" && s != Redacted {
				return Mask(s), true
			}
		}
		return nil, false
	})
	sort.Strings(paths)
	return out, paths
}

// notPersonal are params that name no person.
var notPersonal = map[string]bool{"sku": true, "skus": true, "group_type": true, "usage_location": true, "mode": true,
	"schema_version": true, "requested_by": true, "reply_key": true, "requested_at": true, "not_before": true}

var email = regexp.MustCompile(`[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}`)

// Text masks e-mail addresses in free text (a failure's message): the
// first letter and the domain stay, "a•••@contoso.com".
func Text(s string) string {
	return email.ReplaceAllStringFunc(s, func(m string) string {
		local, domain, _ := strings.Cut(m, "@")
		return local[:1] + "•••@" + domain
	})
}

// Mask hides a personal value, keeping an e-mail's domain.
func Mask(s string) string {
	if email.MatchString(s) {
		return Text(s)
	}
	return "•••"
}

func walk(v any, path string, paths *[]string, f func(k string, val any) (any, bool)) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, val := range x {
			p := path + "." + k
			if r, ok := f(k, val); ok {
				out[k] = r
				*paths = append(*paths, p)
				continue
			}
			out[k] = walk(val, p, paths, f)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, val := range x {
			if s, ok := val.(string); ok && s != "" {
				if r, ok := f("", s); ok {
					out[i] = r
					*paths = append(*paths, path+"[]")
					continue
				}
			}
			out[i] = walk(val, path+"[]", paths, f)
		}
		return out
	}
	return v
}

// SecretLike reports whether a field name names a secret. reply_key is a
// public key, not a secret.
func SecretLike(name string) bool {
	n := strings.ToLower(name)
	if n == "reply_key" {
		return false
	}
	for _, s := range []string{"password", "secret", "token", "credential", "private_key", "privatekey", "certificate_key"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// sealedObject reports whether v has the shape of a sealed secret.
func sealedObject(v any) bool {
	m, ok := v.(map[string]any)
	if !ok {
		return false
	}
	_, box := m["box"]
	_, rcpt := m["recipient"]
	return box && rcpt
}

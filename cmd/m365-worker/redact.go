package main

import (
	"sort"
	"strings"
)

// redactedClear replaces a secret-like value that arrived in clear.
const redactedClear = "[redacted: sent in clear; secrets must be sealed (jobs.SealFor)]"

// redactClear masks, in a decoded job, every value under a password-,
// secret-, token- or private-key-like name that is not a sealed object, so
// that printing a job never shows a secret a requester sent by mistake. It
// returns the paths it masked.
func redactClear(v any) (any, []string) {
	var paths []string
	out := redactValue(v, "job", &paths)
	sort.Strings(paths)
	return out, paths
}

func redactValue(v any, path string, paths *[]string) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, val := range x {
			p := path + "." + k
			if secretLike(k) && !sealedObject(val) && val != nil {
				out[k] = redactedClear
				*paths = append(*paths, p)
				continue
			}
			out[k] = redactValue(val, p, paths)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, val := range x {
			out[i] = redactValue(val, path+"[]", paths)
		}
		return out
	}
	return v
}

// secretLike reports whether a field name names a secret. reply_key is a
// public key, not a secret.
func secretLike(name string) bool {
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

package main

import "github.com/tevyra/m365-worker/internal/redact"

// redactClear masks, in a decoded job, every secret-like value that is not
// sealed (internal/redact.Secrets), returning the paths it masked.
func redactClear(v any) (any, []string) { return redact.Secrets(v) }

// Package jobs is the wire contract between Tevyra and the m365-worker pool:
// subjects, the job envelope, the typed parameters of the sync job and of the
// 13 microsoft-365.* actions with their validation, and the messages the pool
// publishes (action results, failure records, asset deltas, indicator
// snapshots and sync reports).
//
// The package does no I/O. Every message carries schema_version; the JSON
// Schemas in schema/ describe the same messages for consumers that are not
// written in Go, and a test keeps them in step with these types.
package jobs

// SchemaVersion is the version of every message this package defines.
const SchemaVersion = 1

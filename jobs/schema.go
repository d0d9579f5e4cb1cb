package jobs

import "embed"

// Schemas holds the JSON Schemas (draft 2020-12) of every message type, one
// file per type under schema/: job, action_result, failure_record,
// asset_delta, indicators, sync_report. The files are generated from these
// types by `go test ./jobs -run TestSchemasUpToDate -update` and checked in.
//
//go:embed schema/*.schema.json
var Schemas embed.FS

// SchemaBaseURI prefixes every schema's $id.
const SchemaBaseURI = "https://schemas.tevyra.io/m365-worker/v1/"

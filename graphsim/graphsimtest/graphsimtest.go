// Package graphsimtest starts the Graph simulator for a test with its
// conformance checks on: a request or answer outside Microsoft's
// description of Graph v1.0 fails the test that caused it.
package graphsimtest

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/tevyra/m365-worker/graphsim"
)

// ReportEnv names a file each simulator's conformance report is appended to
// (one JSON line), for the suite's figures:
//
//	GRAPHSIM_CONFORMANCE_REPORT=/tmp/conformance.jsonl go test ./...
const ReportEnv = "GRAPHSIM_CONFORMANCE_REPORT"

// Start starts a simulator with the conformance checks on; at the test's
// end it closes it and fails the test for each violation seen.
func Start(t testing.TB, o graphsim.Options) *graphsim.Server {
	t.Helper()
	o.Conformance = true
	sim, err := graphsim.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sim.Close()
		Check(t, sim)
	})
	return sim
}

// Check fails t for each violation the simulator recorded, and appends its
// report to $GRAPHSIM_CONFORMANCE_REPORT when set.
func Check(t testing.TB, sim *graphsim.Server) {
	t.Helper()
	r := sim.Conformance()
	Record(t.Name(), r)
	if len(r.Violations) == 0 {
		return
	}
	var b strings.Builder
	for i, v := range r.Violations {
		if i == 20 {
			b.WriteString("\n  …")
			break
		}
		b.WriteString("\n  " + v.String())
	}
	t.Errorf("Graph conformance: %d requests or answers outside Graph v1.0's description:%s", len(r.Violations), b.String())
}

// Record appends a report to $GRAPHSIM_CONFORMANCE_REPORT when it is set.
func Record(test string, r graphsim.ConformanceReport) {
	path := os.Getenv(ReportEnv)
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	line, _ := json.Marshal(struct {
		Test string `json:"test"`
		graphsim.ConformanceReport
	}{test, r})
	_, _ = f.Write(append(line, '\n'))
}

package main

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
)

// startProfile writes a CPU profile of this process when M365_CPU_PROFILE
// names a path prefix (the file is <prefix>.<command>.<pid>.pprof), for
// finding what a benchmark's processes spend their time on: the bench
// passes its environment to the workers it starts. The returned func stops
// it; a process killed by a signal it does not handle leaves no profile.
func startProfile(command string, stderr io.Writer) func() {
	prefix := os.Getenv("M365_CPU_PROFILE")
	if prefix == "" {
		return func() {}
	}
	path := fmt.Sprintf("%s.%s.%d.pprof", prefix, command, os.Getpid())
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(stderr, "m365-worker: cpu profile:", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(stderr, "m365-worker: cpu profile:", err)
		_ = f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}
}

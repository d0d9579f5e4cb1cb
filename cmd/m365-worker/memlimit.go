package main

import (
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// cgroupMemoryMax is where a container's memory limit is read (cgroup v2).
var cgroupMemoryMax = "/sys/fs/cgroup/memory.max"

// memoryLimitFromContainer sets the Go runtime's soft memory limit to 90 %
// of the container's when GOMEMLIMIT is not set (Kubernetes sets it from
// the pod's limit; compose's mem_limit only reaches the cgroup), so the
// runtime collects harder before the kernel kills the process. It returns
// the limit set, 0 if none.
func memoryLimitFromContainer(log *slog.Logger) int64 {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0
	}
	b, err := os.ReadFile(cgroupMemoryMax)
	if err != nil {
		return 0
	}
	max, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || max <= 0 { // "max": no limit
		return 0
	}
	limit := max / 10 * 9
	debug.SetMemoryLimit(limit)
	log.Info("memory limit from the container", "container_bytes", max, "gomemlimit_bytes", limit)
	return limit
}

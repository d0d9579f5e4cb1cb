package chaos

import "syscall"

// childAttr kills a child process when the harness dies (a test binary
// killed by go test's timeout must not leave servers and workers behind).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

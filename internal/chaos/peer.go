package chaos

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// pidOfPeer finds which of pids owns the TCP connection whose local
// address is peer (as a server sees it: the client's address), through
// /proc (Linux). 0 when it cannot tell.
func pidOfPeer(peer string, pids []int) int {
	_, portStr, err := net.SplitHostPort(peer)
	if err != nil {
		return 0
	}
	port, _ := strconv.Atoi(portStr)
	inode := ""
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 {
				continue
			}
			local := fields[1]
			i := strings.LastIndex(local, ":")
			if i < 0 {
				continue
			}
			p, err := strconv.ParseInt(local[i+1:], 16, 32)
			if err == nil && int(p) == port {
				inode = fields[9]
			}
		}
		fh.Close()
		if inode != "" {
			break
		}
	}
	if inode == "" || inode == "0" {
		return 0
	}
	want := fmt.Sprintf("socket:[%s]", inode)
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && l == want {
				return pid
			}
		}
	}
	return 0
}

package cpu

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// errNoCgroup2 tells the operator how to fix the most common lab setup problem.
var errNoCgroup2 = errors.New("no cgroup v2 mount found in /proc/self/mountinfo: mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`")

// CgroupRoot returns the mount point of the cgroup v2 hierarchy. In hybrid mode it is
// /sys/fs/cgroup/unified, in unified mode /sys/fs/cgroup; those are preferred in that order
// over any other cgroup2 mount (bind mounts of it elsewhere, for example).
func CgroupRoot() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("finding the cgroup v2 mount: %w (is /proc mounted?)", err)
	}
	defer f.Close()
	return parseCgroupRoot(f)
}

func parseCgroupRoot(r io.Reader) (string, error) {
	var found []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) || fields[sep+1] != "cgroup2" {
			continue
		}
		found = append(found, unescapeMountinfo(fields[4]))
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading /proc/self/mountinfo: %w", err)
	}
	for _, pref := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		for _, m := range found {
			if m == pref {
				return m, nil
			}
		}
	}
	if len(found) > 0 {
		return found[0], nil
	}
	return "", errNoCgroup2
}

// unescapeMountinfo undoes the kernel's octal escaping of space, tab, newline and backslash.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

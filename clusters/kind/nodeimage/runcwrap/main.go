// Command runcwrap is a runc wrapper for machines whose capability bounding set lacks some
// capabilities (here CAP_SYS_RESOURCE): runc fails "unable to apply caps" when an OCI spec asks
// for a capability the caller's bounding set does not hold. On `create`/`run` it removes such
// capabilities from the bundle's config.json, and on `exec` from the --process JSON, then execs
// the real runc (RUNCWRAP_REAL, default /usr/sbin/runc) with the same arguments.
package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

var capNames = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
	"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
	"CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
	"CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
	"CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
	"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"}

// bounding returns the capability names in this process's bounding set.
func bounding() map[string]bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil
			}
			m := map[string]bool{}
			for i, c := range capNames {
				if n&(1<<uint(i)) != 0 {
					m[c] = true
				}
			}
			return m
		}
	}
	return nil
}

func filterCaps(caps map[string]any, ok map[string]bool) {
	for k, v := range caps {
		l, isList := v.([]any)
		if !isList {
			continue
		}
		out := []any{}
		for _, c := range l {
			if s, _ := c.(string); s != "" && (!strings.HasPrefix(s, "CAP_") || ok[s] || !known(s)) {
				out = append(out, c)
			}
		}
		caps[k] = out
	}
}

func known(s string) bool {
	for _, c := range capNames {
		if c == s {
			return true
		}
	}
	return false
}

// rewrite filters the capabilities in the JSON file at path; process says whether the file is a
// process object (exec) or a full spec (create).
func rewrite(path string, process bool, ok map[string]bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var doc map[string]any
	if json.Unmarshal(b, &doc) != nil {
		return
	}
	p := doc
	if !process {
		p, _ = doc["process"].(map[string]any)
	}
	if p == nil {
		return
	}
	caps, _ := p["capabilities"].(map[string]any)
	if caps == nil {
		return
	}
	filterCaps(caps, ok)
	out, err := json.Marshal(doc)
	if err != nil {
		return
	}
	fi, _ := os.Stat(path)
	mode := os.FileMode(0o644)
	if fi != nil {
		mode = fi.Mode().Perm()
	}
	_ = os.WriteFile(path, out, mode)
}

func main() {
	real := os.Getenv("RUNCWRAP_REAL")
	if real == "" {
		real = "/usr/sbin/runc"
	}
	args := os.Args[1:]
	// Find the subcommand: the first argument not a global flag or a global flag's value.
	withValue := map[string]bool{"--root": true, "--log": true, "--log-format": true, "--criu": true, "--rootless": true}
	sub, subAt := "", -1
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "-") {
			if withValue[a] {
				i++
			}
			continue
		}
		sub, subAt = a, i
		break
	}
	if ok := bounding(); ok != nil && subAt >= 0 {
		rest := args[subAt+1:]
		flag := func(names ...string) string {
			for i, a := range rest {
				for _, n := range names {
					if a == n && i+1 < len(rest) {
						return rest[i+1]
					}
					if v, found := strings.CutPrefix(a, n+"="); found {
						return v
					}
				}
			}
			return ""
		}
		switch sub {
		case "create", "run":
			bundle := flag("--bundle", "-b")
			if bundle == "" {
				bundle, _ = os.Getwd()
			}
			rewrite(filepath.Join(bundle, "config.json"), false, ok)
		case "exec":
			if p := flag("--process", "-p"); p != "" {
				rewrite(p, true, ok)
			}
		}
	}
	err := syscall.Exec(real, append([]string{real}, args...), os.Environ())
	os.Stderr.WriteString("runcwrap: exec " + real + ": " + err.Error() + "\n")
	os.Exit(127)
}

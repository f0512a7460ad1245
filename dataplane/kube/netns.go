package kube

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// ErrNoProcess is returned by a NetnsFinder while no process of the pod runs: the pod was seen
// before its sandbox started, or after it stopped.
var ErrNoProcess = errors.New("no process of the pod runs on this node")

// NetnsFinder finds a pod's network namespace on the node. The API server does not know it
// (the container runtime made it), so the node has to be asked.
type NetnsFinder interface {
	// Netns returns a path to the network namespace of the pod whose cgroups are named after
	// uid (see CgroupUID), or ErrNoProcess.
	Netns(uid string) (string, error)
}

// ProcFinder finds a pod's network namespace through its processes: the kubelet puts every
// container of a pod, the sandbox's pause process first, in cgroups named after the pod's UID,
// and all of them share the sandbox's network namespace (a hostNetwork pod's is the node's, so
// those are never asked for). It returns <Root>/<pid>/ns/net of the lowest such pid: the pause
// process, which lives as long as the sandbox, so the path stays the same while it is enrolled
// and across agent restarts.
type ProcFinder struct {
	Root string // /proc, or the host's /proc mounted in the agent's container (--proc)

	mu   sync.Mutex
	pids map[string]int // pod UID -> lowest pid, from the last scan
}

// Netns implements NetnsFinder. A pid found earlier is re-checked (one file read); a scan of
// every process is made only for a pod not found yet, whose retries are rate limited.
func (f *ProcFinder) Netns(uid string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pid, ok := f.pids[uid]; ok && f.podOf(pid) == uid {
		return f.netnsPath(pid), nil
	}
	if err := f.scan(); err != nil {
		return "", err
	}
	pid, ok := f.pids[uid]
	if !ok {
		return "", ErrNoProcess
	}
	return f.netnsPath(pid), nil
}

func (f *ProcFinder) netnsPath(pid int) string {
	return filepath.Join(f.Root, strconv.Itoa(pid), "ns", "net")
}

// podOf is the UID of the pod process pid belongs to, "" if none (or it is gone).
func (f *ProcFinder) podOf(pid int) string {
	b, err := os.ReadFile(filepath.Join(f.Root, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return ""
	}
	return PodUIDFromCgroup(string(b))
}

// scan maps every pod with a process on the node to its lowest pid.
func (f *ProcFinder) scan() error {
	ents, err := os.ReadDir(f.Root)
	if err != nil {
		return fmt.Errorf("finding pods' processes in %s (--proc: the host's /proc, mounted with hostPID or as a volume): %w", f.Root, err)
	}
	pids := map[string]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		uid := f.podOf(pid)
		if uid == "" {
			continue
		}
		if low, ok := pids[uid]; ok && low < pid {
			continue
		}
		if _, err := os.Stat(f.netnsPath(pid)); err != nil {
			continue // a zombie, or gone meanwhile: no namespace to name
		}
		pids[uid] = pid
	}
	f.pids = pids
	return nil
}

// PodUIDFromCgroup returns the UID of the pod a process belongs to, from its /proc/<pid>/cgroup
// (one "id:controllers:path" line per hierarchy), or "" for a process of no pod. The kubelet
// names a pod's cgroup, with the cgroupfs driver, pod<uid> (.../kubepods/burstable/pod<uid>/
// <container>), and with the systemd driver kubepods-<qos>-pod<uid, '-' as '_'>.slice.
func PodUIDFromCgroup(cgroup string) string {
	for line := range strings.Lines(cgroup) {
		_, path, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		if _, path, ok = strings.Cut(path, ":"); !ok {
			continue
		}
		for seg := range strings.SplitSeq(path, "/") {
			if u, ok := strings.CutPrefix(seg, "pod"); ok && isUID(u) {
				return u
			}
			if s, ok := strings.CutSuffix(seg, ".slice"); ok {
				if i := strings.LastIndex(s, "-pod"); i >= 0 {
					if u := strings.ReplaceAll(s[i+len("-pod"):], "_", "-"); isUID(u) {
						return u
					}
				}
			}
		}
	}
	return ""
}

// isUID accepts what the kubelet names pod cgroups after: the API server's UIDs
// (8-4-4-4-12 lowercase hex) and static pods' config hashes (32 hex digits).
func isUID(s string) bool {
	if len(s) != 36 && len(s) != 32 {
		return false
	}
	for i, c := range s {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		case c == '-' && len(s) == 36 && (i == 8 || i == 13 || i == 18 || i == 23):
		default:
			return false
		}
	}
	return true
}

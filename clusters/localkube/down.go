package localkube

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/onehop-mesh/onehop/deploy/image"
)

// Down removes the cluster of that name and everything it made: its processes (the
// components, containerd's shims, every container), the mounts under its directory, its
// cgroups, its network namespace and host interface, and its files. Nothing of another cluster
// or of the host is touched. It succeeds when there is nothing to remove.
func Down(ctx context.Context, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("localkube: cluster name %q: use 1-10 lowercase letters or digits", name)
	}
	dir, p := filepath.Join(baseDir, name), prefix(name)
	var errs []error
	// Components first, the node agent before the runtime and the API (so nothing restarts
	// what is being killed), then whatever is left in the cluster's cgroups (containers) and
	// containerd's shims, which run outside them.
	for _, comp := range []string{"kube-proxy", "kube-scheduler", "kube-controller-manager", "kubelet", "containerd", "kube-apiserver", "etcd"} {
		b, err := os.ReadFile(filepath.Join(dir, "pids", comp))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 && isOurs(pid, comp) {
			stopPid(pid)
		}
	}
	for _, pid := range image.ShimsOf(containerdSocket(dir)) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	cgDirs := cgroupDirs(p)
	for _, d := range cgDirs {
		killCgroup(d)
	}
	errs = append(errs, image.UnmountUnder(dir))
	deadline := time.Now().Add(10 * time.Second)
	for i := len(cgDirs) - 1; i >= 0; i-- {
		for {
			err := os.Remove(cgDirs[i])
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("localkube: cgroup %s: %w", cgDirs[i], err))
				break
			}
			killCgroup(cgDirs[i])
			time.Sleep(50 * time.Millisecond) // killed processes leave as they are reaped
		}
	}
	if _, err := os.Stat("/run/netns/" + p); err == nil {
		if out, err := exec.CommandContext(ctx, "ip", "netns", "del", p).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("localkube: ip netns del %s: %w: %s", p, err, out))
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("localkube: remove %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// isOurs reports whether pid still runs the component (a pid file may be stale and its pid
// reused): the command line names the component's program.
func isOurs(pid int, comp string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), comp)
}

// stopPid sends SIGTERM, and SIGKILL after 10 s.
func stopPid(pid int) {
	syscall.Kill(pid, syscall.SIGTERM)
	for range 100 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, syscall.WNOHANG, nil) // our child when Up ran in this process
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

// cgroupDirs lists the cluster's cgroups in every hierarchy, parents before children.
func cgroupDirs(p string) []string {
	var out []string
	roots := []string{cgroupV2}
	for _, ctl := range v1Controllers {
		roots = append(roots, filepath.Join(cgroupFS, ctl))
	}
	for _, r := range roots {
		filepath.WalkDir(filepath.Join(r, p), func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				out = append(out, path)
			}
			return nil
		})
	}
	return out
}

func killCgroup(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

//go:build linux

package cpu

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUserHZ checks the constant against the AT_CLKTCK value the kernel hands every process.
func TestUserHZ(t *testing.T) {
	const atClkTck = 17 // include/uapi/linux/auxvec.h
	auxv, err := unix.Auxv()
	if err != nil {
		t.Skipf("auxiliary vector not available: %v", err)
	}
	for _, kv := range auxv {
		if kv[0] == atClkTck {
			if kv[1] != userHZ {
				t.Fatalf("kernel reports USER_HZ %d, package assumes %d", kv[1], userHZ)
			}
			return
		}
	}
	t.Skip("no AT_CLKTCK in the auxiliary vector")
}

func TestReadReal(t *testing.T) {
	h, err := ReadHost()
	if err != nil {
		t.Fatal(err)
	}
	if h.User+h.System == 0 || h.Idle == 0 {
		t.Errorf("implausible host counters %+v", h)
	}
	root := cgroupRootOrSkip(t)
	if root != "/sys/fs/cgroup/unified" && root != "/sys/fs/cgroup" {
		t.Logf("cgroup v2 root at unusual place %s", root)
	}
	c, err := ReadCgroup(root)
	if err != nil {
		t.Fatal(err)
	}
	if c.UsageUSec == 0 {
		t.Errorf("root cgroup usage_usec is 0: %+v", c)
	}
}

func TestSamplerBusyLoop(t *testing.T) {
	dir := newTestCgroup(t)
	pid := startBusy(t, dir)

	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(" "+strings.Join(strings.Fields(string(procs)), " ")+" ", " "+strconv.Itoa(pid)+" ") {
		t.Fatalf("busy child %d not in %s/cgroup.procs (%q): CgroupFD placement failed", pid, dir, procs)
	}

	s := NewSampler([]Target{{Name: "busy", Component: "test", Path: dir}})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	u, err := s.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Cgroups) != 1 {
		t.Fatalf("got %d cgroup usages, want 1", len(u.Cgroups))
	}
	cg := u.Cgroups[0]
	cores := runtime.NumCPU()
	t.Logf("window %.3fs, cores %d; cgroup usage %.1f ms (user %.1f, system %.1f); host busy %.0f ms (user %.0f, system %.0f, softirq %.0f, steal %.0f), idle %.0f ms",
		u.WindowSeconds, cores, cg.UsageMS, cg.UserMS, cg.SystemMS,
		u.Host.BusyMS, u.Host.UserMS, u.Host.SystemMS, u.Host.SoftirqMS, u.Host.StealMS, u.Host.IdleMS)

	if u.WindowSeconds < 0.3 || u.WindowSeconds > 2 {
		t.Errorf("window %.3fs, slept 0.3s", u.WindowSeconds)
	}
	const slackMS = 20
	if max := u.WindowSeconds*float64(cores)*1000 + slackMS; cg.UsageMS <= 100 || cg.UsageMS > max {
		t.Errorf("cgroup usage %.1f ms, want in (100, %.1f]", cg.UsageMS, max)
	}
	// /proc/stat is tick-sampled (10 ms granularity per CPU), cpu.stat exact: allow some slack.
	if min := cg.UsageMS*0.8 - 2*msPerTick*float64(cores); u.Host.BusyMS < min {
		t.Errorf("host busy %.0f ms < %.0f ms, yet the cgroup alone used %.1f ms", u.Host.BusyMS, min, cg.UsageMS)
	}
	if total := u.Host.BusyMS + u.Host.IdleMS + u.Host.IOWaitMS; total > u.WindowSeconds*float64(cores)*1000*1.2+100 {
		t.Errorf("host total %.0f ms exceeds %d cores × %.3fs", total, cores, u.WindowSeconds)
	}
	if got := u.ByComponent()["test"]; got != cg.UsageMS {
		t.Errorf("ByComponent[test] = %v, want %v", got, cg.UsageMS)
	}
}

func TestSamplerCgroupRemovedMidWindow(t *testing.T) {
	dir := newTestCgroup(t)
	tgt := Target{Name: "fortio-client", Component: "pod", Path: dir}
	s := NewSampler([]Target{tgt})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // long enough for host ticks to show in the partial result
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	u, err := s.Stop()
	if err == nil {
		t.Fatalf("Stop succeeded after the cgroup was removed: %+v", u)
	}
	t.Logf("error: %v", err)
	if want := fmt.Sprintf("cpu.stat of pod fortio-client (%s): no such file or directory", dir); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
	var te *TargetError
	if !errors.Is(err, fs.ErrNotExist) || !errors.As(err, &te) || te.Target.Name != tgt.Name {
		t.Errorf("error %v: want a *TargetError for %s wrapping fs.ErrNotExist", err, tgt.Name)
	}
	if len(u.Cgroups) != 0 || u.WindowSeconds <= 0 || u.Host.BusyMS+u.Host.IdleMS <= 0 {
		t.Errorf("partial usage: want host figures and no cgroups, got %+v", u)
	}
}

func TestSamplerCgroupRecreatedMidWindow(t *testing.T) {
	dir := newTestCgroup(t)
	s := NewSampler([]Target{{Name: "server", Component: "pod", Path: dir}})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := s.Stop()
	if !errors.Is(err, errRecreated) {
		t.Fatalf("Stop error = %v, want one saying the cgroup was recreated", err)
	}
	t.Logf("error: %v", err)
}

func TestSamplerStartMissingTarget(t *testing.T) {
	root := cgroupRootOrSkip(t)
	p := filepath.Join(root, "onehop-cputest-does-not-exist")
	err := NewSampler([]Target{{Name: "ghost", Path: p}}).Start()
	if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "target ghost ("+p+")") {
		t.Fatalf("Start error = %v, want a not-exist error naming ghost and %s", err, p)
	}
	t.Logf("error: %v", err)
}

func cgroupRootOrSkip(t *testing.T) string {
	t.Helper()
	root, err := CgroupRoot()
	if err != nil {
		t.Skipf("cannot run against the kernel: %v", err)
	}
	return root
}

// newTestCgroup creates an empty cgroup under the v2 root and removes it when the test ends,
// killing anything left inside first.
func newTestCgroup(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups under the cgroup v2 root; run `go test` as root")
	}
	root := cgroupRootOrSkip(t)
	dir := filepath.Join(root, fmt.Sprintf("onehop-cputest-%016x", rand.Uint64()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("creating test cgroup: %v", err)
	}
	t.Cleanup(func() { removeCgroup(t, dir) })
	return dir
}

func removeCgroup(t *testing.T, dir string) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return
	}
	// cgroup.kill also reaches processes the test lost track of (children of the shell).
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		t.Errorf("killing test cgroup %s: %v", dir, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return
		}
		// EBUSY until the killed processes are reaped and the kernel empties the cgroup.
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			t.Errorf("removing test cgroup %s: %v; remove it by hand with `rmdir %s`", dir, err, dir)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startBusy starts a CPU-bound shell placed into cgroup dir at clone time, so none of its CPU
// time is charged elsewhere, and returns its pid. The process is killed when the test ends.
func startBusy(t *testing.T, dir string) int {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("/bin/sh", "-c", "while :; do :; done")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting busy loop in %s (needs clone3, Linux 5.7+): %v", dir, err)
	}
	// Registered after newTestCgroup's cleanup, so it runs first: the cgroup is empty before rmdir.
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		if err := cmd.Wait(); err != nil && !isKilled(err) {
			t.Errorf("busy loop: %v (stderr %q)", err, stderr.String())
		}
	})
	return cmd.Process.Pid
}

func isKilled(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

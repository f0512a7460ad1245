package variants

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/clusters"
)

// HAProxy is one HAProxy process in master-worker mode (`haproxy -W -db -f <config>`) serving a
// config file, as the proxy variants (sidecar, ambient, waypoint) run it: the variant renders the
// config, the plumbing here checks it, starts the process where the variant says (a pod, a
// node), waits until it listens, reloads and stops it.
//
// Every config must declare the admin socket: `stats socket <Admin> mode 600 level admin`. It is
// how readiness, reloads and request counters are read.
type HAProxy struct {
	Name   string // for messages: "sidecar of pod web-1"
	Config string // haproxy.cfg path
	Admin  string // admin (stats) socket path the config declares
	Ports  []int  // TCP ports it listens on once ready
	// Start runs the command where the proxy belongs (clusters.Cluster.Start on a pod with a
	// Container and UID, clusters.NodeHost.StartOnNode on a node).
	Start func(ctx context.Context, argv []string) (*clusters.Process, error)

	proc   *clusters.Process
	worker int // pid of the current worker
}

// haproxyWait bounds every wait for HAProxy (start, reload, stop).
const haproxyWait = 15 * time.Second

// HAProxyBinary returns the haproxy executable or says how to install it.
func HAProxyBinary() (string, error) {
	p, err := exec.LookPath("haproxy")
	if err != nil {
		return "", errors.New("haproxy not found in PATH: run `make deps` (installs the Debian package haproxy)")
	}
	return p, nil
}

var haproxyVersion = sync.OnceValues(func() (string, error) {
	bin, err := HAProxyBinary()
	if err != nil {
		return "", err
	}
	out, err := exec.Command(bin, "-v").Output()
	if err != nil {
		return "", fmt.Errorf("%s -v: %w", bin, err)
	}
	// "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
	f := strings.Fields(string(out))
	if len(f) < 3 || f[0] != "HAProxy" || f[1] != "version" {
		return "", fmt.Errorf("%s -v: unexpected output %q", bin, strings.SplitN(string(out), "\n", 2)[0])
	}
	return f[2], nil
})

// HAProxyVersion returns the installed HAProxy's version, e.g. "2.6.12-1+deb12u4".
func HAProxyVersion() (string, error) { return haproxyVersion() }

// CheckHAProxyConfig runs `haproxy -c` on a config file; the error carries HAProxy's message.
func CheckHAProxyConfig(ctx context.Context, path string) error {
	bin, err := HAProxyBinary()
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, bin, "-c", "-f", path).CombinedOutput()
	if err == nil {
		return nil
	}
	var alerts []string // "[ALERT]    (2477) : config : parsing [f:60] : unknown keyword ..."
	for _, line := range strings.Split(string(out), "\n") {
		if _, msg, ok := strings.Cut(line, "[ALERT]"); ok {
			if _, rest, ok := strings.Cut(msg, ") : "); ok {
				msg = strings.TrimPrefix(rest, "config : ")
			}
			if !strings.HasPrefix(msg, "Error(s) found") && !strings.HasPrefix(msg, "Fatal errors found") {
				alerts = append(alerts, strings.TrimSpace(msg))
			}
		}
	}
	if len(alerts) == 0 {
		alerts = []string{strings.TrimSpace(string(out))}
	}
	// Quote the lines HAProxy names ("parsing [<path>:<line>]"): the file may not outlive the error.
	cfg, _ := os.ReadFile(path)
	lines := strings.Split(string(cfg), "\n")
	for i, a := range alerts {
		if _, rest, ok := strings.Cut(a, "parsing ["+path+":"); ok {
			if n, err := strconv.Atoi(rest[:strings.IndexByte(rest+"]", ']')]); err == nil && n >= 1 && n <= len(lines) {
				alerts[i] = fmt.Sprintf("%s (line %d: %q)", a, n, strings.TrimSpace(lines[n-1]))
			}
		}
	}
	return fmt.Errorf("haproxy -c rejects the config: %s", strings.Join(alerts, "; "))
}

// WriteConfig checks cfg with `haproxy -c` and, if HAProxy accepts it, puts it in place of the
// config file (readable by the proxy's uid). changed is false when the file already held cfg.
func (h *HAProxy) WriteConfig(ctx context.Context, cfg []byte) (changed bool, err error) {
	if old, err := os.ReadFile(h.Config); err == nil && bytes.Equal(old, cfg) {
		return false, nil
	}
	tmp := h.Config + ".new"
	if err := os.WriteFile(tmp, cfg, 0o644); err != nil {
		return false, err
	}
	if err := CheckHAProxyConfig(ctx, tmp); err != nil {
		os.Remove(tmp) // a running proxy keeps its current config
		return false, fmt.Errorf("%s: %w", h.Name, err)
	}
	return true, os.Rename(tmp, h.Config)
}

// Run starts the master-worker process and waits until its worker listens.
func (h *HAProxy) Run(ctx context.Context) error {
	bin, err := HAProxyBinary()
	if err != nil {
		return err
	}
	os.Remove(h.Admin) // a socket left by a killed process must not pass for a live one
	p, err := h.Start(ctx, []string{bin, "-W", "-db", "-f", h.Config})
	if err != nil {
		return fmt.Errorf("%s: start haproxy: %w", h.Name, err)
	}
	h.proc, h.worker = p, 0
	return h.waitWorker(ctx, 0)
}

// Process is the master process (nil before Run).
func (h *HAProxy) Process() *clusters.Process { return h.proc }

// Running says whether the master is alive.
func (h *HAProxy) Running() bool {
	if h.proc == nil {
		return false
	}
	select {
	case <-h.proc.Exited:
		return false
	default:
		return true
	}
}

// Reload makes the master load the (checked) config: SIGUSR2 re-executes it, it starts a new
// worker and soft-stops the old one, whose established connections finish their requests.
// It returns when the new worker answers.
func (h *HAProxy) Reload(ctx context.Context) error {
	if !h.Running() {
		return fmt.Errorf("%s: haproxy is not running", h.Name)
	}
	old := h.worker
	if err := h.proc.Process.Signal(syscall.SIGUSR2); err != nil {
		return fmt.Errorf("%s: reload: %w", h.Name, err)
	}
	return h.waitWorker(ctx, old)
}

// Stop signals the master (SIGTERM: HAProxy's hard stop, SIGUSR1: its graceful soft-stop,
// SIGKILL: a crash) and waits until it and its workers are gone; after grace it kills them.
func (h *HAProxy) Stop(sig syscall.Signal, grace time.Duration) error {
	if h.proc == nil {
		return nil
	}
	workers := h.workers()
	h.proc.Process.Signal(sig)
	var err error
	select {
	case <-h.proc.Exited:
	case <-time.After(grace):
		h.proc.Process.Kill()
		<-h.proc.Exited
		err = fmt.Errorf("%s: haproxy (pid %d) did not exit within %v of %s and was killed", h.Name, h.proc.Process.Pid, grace, unix.SignalName(sig))
	}
	// A worker outlives a killed master until it notices; it must not keep the ports (and
	// answer for the next process) meanwhile.
	for _, w := range workers {
		if w.alive() {
			syscall.Kill(w.pid, syscall.SIGKILL)
		}
	}
	for deadline := time.Now().Add(haproxyWait); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		alive := false
		for _, w := range workers {
			alive = alive || w.alive()
		}
		if !alive {
			break
		}
	}
	h.worker = 0
	return err
}

// ShowStat returns the admin socket's `show stat`: one map per proxy and server, keyed by the
// CSV columns (pxname, svname, stot, req_tot, ...).
func (h *HAProxy) ShowStat() ([]map[string]string, error) {
	out, err := h.command("show stat")
	if err != nil {
		return nil, err
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# ")))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) == 0 {
		return nil, fmt.Errorf("%s: show stat: %v: %q", h.Name, err, out)
	}
	var stats []map[string]string
	for _, row := range rows[1:] {
		m := map[string]string{}
		for i, col := range rows[0] {
			if i < len(row) && col != "" {
				m[col] = row[i]
			}
		}
		stats = append(stats, m)
	}
	return stats, nil
}

// Requests returns the request counter (req_tot) of a frontend or backend.
func (h *HAProxy) Requests(proxy string) (int, error) {
	stats, err := h.ShowStat()
	if err != nil {
		return 0, err
	}
	for _, s := range stats {
		if s["pxname"] == proxy && (s["svname"] == "FRONTEND" || s["svname"] == "BACKEND") {
			return strconv.Atoi(s["req_tot"])
		}
	}
	return 0, fmt.Errorf("%s: no proxy %q in show stat", h.Name, proxy)
}

// command sends one command to the admin socket and returns the answer.
func (h *HAProxy) command(cmd string) (string, error) {
	conn, err := net.DialTimeout("unix", h.Admin, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte(cmd + "\n")); err != nil {
		return "", err
	}
	var b strings.Builder
	_, err = bufio.NewReader(conn).WriteTo(&b)
	return b.String(), err
}

// waitWorker waits until a worker other than old, started by our master, answers on the admin
// socket and every port listens.
func (h *HAProxy) waitWorker(ctx context.Context, old int) error {
	deadline := time.Now().Add(haproxyWait)
	last := "no answer on " + h.Admin
	for {
		select {
		case <-h.proc.Exited:
			return fmt.Errorf("%s: haproxy exited; log %s:\n%s", h.Name, h.proc.LogPath, h.proc.LogTail(2000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond): // fine enough to time a restart
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: haproxy not ready after %v (%s); log %s:\n%s", h.Name, haproxyWait, last, h.proc.LogPath, h.proc.LogTail(2000))
		}
		out, err := h.command("show info")
		if err != nil {
			last = err.Error()
			continue
		}
		pid := infoPid(out)
		if pid == 0 || pid == old || parentOf(pid) != h.proc.Process.Pid {
			last = fmt.Sprintf("the admin socket is served by pid %d, not a new worker of master %d", pid, h.proc.Process.Pid)
			continue
		}
		if missing := h.missingPorts(); len(missing) > 0 {
			last = fmt.Sprintf("not listening on %v", missing)
			continue
		}
		h.worker = pid
		return nil
	}
}

// missingPorts lists the ports nothing listens on in the master's network namespace.
func (h *HAProxy) missingPorts() []int {
	listening := map[int]bool{}
	for _, f := range []string{"tcp", "tcp6"} {
		b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(h.proc.Process.Pid), "net", f))
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fl := strings.Fields(line)
			if len(fl) < 4 || fl[3] != "0A" { // TCP_LISTEN
				continue
			}
			if i := strings.LastIndexByte(fl[1], ':'); i >= 0 {
				if p, err := strconv.ParseInt(fl[1][i+1:], 16, 32); err == nil {
					listening[int(p)] = true
				}
			}
		}
	}
	var missing []int
	for _, p := range h.Ports {
		if !listening[p] {
			missing = append(missing, p)
		}
	}
	return missing
}

// proc identifies a process across pid reuse.
type proc struct {
	pid   int
	start string // start time in clock ticks since boot
}

func (p proc) alive() bool {
	_, state, start := procStat(p.pid)
	return start == p.start && state != "Z" && state != "X"
}

// workers lists the master's children (its workers).
func (h *HAProxy) workers() []proc {
	var out []proc
	tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(h.proc.Process.Pid), "task", "*", "children"))
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				if _, _, start := procStat(pid); start != "" {
					out = append(out, proc{pid, start})
				}
			}
		}
	}
	return out
}

func infoPid(info string) int {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(line, "Pid: "); ok {
			pid, _ := strconv.Atoi(strings.TrimSpace(v))
			return pid
		}
	}
	return 0
}

// parentOf returns a process's parent pid (0 if it is gone).
func parentOf(pid int) int {
	ppid, _, _ := procStat(pid)
	return ppid
}

// procStat reads a process's parent, state and start time from /proc/<pid>/stat.
func procStat(pid int) (ppid int, state, start string) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, "", ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may contain spaces and parentheses
	if i < 0 {
		return 0, "", ""
	}
	f := strings.Fields(s[i+1:]) // state, ppid, pgrp, ... starttime is field 22 of the line
	if len(f) < 20 {
		return 0, "", ""
	}
	ppid, _ = strconv.Atoi(f[1])
	return ppid, f[0], f[19]
}

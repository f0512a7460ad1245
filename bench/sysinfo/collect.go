package sysinfo

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Unknown is recorded for any value that could not be determined; Collect never fails, since a
// missing detail must not cost a benchmark run.
const Unknown = "unknown"

// NotInstalled is recorded for a tool that is not on PATH.
const NotInstalled = "not installed"

// toolTimeout bounds each external command, so a hung tool cannot stall a run.
const toolTimeout = 5 * time.Second

// Tool is an external command whose version is recorded, e.g. {"iptables", []string{"--version"}}.
type Tool struct {
	Name string
	Args []string
}

// DefaultTools are the data plane tools whose versions change what the kernel does with packets.
var DefaultTools = []Tool{
	{Name: "iptables", Args: []string{"--version"}},
	{Name: "ip", Args: []string{"-V"}},
	{Name: "nft", Args: []string{"--version"}},
	{Name: "bpftool", Args: []string{"version"}},
	{Name: "haproxy", Args: []string{"-v"}}, // the sidecar, ambient and waypoint proxies
}

// Collect describes the machine and software of this run. Values that cannot be read are
// recorded as Unknown (0 for numbers); tools map to the first line of their output, to
// NotInstalled, or to "error: ..." when they fail.
func Collect(ctx context.Context, tools []Tool) Environment {
	env := Environment{
		Hostname:      Unknown,
		Kernel:        Unknown,
		KernelVersion: Unknown,
		Arch:          runtime.GOARCH,
		OS:            osPrettyName(),
		CPUModel:      Unknown,
		Cores:         runtime.NumCPU(),
		GoVersion:     runtime.Version(),
		Modules:       map[string]string{},
		Tools:         map[string]string{},
		GitRevision:   Unknown,
	}
	if h, err := os.Hostname(); err == nil {
		env.Hostname = h
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		env.Kernel = unix.ByteSliceToString(uts.Release[:])
		env.KernelVersion = unix.ByteSliceToString(uts.Version[:])
	}
	if v, ok := procField("/proc/cpuinfo", "model name"); ok {
		env.CPUModel = v
	}
	if v, ok := procField("/proc/meminfo", "MemTotal"); ok {
		env.MemoryBytes = parseKB(v)
	}
	for _, t := range tools {
		env.Tools[t.Name] = toolVersion(ctx, t)
	}

	bi, ok := debug.ReadBuildInfo()
	if ok {
		env.Modules = modules(bi)
	}
	env.GitRevision, env.GitDirty = gitState(ctx, bi)
	return env
}

// osPrettyName reads PRETTY_NAME from os-release, at either location the spec allows.
func osPrettyName() string {
	for _, p := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if v := parseOSRelease(data)["PRETTY_NAME"]; v != "" {
			return v
		}
	}
	return Unknown
}

// parseOSRelease parses the shell-like KEY=value format of os-release(5).
func parseOSRelease(data []byte) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			} else {
				v = v[1 : len(v)-1]
			}
		} else if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			v = v[1 : len(v)-1]
		}
		m[k] = v
	}
	return m
}

// procField returns the value of the first "key : value" line of a /proc file.
func procField(path, key string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	return parseField(f, key)
}

func parseField(r io.Reader, key string) (string, bool) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// parseKB turns a meminfo value such as "8039424 kB" into bytes; 0 if malformed.
func parseKB(v string) uint64 {
	num, unit, _ := strings.Cut(strings.TrimSpace(v), " ")
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0
	}
	if strings.TrimSpace(unit) == "kB" {
		n *= 1024
	}
	return n
}

// toolVersion runs one tool and returns the first non-empty line it prints.
func toolVersion(ctx context.Context, t Tool) string {
	path, err := exec.LookPath(t.Name)
	if err != nil {
		return NotInstalled
	}
	ctx, cancel := context.WithTimeout(ctx, toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, t.Args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C") // untranslated output, comparable across machines
	cmd.WaitDelay = time.Second                // don't wait on grandchildren holding the pipes
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	// Some tools (java -version, older iproute2) print their version on stderr.
	line := firstLine(stdout.Bytes())
	if line == "" {
		line = firstLine(stderr.Bytes())
	}
	switch {
	case ctx.Err() != nil:
		return fmt.Sprintf("error: %s %s: %v", t.Name, strings.Join(t.Args, " "), ctx.Err())
	case err != nil && line != "":
		return fmt.Sprintf("error: %v: %s", err, line)
	case err != nil:
		return fmt.Sprintf("error: %v", err)
	case line == "":
		return "error: no output"
	}
	return line
}

func firstLine(b []byte) string {
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// modules picks the built-in module versions that change measured behaviour: the load generator,
// the plotting library and the data plane libraries, plus the main module itself.
func modules(bi *debug.BuildInfo) map[string]string {
	m := map[string]string{}
	if bi.Main.Path != "" {
		m[bi.Main.Path] = bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path != "fortio.org/fortio" && d.Path != "gonum.org/v1/plot" &&
			!strings.Contains(d.Path, "cilium/ebpf") && !strings.Contains(d.Path, "go-control-plane") {
			continue
		}
		v := d.Version
		if r := d.Replace; r != nil {
			v = strings.TrimSpace(v + " => " + r.Path + " " + r.Version)
		}
		m[d.Path] = v
	}
	return m
}

// gitState prefers what the go command stamped into the binary, which describes the code that
// actually runs; it falls back to asking git about the current directory (go run, -buildvcs=false).
func gitState(ctx context.Context, bi *debug.BuildInfo) (rev string, dirty bool) {
	rev = Unknown
	if bi != nil {
		var modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != Unknown {
			return rev, modified == "true"
		}
	}
	if out, err := gitOutput(ctx, "rev-parse", "HEAD"); err == nil && out != "" {
		rev = out
	}
	// Also asked when HEAD is unknown: a repository without commits is still dirty or not.
	// Generated outputs (reports/, results/) are what a run rewrites; they do not make the
	// source that produced the numbers any different.
	if out, err := gitOutput(ctx, "status", "--porcelain", "--", ".", ":!reports", ":!results"); err == nil {
		dirty = out != ""
	}
	return rev, dirty
}

func gitOutput(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "GIT_OPTIONAL_LOCKS=0") // don't take index.lock
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), err
}

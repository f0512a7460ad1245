package cpu

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// userHZ is the unit of /proc/stat. The kernel ABI fixes USER_HZ at 100 on every Linux
// architecture (it is what sysconf(_SC_CLK_TCK) and the AT_CLKTCK auxv entry report), independent
// of CONFIG_HZ, so a constant avoids needing cgo for sysconf. TestUserHZ checks the assumption.
const userHZ = 100

const msPerTick = 1000.0 / userHZ

// HostCounters is the aggregate "cpu" line of /proc/stat, in USER_HZ ticks since boot, summed
// over all CPUs.
type HostCounters struct {
	User, Nice, System, Idle, IOWait, IRQ, Softirq, Steal uint64
	// Guest and GuestNice are already included in User and Nice; they are kept for reference
	// only and must not be added to a total.
	Guest, GuestNice uint64
	// CPUs is the number of per-CPU lines, i.e. the online CPUs the aggregate covers.
	CPUs int
}

// CgroupCounters is the part of a cgroup v2 cpu.stat this package uses, in microseconds since
// the cgroup was created. The kernel keeps these three even when the cpu controller is not
// enabled for the cgroup, which is why they work in hybrid mode.
type CgroupCounters struct {
	UsageUSec, UserUSec, SystemUSec uint64
}

// ReadHost reads the aggregate CPU counters from /proc/stat.
func ReadHost() (HostCounters, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return HostCounters{}, fmt.Errorf("host CPU counters: %w (is /proc mounted?)", err)
	}
	defer f.Close()
	c, err := ParseProcStat(f)
	if err != nil {
		return HostCounters{}, fmt.Errorf("host CPU counters from /proc/stat: %w", err)
	}
	return c, nil
}

// ParseProcStat extracts the aggregate "cpu" line from /proc/stat content.
func ParseProcStat(r io.Reader) (HostCounters, error) {
	var hc HostCounters
	found := false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || !strings.HasPrefix(fields[0], "cpu") {
			continue // intr, ctxt, ...
		}
		if fields[0] != "cpu" {
			hc.CPUs++ // a per-CPU line ("cpu0")
			continue
		}
		vals := fields[1:]
		// steal (8th) exists since Linux 2.6.11; without it the busy figure would be incomplete.
		if len(vals) < 8 {
			return HostCounters{}, fmt.Errorf("aggregate cpu line has %d values, want at least 8: %q", len(vals), sc.Text())
		}
		n := make([]uint64, 10)
		for i, v := range vals {
			if i >= len(n) {
				break // fields added by future kernels
			}
			x, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return HostCounters{}, fmt.Errorf("aggregate cpu line, value %d: %w", i+1, err)
			}
			n[i] = x
		}
		hc = HostCounters{
			User: n[0], Nice: n[1], System: n[2], Idle: n[3], IOWait: n[4],
			IRQ: n[5], Softirq: n[6], Steal: n[7], Guest: n[8], GuestNice: n[9], CPUs: hc.CPUs,
		}
		found = true
	}
	if err := sc.Err(); err != nil {
		return HostCounters{}, err
	}
	if !found {
		return HostCounters{}, errors.New(`no aggregate "cpu" line found`)
	}
	return hc, nil
}

// ReadCgroup reads the CPU counters of the cgroup v2 directory dir (dir/cpu.stat).
func ReadCgroup(dir string) (CgroupCounters, error) {
	p := filepath.Join(dir, "cpu.stat")
	f, err := os.Open(p)
	if err != nil {
		return CgroupCounters{}, err
	}
	defer f.Close()
	c, err := ParseCPUStat(f)
	if err != nil {
		return CgroupCounters{}, fmt.Errorf("%s: %w", p, err)
	}
	return c, nil
}

// ParseCPUStat parses the content of a cgroup v2 cpu.stat file.
func ParseCPUStat(r io.Reader) (CgroupCounters, error) {
	var c CgroupCounters
	want := map[string]*uint64{"usage_usec": &c.UsageUSec, "user_usec": &c.UserUSec, "system_usec": &c.SystemUSec}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		key, val, ok := strings.Cut(line, " ")
		if !ok {
			return CgroupCounters{}, fmt.Errorf("malformed line %q, want \"key value\"", line)
		}
		dst, ok := want[key]
		if !ok {
			continue // nr_periods, throttled_usec, ...: present only with the cpu controller
		}
		x, err := strconv.ParseUint(strings.TrimSpace(val), 10, 64)
		if err != nil {
			return CgroupCounters{}, fmt.Errorf("%s: %w", key, err)
		}
		*dst = x
		delete(want, key)
	}
	if err := sc.Err(); err != nil {
		return CgroupCounters{}, err
	}
	if len(want) > 0 {
		missing := make([]string, 0, len(want))
		for _, k := range []string{"usage_usec", "user_usec", "system_usec"} {
			if _, ok := want[k]; ok {
				missing = append(missing, k)
			}
		}
		// A cgroup v1 cpu or cpuacct directory also has a cpu.stat, but with throttling fields only.
		return CgroupCounters{}, fmt.Errorf("missing %s (is this a cgroup v2 directory? v1 cpu.stat lacks them)", strings.Join(missing, ", "))
	}
	return c, nil
}

package cpu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// Sampler measures one window: Start reads the counters, Stop reads them again and returns the
// delta. It may be reused for consecutive windows but not used from several goroutines at once.
type Sampler struct {
	targets []Target

	started bool
	t0      time.Time // carries a monotonic reading; only differences are used
	host0   HostCounters
	cg0     []cgroupSnapshot
}

type cgroupSnapshot struct {
	dir      os.FileInfo // identity of the directory, to notice a cgroup recreated under the same path
	counters CgroupCounters
}

// NewSampler returns a Sampler for the host and the given cgroup v2 targets.
func NewSampler(targets []Target) *Sampler {
	return &Sampler{targets: append([]Target(nil), targets...)}
}

// Start reads the counters that open the window. It fails if any target cannot be read, since
// a window with a missing target would silently under-report.
func (s *Sampler) Start() error {
	s.started = false
	cg0 := make([]cgroupSnapshot, len(s.targets))
	t0 := time.Now()
	host, err := ReadHost()
	if err != nil {
		return err
	}
	var errs []error
	for i, t := range s.targets {
		// Stat before reading so that a replacement in between is caught by Stop's comparison.
		fi, err := os.Stat(t.Path)
		if err == nil {
			cg0[i].counters, err = ReadCgroup(t.Path)
		}
		if err != nil {
			errs = append(errs, &TargetError{Target: t, AtStart: true, Err: err})
			continue
		}
		cg0[i].dir = fi
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	s.t0, s.host0, s.cg0, s.started = t0, host, cg0, true
	return nil
}

// Stop reads the counters that close the window and returns what was spent in it. On a
// *TargetError (possibly several, joined) the Usage still holds the host and every target that
// could be measured; failed targets are left out of Usage.Cgroups, so the run should be marked
// invalid rather than plotted.
func (s *Sampler) Stop() (Usage, error) {
	if !s.started {
		return Usage{}, errors.New("cpu sampler: Stop called without a successful Start")
	}
	s.started = false
	t1 := time.Now()
	host, err := ReadHost()
	if err != nil {
		return Usage{}, err
	}
	u := Usage{
		WindowSeconds: t1.Sub(s.t0).Seconds(),
		Host:          hostDelta(s.host0, host, t1.Sub(s.t0)),
		Cgroups:       make([]CgroupUsage, 0, len(s.targets)),
	}
	var errs []error
	for i, t := range s.targets {
		c, err := s.readStop(t, s.cg0[i])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		u.Cgroups = append(u.Cgroups, c)
	}
	return u, errors.Join(errs...)
}

func (s *Sampler) readStop(t Target, start cgroupSnapshot) (CgroupUsage, error) {
	fail := func(err error) (CgroupUsage, error) { return CgroupUsage{}, &TargetError{Target: t, Err: err} }
	// Read before stat (the reverse of Start) so any replacement up to the read is detected.
	c, err := ReadCgroup(t.Path)
	if err != nil {
		return fail(err)
	}
	fi, err := os.Stat(t.Path)
	if err != nil {
		return fail(err)
	}
	if !os.SameFile(start.dir, fi) {
		return fail(errRecreated)
	}
	c0 := start.counters
	if c.UsageUSec < c0.UsageUSec || c.UserUSec < c0.UserUSec || c.SystemUSec < c0.SystemUSec {
		return fail(fmt.Errorf("counters went backwards (usage_usec %d -> %d)", c0.UsageUSec, c.UsageUSec))
	}
	return CgroupUsage{
		Target:   t,
		UsageMS:  float64(c.UsageUSec-c0.UsageUSec) / 1000,
		UserMS:   float64(c.UserUSec-c0.UserUSec) / 1000,
		SystemMS: float64(c.SystemUSec-c0.SystemUSec) / 1000,
	}, nil
}

var errRecreated = errors.New("cgroup was removed and recreated during the window (pod restarted?); its counters do not cover the window")

// TargetError is a failure to sample one target. It unwraps to the underlying error, so
// errors.Is(err, fs.ErrNotExist) tells a vanished cgroup apart.
type TargetError struct {
	Target  Target
	AtStart bool // false: the failure happened when closing the window
	Err     error
}

func (e *TargetError) Error() string {
	kind := e.Target.Component
	if kind == "" {
		kind = "target"
	}
	msg := e.Err.Error()
	var pe *fs.PathError
	if errors.As(e.Err, &pe) {
		msg = pe.Err.Error() // the path is already in the message; keep just the cause
	}
	if errors.Is(e.Err, fs.ErrNotExist) {
		if e.AtStart {
			msg += " (wrong cgroup path, or the pod is not running yet?)"
		} else {
			msg += " (cgroup removed during the window: pod deleted, restarted or exited; discard the run)"
		}
	}
	return fmt.Sprintf("cpu.stat of %s %s (%s): %s", kind, e.Target.Name, e.Target.Path, msg)
}

func (e *TargetError) Unwrap() error { return e.Err }

// hostDelta turns two /proc/stat readings into CPU-milliseconds. With tick-based accounting
// (CONFIG_TICK_CPU_ACCOUNTING, the common default) user, system and softirq are sampled at timer
// ticks, and work that wakes on timers, like fortio's paced requests, tends to run between ticks
// and is undercounted; idle time under NO_HZ is measured exactly when a CPU enters and leaves
// idle. So busy time is taken as the window times the CPUs minus idle and iowait, and the tick
// sum is kept beside it for reference.
func hostDelta(a, b HostCounters, window time.Duration) HostUsage {
	// Clamp at zero: the kernel documents that iowait can decrease, and a uint64 underflow would
	// turn that into an absurd figure.
	d := func(x, y uint64) float64 {
		if y < x {
			return 0
		}
		return float64(y-x) * msPerTick
	}
	h := HostUsage{
		UserMS:    d(a.User, b.User), // includes guest time
		NiceMS:    d(a.Nice, b.Nice), // includes guest_nice time
		SystemMS:  d(a.System, b.System),
		IdleMS:    d(a.Idle, b.Idle),
		IOWaitMS:  d(a.IOWait, b.IOWait),
		IRQMS:     d(a.IRQ, b.IRQ),
		SoftirqMS: d(a.Softirq, b.Softirq),
		StealMS:   d(a.Steal, b.Steal),
	}
	h.TickBusyMS = h.UserMS + h.NiceMS + h.SystemMS + h.IRQMS + h.SoftirqMS + h.StealMS
	h.CPUs = b.CPUs
	h.BusyMS = max(0, float64(window.Microseconds())/1000*float64(b.CPUs)-h.IdleMS-h.IOWaitMS)
	return h
}

// ByComponent sums the cgroup CPU time per Target.Component (targets without one under "").
func (u Usage) ByComponent() map[string]float64 {
	m := make(map[string]float64)
	for _, c := range u.Cgroups {
		m[c.Component] += c.UsageMS
	}
	return m
}

// PerThousand normalises CPU time to CPU-milliseconds per 1000 requests, so runs at different
// rates compare; it is 0 when no request completed.
func PerThousand(ms float64, requests int64) float64 {
	if requests <= 0 {
		return 0
	}
	return ms * 1000 / float64(requests)
}

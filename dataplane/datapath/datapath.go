// Package datapath loads onehop's kernel programs (package bpf), attaches them to a cgroup v2 and
// owns their maps: which network namespaces are enrolled, the services the programs balance
// (Programmer), the kernel counters and the table of established connections.
package datapath

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/bpf"
)

// Options size the kernel maps. Zero fields take the defaults.
type Options struct {
	MaxServices int // service frontends (oh_services, oh_rr); default 16384
	MaxSlots    int // slot entries of all services, both generations (oh_slots); default 262144
	MaxConns    int // tracked connections and remembered VIPs (oh_conns, oh_origdst); default 65536
	MaxNetns    int // enrolled network namespaces (oh_enrolled); default 1024
	// NoConnTracking leaves the sockops program unattached: no oh_conns table, and VIPs
	// remembered for getpeername leave oh_origdst by LRU eviction instead of at close (socket
	// cookies are never reused, so a stale entry is never read). It saves the per-connection
	// tracking work, a few percent of a new connection's latency.
	NoConnTracking bool
	Metrics        *Metrics
}

func (o Options) withDefaults() Options {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.MaxServices, 16384)
	def(&o.MaxSlots, 262144)
	def(&o.MaxConns, 65536)
	def(&o.MaxNetns, 1024)
	return o
}

// Datapath is the loaded programs and maps, and the cgroups they are attached to.
type Datapath struct {
	Enrollment *Enrollment
	Programmer *Programmer

	// Kept as fields (not only inside the owners) so pinning can reach every object later.
	objs     bpf.OnehopObjects
	links    []attachment
	counters []string // kernel counter names by index, from the C enum
	metrics  *Metrics
	noTrack  bool
}

type attachment struct {
	cgroup string
	prog   string
	link   link.Link
}

// Load loads the programs and creates the maps, sized by opts. It attaches nothing.
func Load(opts Options) (*Datapath, error) {
	opts = opts.withDefaults()
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("load onehop datapath: remove the memlock limit: %w (run as root)", err)
	}
	spec, err := bpf.LoadOnehop()
	if err != nil {
		return nil, fmt.Errorf("load onehop datapath: %w", err)
	}
	var maps bpf.OnehopMapSpecs
	if err := spec.Assign(&maps); err != nil {
		return nil, fmt.Errorf("load onehop datapath: %w", err)
	}
	for _, s := range []struct {
		m *ebpf.MapSpec
		n int
	}{
		{maps.OhServices, opts.MaxServices}, {maps.OhRr, opts.MaxServices},
		{maps.OhSlots, opts.MaxSlots},
		{maps.OhConns, opts.MaxConns}, {maps.OhOrigdst, opts.MaxConns},
		{maps.OhEnrolled, opts.MaxNetns},
	} {
		if s.n > 1<<24 {
			return nil, fmt.Errorf("load onehop datapath: %s: %d entries is more than the supported %d", s.m.Name, s.n, 1<<24)
		}
		s.m.MaxEntries = uint32(s.n)
	}
	names, err := counterNames(spec)
	if err != nil {
		return nil, fmt.Errorf("load onehop datapath: %w", err)
	}
	d := &Datapath{counters: names, metrics: opts.Metrics, noTrack: opts.NoConnTracking}
	if err := spec.LoadAndAssign(&d.objs, nil); err != nil {
		return nil, loadError(err)
	}
	d.Enrollment = &Enrollment{m: d.objs.OhEnrolled, metrics: opts.Metrics}
	d.Programmer = newProgrammer(d.objs.OhServices, d.objs.OhSlots, d.objs.OhRr, opts)
	opts.Metrics.kernelSource(nil, d)
	return d, nil
}

// loadError says what the kernel lacks, if a feature probe finds something missing, or else
// what the verifier said.
func loadError(err error) error {
	var missing []string
	for _, p := range []struct {
		what  string
		probe func() error
	}{
		{"BPF_PROG_TYPE_CGROUP_SOCK_ADDR", func() error { return features.HaveProgramType(ebpf.CGroupSockAddr) }},
		{"BPF_PROG_TYPE_SOCK_OPS", func() error { return features.HaveProgramType(ebpf.SockOps) }},
		{"BPF_MAP_TYPE_HASH", func() error { return features.HaveMapType(ebpf.Hash) }},
		{"BPF_MAP_TYPE_LRU_HASH", func() error { return features.HaveMapType(ebpf.LRUHash) }},
		{"BPF_MAP_TYPE_PERCPU_ARRAY", func() error { return features.HaveMapType(ebpf.PerCPUArray) }},
		{"bpf_get_netns_cookie for cgroup/connect", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie)
		}},
		{"bpf_get_socket_cookie for cgroup/connect", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetSocketCookie)
		}},
		{"bpf_get_netns_cookie for sockops (Linux 5.15)", func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnGetNetnsCookie)
		}},
		{"bpf_sock_ops_cb_flags_set for sockops", func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnSockOpsCbFlagsSet)
		}},
	} {
		if errors.Is(p.probe(), ebpf.ErrNotSupported) {
			missing = append(missing, p.what)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("load onehop datapath: kernel lacks %s: %w", strings.Join(missing, ", "), err)
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		log := ve.Log
		if len(log) > 20 {
			log = log[len(log)-20:]
		}
		return fmt.Errorf("load onehop datapath: the verifier rejected a program: %w; log tail:\n%s", ve.Cause, strings.Join(log, "\n"))
	}
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("load onehop datapath: %w (run as root)", err)
	}
	return fmt.Errorf("load onehop datapath: %w", err)
}

// Attach links every program to the cgroup v2 directory at cgroupPath; sockets of processes in
// it and its descendants are then handled. If one attach fails, the ones done by this call are
// undone.
func (d *Datapath) Attach(cgroupPath string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupPath, &st); err != nil {
		return fmt.Errorf("attach onehop datapath to %s: %w", cgroupPath, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("attach onehop datapath to %s: not a cgroup v2 directory (give a path under the cgroup2 mount)", cgroupPath)
	}
	var done []attachment
	for _, p := range []struct {
		name   string
		attach ebpf.AttachType
		prog   *ebpf.Program
	}{
		{"cgroup/connect4", ebpf.AttachCGroupInet4Connect, d.objs.OhConnect4},
		{"cgroup/connect6", ebpf.AttachCGroupInet6Connect, d.objs.OhConnect6},
		{"cgroup/getpeername4", ebpf.AttachCgroupInet4GetPeername, d.objs.OhGetpeername4},
		{"cgroup/getpeername6", ebpf.AttachCgroupInet6GetPeername, d.objs.OhGetpeername6},
		{"sockops", ebpf.AttachCGroupSockOps, d.objs.OhSockops},
	} {
		if p.attach == ebpf.AttachCGroupSockOps && d.noTrack {
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: p.attach, Program: p.prog})
		if err != nil {
			for _, a := range done {
				a.link.Close()
			}
			hint := ""
			if errors.Is(err, unix.EPERM) {
				hint = " (run as root)"
			}
			return fmt.Errorf("attach %s to %s: %w%s", p.name, cgroupPath, err, hint)
		}
		done = append(done, attachment{cgroup: cgroupPath, prog: p.name, link: l})
	}
	d.links = append(d.links, done...)
	return nil
}

// Close detaches the programs from every cgroup and frees programs and maps.
func (d *Datapath) Close() error {
	var errs []error
	for _, a := range d.links {
		if err := a.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s from %s: %w", a.prog, a.cgroup, err))
		}
	}
	d.links = nil
	d.metrics.kernelSource(d, nil)
	if err := d.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close onehop programs and maps: %w", err))
	}
	return errors.Join(errs...)
}

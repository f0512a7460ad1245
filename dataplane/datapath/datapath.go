// Package datapath loads onehop's kernel programs (package bpf), attaches them to a cgroup v2 and
// owns their maps: which network namespaces are enrolled, the services the programs balance
// (Programmer), the kernel counters and the table of established connections. With
// Options.PinDir, maps and attachments are pinned in bpffs and outlive the agent (pin.go).
package datapath

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
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
	// EventBytes sizes oh_events, the ring buffer of telemetry events (about 180 bytes each): a
	// power of two, at least a page; default 2 MiB. A pinned one keeps its size.
	EventBytes int
	// ReportPeriod: a connection with telemetry on is reported at most this often while it
	// lives (on an RTT sample, as ACKs arrive); default 5s.
	ReportPeriod time.Duration
	// NoConnTracking leaves the sockops program unattached: no oh_conns table, and VIPs
	// remembered for getpeername leave oh_origdst by LRU eviction instead of at close (socket
	// cookies are never reused, so a stale entry is never read). It saves the per-connection
	// tracking work, a few percent of a new connection's latency.
	NoConnTracking bool
	// PinDir is a bpffs directory for the maps and cgroup links, so they outlive the process: a
	// restart adopts them without a moment of unbalanced traffic, Close leaves them attached and
	// Uninstall removes them (see pin.go). Empty: nothing is pinned and Close detaches.
	PinDir  string
	Metrics *Metrics
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
	def(&o.EventBytes, 2<<20)
	if o.ReportPeriod <= 0 {
		o.ReportPeriod = 5 * time.Second
	}
	return o
}

// MaxEventBytes is the largest oh_events Load makes.
const MaxEventBytes = 1 << 30

// CheckEventBytes says whether n bytes can size oh_events (Options.EventBytes): a power of two,
// from a page to MaxEventBytes.
func CheckEventBytes(n int) error {
	if n < os.Getpagesize() || n > MaxEventBytes || n&(n-1) != 0 {
		return fmt.Errorf("telemetry ring buffer of %d bytes: must be a power of two from %d bytes to 1 GiB", n, os.Getpagesize())
	}
	return nil
}

// Datapath is the loaded programs and maps, and the cgroups they are attached to.
type Datapath struct {
	Enrollment *Enrollment
	Programmer *Programmer

	objs     bpf.OnehopObjects
	maps     map[string]*ebpf.Map // the maps of objs by name, for pinning and migration
	links    []attachment
	msgLink  link.Link // oh_msg on oh_sockhash (sockmap.go)
	counters []string  // kernel counter names by index, from the C enum
	metrics  *Metrics
	noTrack  bool
	pinDir   string
	adopted  Adopted
	closed   bool
}

type attachment struct {
	cgroup   string // path; for a link adopted from pins and not attached again yet, "cgroup <id>"
	cgroupID uint64 // set when pinned
	prog     program
	link     link.Link
	pin      string // where the link is pinned; "" if it is not
}

// program is one of the kernel programs and where it attaches.
type program struct {
	section string // as in onehop.c, for messages
	pin     string // its link's file name in the pin layout
	attach  ebpf.AttachType
	get     func(*bpf.OnehopPrograms) *ebpf.Program
}

var programs = []program{
	{"cgroup/connect4", "connect4", ebpf.AttachCGroupInet4Connect, func(p *bpf.OnehopPrograms) *ebpf.Program { return p.OhConnect4 }},
	{"cgroup/connect6", "connect6", ebpf.AttachCGroupInet6Connect, func(p *bpf.OnehopPrograms) *ebpf.Program { return p.OhConnect6 }},
	{"cgroup/getpeername4", "getpeername4", ebpf.AttachCgroupInet4GetPeername, func(p *bpf.OnehopPrograms) *ebpf.Program { return p.OhGetpeername4 }},
	{"cgroup/getpeername6", "getpeername6", ebpf.AttachCgroupInet6GetPeername, func(p *bpf.OnehopPrograms) *ebpf.Program { return p.OhGetpeername6 }},
	{"sockops", "sockops", ebpf.AttachCGroupSockOps, func(p *bpf.OnehopPrograms) *ebpf.Program { return p.OhSockops }},
}

// Load loads the programs and creates the maps, sized by opts. It attaches nothing.
//
// With opts.PinDir it first looks there for what an earlier agent pinned: compatible maps are
// reused with their contents (services, enrolled namespaces, connections, VIPs for
// getpeername), an older layout is migrated, and every pinned cgroup link is switched to the
// new programs in place (bpf_link_update: no moment without a program). Adopted says what was
// found. The Programmer then starts from what the maps hold: its first Apply changes only what
// differs. Anything at a pin path that is not what this agent would have pinned there fails
// Load before anything is changed.
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
	sized := map[string]bool{} // maps sized by opts; a pinned one keeps its size
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
		sized[s.m.Name] = true
	}
	if err := CheckEventBytes(opts.EventBytes); err != nil {
		return nil, fmt.Errorf("load onehop datapath: %w", err)
	}
	maps.OhEvents.MaxEntries = uint32(opts.EventBytes) // a ring buffer's size is in bytes
	sized[maps.OhEvents.Name] = true
	if err := spec.Variables[bpf.OnehopVarOhReportPeriodNs].Set(uint64(opts.ReportPeriod)); err != nil {
		return nil, fmt.Errorf("load onehop datapath: report period: %w", err)
	}
	if err := spec.Variables[bpf.OnehopVarOhEventsWakeupBytes].Set(uint64(opts.EventBytes / 4)); err != nil {
		return nil, fmt.Errorf("load onehop datapath: event wakeup: %w", err)
	}
	if err := spec.Variables[bpf.OnehopVarOhPlantedConnectLookups].Set(PlantedConnectLookups); err != nil {
		return nil, fmt.Errorf("load onehop datapath: planted regression: %w", err)
	}
	names, err := counterNames(spec)
	if err != nil {
		return nil, fmt.Errorf("load onehop datapath: %w", err)
	}
	d := &Datapath{counters: names, metrics: opts.Metrics, noTrack: opts.NoConnTracking, pinDir: opts.PinDir}
	if opts.PinDir == "" {
		err = d.load(spec, ebpf.CollectionOptions{})
	} else {
		err = d.loadPinned(spec, sized)
	}
	if err != nil {
		return nil, err
	}
	if err := d.attachMsg(); err != nil {
		d.Close()
		return nil, err
	}
	d.Enrollment = &Enrollment{m: d.objs.OhEnrolled, metrics: opts.Metrics}
	// Pinned maps keep their sizes, which the Programmer must respect.
	opts.MaxServices = int(min(d.objs.OhServices.MaxEntries(), d.objs.OhRr.MaxEntries()))
	opts.MaxSlots = int(d.objs.OhSlots.MaxEntries())
	d.Programmer = newProgrammer(d.objs.OhServices, d.objs.OhSlots, d.objs.OhRr, opts)
	if d.adopted.Layout != 0 {
		// The maps hold what an earlier agent programmed: the first Apply re-reads them and
		// changes only what differs, so no VIP is ever missing or empty across a restart.
		d.Programmer.stale = true
		if err := d.adoptedContents(); err != nil {
			d.Close()
			return nil, err
		}
	}
	opts.Metrics.kernelSource(nil, d)
	return d, nil
}

// load loads spec into d.objs and d.maps.
func (d *Datapath) load(spec *ebpf.CollectionSpec, opts ebpf.CollectionOptions) error {
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if err != nil {
		return loadError(err)
	}
	defer coll.Close() // whatever Assign did not take
	d.maps = map[string]*ebpf.Map{}
	for name, m := range coll.Maps {
		if !internalMap(name) {
			d.maps[name] = m
		}
	}
	if err := coll.Assign(&d.objs); err != nil {
		return fmt.Errorf("load onehop datapath: %w", err)
	}
	return nil
}

// internalMap says whether a map is one the loader makes for a data section (.rodata): it is
// part of its programs, never shared, pinned or migrated.
func internalMap(name string) bool { return strings.HasPrefix(name, ".") }

// loadError says what the kernel lacks, if a feature probe finds something missing, or else
// what the verifier said.
func loadError(err error) error {
	if errors.Is(err, btf.ErrNotFound) {
		return fmt.Errorf("load onehop datapath: the kernel has no BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y), which connection telemetry needs to read tcp_sock fields: %w", err)
	}
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
		{"BPF_MAP_TYPE_RINGBUF (Linux 5.8+)", func() error { return features.HaveMapType(ebpf.RingBuf) }},
		{"bpf_get_netns_cookie for cgroup/connect", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie)
		}},
		{"bpf_get_socket_cookie for cgroup/connect", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetSocketCookie)
		}},
		{"bpf_set_retval for cgroup/connect (Linux 5.18; refuses connects to services without endpoints)", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSetRetval)
		}},
		{"bpf_get_netns_cookie for sockops (Linux 5.15)", func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnGetNetnsCookie)
		}},
		{"bpf_sock_ops_cb_flags_set for sockops", func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnSockOpsCbFlagsSet)
		}},
		{"bpf_skc_to_tcp_sock for sockops (Linux 5.9; telemetry reads tcp_sock through it)", func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnSkcToTcpSock)
		}},
		{"bpf_ringbuf_reserve for sockops (Linux 5.8)", func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnRingbufReserve)
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
// undone. When pinning, links Load adopted for this cgroup already run the new programs and are
// kept; the others are attached and pinned.
func (d *Datapath) Attach(cgroupPath string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupPath, &st); err != nil {
		return fmt.Errorf("attach onehop datapath to %s: %w", cgroupPath, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("attach onehop datapath to %s: not a cgroup v2 directory (give a path under the cgroup2 mount)", cgroupPath)
	}
	var (
		cgroupID uint64
		done     []attachment
	)
	if d.pinDir != "" {
		id, err := cgroupIDOf(cgroupPath)
		if err != nil {
			return fmt.Errorf("attach onehop datapath to %s: %w", cgroupPath, err)
		}
		cgroupID = id
	}
	undo := func() {
		for _, a := range done {
			a.link.Unpin()
			a.link.Close()
		}
	}
	for _, p := range programs {
		want := p.attach != ebpf.AttachCGroupSockOps || !d.noTrack
		if i := d.adoptedLink(cgroupID, p); i >= 0 {
			d.links[i].cgroup = cgroupPath
			if !want { // pinned by an agent that tracked connections: this one does not
				a := d.links[i]
				a.link.Detach()
				d.links = slices.Delete(d.links, i, i+1)
				if err := unpinClose(a); err != nil {
					undo()
					return err
				}
			}
			continue
		}
		if !want {
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: p.attach, Program: p.get(&d.objs.OnehopPrograms)})
		if err != nil {
			undo()
			hint := ""
			if errors.Is(err, unix.EPERM) {
				hint = " (run as root)"
			}
			return fmt.Errorf("attach %s to %s: %w%s", p.section, cgroupPath, err, hint)
		}
		a := attachment{cgroup: cgroupPath, cgroupID: cgroupID, prog: p, link: l}
		if d.pinDir != "" {
			if err := d.pinLink(&a); err != nil {
				l.Close()
				undo()
				return err
			}
		}
		done = append(done, a)
	}
	d.links = append(d.links, done...)
	return nil
}

// Close frees programs and maps. Unpinned, it detaches the programs from every cgroup; pinned,
// they stay attached and keep balancing with what the maps hold, for the next Load to adopt
// (a killed agent leaves the same state). Uninstall removes them.
func (d *Datapath) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for _, a := range d.links {
		if err := a.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close link of %s to %s: %w", a.prog.section, a.cgroup, err))
		}
	}
	d.links = nil
	if d.msgLink != nil {
		if err := d.msgLink.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close sk_msg link: %w", err))
		}
		d.msgLink = nil
	}
	d.metrics.kernelSource(d, nil)
	if err := d.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close onehop programs and maps: %w", err))
	}
	return errors.Join(errs...)
}

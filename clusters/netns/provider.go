// Package netns is the embedded default lab cluster: every node is a network namespace with a pod
// bridge, every pod a network namespace with a veth on its node's bridge and a cgroup v2 leaf.
// Nodes are joined by an underlay bridge in a namespace of its own, and pod subnets are routed
// between nodes over it, so cross-node traffic really crosses two node namespaces and a link.
// Nothing is created in the host's network namespace.
package netns

import (
	"golang.org/x/sys/unix"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/onehop-mesh/onehop/bench/cpu"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/services"
)

// lockWait bounds how long a command waits for another one working on the same lab.
const lockWait = 30 * time.Second

// ProviderName is how results and reports name this provider.
const ProviderName = "netns"

// Provider creates netns labs.
type Provider struct {
	// StateDir holds per-lab state, logs and locks (default /run/onehop).
	StateDir string
	// CgroupRoot is the cgroup v2 mount (default: found in /proc/self/mountinfo).
	CgroupRoot string
	// Binary is the onehop executable that runs workloads in pods (default: this executable).
	Binary string
	// Progress receives one line per step of long operations; nil is silent.
	Progress func(msg string)
	Log      *slog.Logger
}

// New returns a provider with defaults filled in.
func New() (*Provider, error) {
	p := &Provider{StateDir: "/run/onehop", Log: slog.Default()}
	root, err := cpu.CgroupRoot()
	if err != nil {
		return nil, err
	}
	p.CgroupRoot = root
	if p.Binary, err = os.Executable(); err != nil {
		return nil, fmt.Errorf("find the onehop executable: %w", err)
	}
	return p, nil
}

func (p *Provider) progress(format string, a ...any) {
	if p.Progress != nil {
		p.Progress(fmt.Sprintf(format, a...))
	}
}

// Preflight checks what the lab needs before it touches anything.
func Preflight(spec clusters.Spec) error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("not root: the netns lab creates network namespaces, veths and cgroups; run it as root (sudo)"))
	}
	tools := map[string]string{"ip": "iproute2", "iptables-save": "iptables", "iptables-restore": "iptables", "sysctl": "procps", "nsenter": "util-linux"}
	if spec.HasFamily("ipv6") {
		tools["ip6tables-restore"] = "iptables"
	}
	for tool, pkg := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			errs = append(errs, fmt.Errorf("%s not found: run `make deps` (installs the Debian package %s)", tool, pkg))
		}
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		errs = append(errs, errors.New("the kernel has no network namespaces (CONFIG_NET_NS)"))
	}
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
		errs = append(errs, errors.New("bridged traffic cannot pass iptables (no /proc/sys/net/bridge): the kernel needs CONFIG_BRIDGE and CONFIG_BRIDGE_NETFILTER, as kube-proxy does"))
	}
	if _, err := cpu.CgroupRoot(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// state is what a lab persists so that other commands (status, down, run) can find it.
type state struct {
	Spec  clusters.Spec   `json:"spec"`
	Nodes []node          `json:"nodes"`
	Pods  []clusters.Pod  `json:"pods"`
	Store *services.Store `json:"store"`
}

type node struct {
	Name     string         `json:"name"`
	Index    int            `json:"index"`
	Netns    string         `json:"netns"`
	Underlay []netip.Addr   `json:"underlay"`
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	Ready    bool           `json:"ready"`
}

func (n node) gateway(family int) netip.Addr { return host(n.PodCIDRs[family], 1) }

func (p *Provider) labDir(name string) string { return filepath.Join(p.StateDir, name) }

// bpfDir is the lab's own bpffs mount, where node daemons pin objects. A mount of its own keeps
// the host's /sys/fs/bpf (which need not even be a bpffs) out of the lab.
func (p *Provider) bpfDir(name string) string { return filepath.Join(p.labDir(name), "bpf") }

// mountBPF mounts a bpffs instance named source at dir unless one is there.
func mountBPF(source, dir string) error {
	if isBPFFS(dir) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(source, dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount a bpffs at %s (does the kernel have CONFIG_BPF_SYSCALL?): %w", dir, err)
	}
	return nil
}

// unmountBPF detaches the lab's bpffs, if mounted.
func unmountBPF(dir string) error {
	if !isBPFFS(dir) {
		return nil
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount the lab's bpffs %s: %w", dir, err)
	}
	return nil
}

func isBPFFS(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// Up creates the lab, or completes a partly created one: every step first checks what exists.
func (p *Provider) Up(ctx context.Context, spec clusters.Spec) (clusters.Cluster, error) {
	spec.SetDefaults()
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("invalid cluster spec:\n%w", err)
	}
	if err := Preflight(spec); err != nil {
		return nil, err
	}
	c, err := p.lockLab(spec.Name)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	switch prev, err := c.load(); {
	case err == nil && !sameTopology(prev.Spec, spec):
		return nil, fmt.Errorf("lab %q is already up with different nodes or network; run `onehop cluster down --name %s` first", spec.Name, spec.Name)
	case err == nil:
		c.st = prev
	case errors.Is(err, os.ErrNotExist):
		c.st = p.plan(spec)
	default:
		return nil, err
	}
	// Keep pods and services already added to a running lab; add the spec's.
	c.st.Spec.Namespaces = mergeNamespaces(c.st.Spec.Namespaces, spec.Namespaces)
	if err := c.up(ctx); err != nil {
		return nil, err
	}
	for _, ps := range spec.Pods {
		if _, err := c.CreatePod(ctx, ps); err != nil {
			return nil, err
		}
	}
	// Stored first and programmed once: a sync per service would make a big lab quadratic.
	for _, sd := range spec.Services {
		if _, err := c.storeService(sd); err != nil {
			return nil, err
		}
	}
	if err := c.syncServices(ctx); err != nil {
		return nil, err
	}
	ok = true
	return c, c.save()
}

// Open attaches to a running lab.
func (p *Provider) Open(ctx context.Context, name string) (clusters.Cluster, error) {
	c, err := p.lockLab(name)
	if err != nil {
		return nil, err
	}
	st, err := c.load()
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("lab %q is not up (no %s); run `onehop cluster up` first", name, c.statePath())
		}
		return nil, err
	}
	c.st = st
	return c, nil
}

func sameTopology(a, b clusters.Spec) bool {
	return a.Nodes == b.Nodes && a.Network == b.Network && strings.Join(a.IPFamilies, ",") == strings.Join(b.IPFamilies, ",")
}

func mergeNamespaces(have, add []clusters.Namespace) []clusters.Namespace {
	out := append([]clusters.Namespace(nil), have...)
	for _, n := range add {
		replaced := false
		for i := range out {
			if out[i].Name == n.Name {
				out[i], replaced = n, true
			}
		}
		if !replaced {
			out = append(out, n)
		}
	}
	return out
}

// plan assigns names and addresses to the nodes of a new lab.
func (p *Provider) plan(spec clusters.Spec) state {
	st := state{Spec: spec}
	st.Spec.Pods, st.Spec.Services = nil, nil
	var svcCIDRs []netip.Prefix
	for _, fam := range families(spec) {
		svcCIDRs = append(svcCIDRs, netip.MustParsePrefix(fam.service))
	}
	st.Store = services.New(svcCIDRs...)
	for i, name := range spec.NodeNames() {
		n := node{Name: name, Index: i + 1, Netns: nodeNetns(spec.Name, name)}
		for _, fam := range families(spec) {
			n.Underlay = append(n.Underlay, host(netip.MustParsePrefix(fam.underlay), i+1))
			n.PodCIDRs = append(n.PodCIDRs, subnet(netip.MustParsePrefix(fam.pod), fam.nodeBits, i+1))
		}
		st.Nodes = append(st.Nodes, n)
	}
	return st
}

type family struct {
	name                   string
	underlay, pod, service string
	nodeBits, underlayBits int
	// addrFlags skips IPv6 duplicate address detection, which would delay a new pod by seconds.
	addrFlags, defaultRoute string
}

// families lists the lab's IP families, primary first.
func families(spec clusters.Spec) []family {
	var out []family
	nw := spec.Network
	for _, f := range spec.IPFamilies {
		if f == "ipv6" {
			out = append(out, family{"ipv6", nw.UnderlayIPv6, nw.PodIPv6, nw.ServiceIPv6, 64, netip.MustParsePrefix(nw.UnderlayIPv6).Bits(), " nodad", "::/0"})
		} else {
			out = append(out, family{"ipv4", nw.UnderlayIPv4, nw.PodIPv4, nw.ServiceIPv4, 24, netip.MustParsePrefix(nw.UnderlayIPv4).Bits(), "", "0.0.0.0/0"})
		}
	}
	return out
}

// Down removes everything the lab created. It works from names alone, so it also cleans up after
// a runner that was killed before it could record its state.
func (p *Provider) Down(ctx context.Context, name string) error {
	if !regexpLab(name) {
		return fmt.Errorf("%q is not a lab name", name)
	}
	lock, err := p.lockFile(name)
	if err != nil {
		return err
	}
	defer lock.Close()
	var errs []error
	// 1. Kill every process of the lab: they all run in its cgroup subtree.
	cg := filepath.Join(p.CgroupRoot, prefix(name))
	if err := killCgroup(cg); err != nil {
		errs = append(errs, err)
	}
	// 2. Network namespaces: pods, nodes, underlay. Links and iptables rules go with them.
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix(name)+"-") {
			if _, err := run(ctx, nil, "ip", "netns", "delete", e.Name()); err != nil && netnsExists(e.Name()) {
				errs = append(errs, err)
			}
		}
	}
	// 3. Cgroup directories, deepest first.
	if err := removeCgroupTree(cg); err != nil {
		errs = append(errs, err)
	}
	// 4. The lab's bpffs (its pins go with it: links pinned there detach once nothing else
	// holds them), then the state directory.
	if err := unmountBPF(p.bpfDir(name)); err != nil {
		errs = append(errs, err)
	} else if err := os.RemoveAll(p.labDir(name)); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", p.labDir(name), err))
	}
	if len(errs) == 0 {
		os.Remove(lock.Name())
	}
	return errors.Join(errs...)
}

// killCgroup kills every process in a cgroup subtree and waits until it is empty.
func killCgroup(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		return fmt.Errorf("kill processes of %s: %w", dir, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil || strings.Contains(string(b), "populated 0") {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("processes of %s did not exit within 10s", dir)
}

// removeCgroupTree removes a cgroup directory and its children (cgroupfs only allows rmdir of
// empty groups, so files are never deleted).
func removeCgroupTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeCgroupTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := syscall.Rmdir(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	return nil
}

// lockFile takes the lab's exclusive lock, serialising commands on one lab.
func (p *Provider) lockFile(name string) (*os.File, error) {
	if err := os.MkdirAll(p.StateDir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(p.StateDir, name+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	// Bounded wait: a lab held open by a long run should produce an answer, not a hang.
	for deadline, said := time.Now().Add(lockWait), false; ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lab %q is in use by another onehop command (lock %s held for over %v): %w", name, f.Name(), lockWait, err)
		}
		if !said {
			p.progress("waiting for another onehop command on lab %q", name)
			said = true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return f, nil
}

func (p *Provider) lockLab(name string) (*Cluster, error) {
	f, err := p.lockFile(name)
	if err != nil {
		return nil, err
	}
	return &Cluster{p: p, lock: f, name: name}, nil
}

func regexpLab(name string) bool {
	s := clusters.Spec{Name: name}
	s.SetDefaults()
	return s.Validate() == nil
}

func (c *Cluster) statePath() string { return filepath.Join(c.p.labDir(c.name), "state.json") }

func (c *Cluster) load() (state, error) {
	b, err := os.ReadFile(c.statePath())
	if err != nil {
		return state{}, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return state{}, fmt.Errorf("lab state %s is corrupt (%v); run `onehop cluster down --name %s`", c.statePath(), err, c.name)
	}
	return st, nil
}

// save writes the state atomically so a killed runner never leaves a torn file.
func (c *Cluster) save() error {
	b, err := json.MarshalIndent(c.st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.p.labDir(c.name), 0o755); err != nil {
		return err
	}
	tmp := c.statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, c.statePath())
}

var _ io.Closer = (*Cluster)(nil)

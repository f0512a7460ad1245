// Package localkube brings up a real single-node Kubernetes cluster on this host without Docker
// or a registry: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
// kube-proxy built from the Go module proxy (internal/kubetest), containerd and runc from Debian
// with the CRI plugin and Debian's CNI plugins (bridge, host-local), and a sandbox (pause) image
// built here. Everything runs in a network namespace of the cluster's own, joined to the host by
// one veth pair, so kube-proxy's iptables rules, the pod bridge and the pods stay out of the
// host's network; cgroups, mounts and files carry the cluster's name.
//
// It is what the e2e suites run on here (e2e/), where kind cannot: kind needs a Docker or Podman
// engine and node images from a registry. Any cluster reachable by a kubeconfig works as well.
package localkube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/rest"

	"github.com/onehop-mesh/onehop/deploy/image"
	"github.com/onehop-mesh/onehop/internal/kubetest"
)

// Options say which cluster to bring up.
type Options struct {
	// Name is the cluster's name: lowercase letters and digits, at most 10. Its netns, host
	// interface and cgroups are named "ohk-<Name>"; its files are in /var/tmp/onehop-kube/<Name>.
	Name string
	// Link is the /30 between the host (first address) and the node (second): the node's IP,
	// where the API server, kubelet and hostNetwork pods listen. Default: one in 10.250.0.0/16
	// picked by the name, so clusters of different names can run side by side.
	Link netip.Prefix
	// Source is the onehop module's root, from which the pause image is built (default ".").
	Source string
	// Logf reports progress (default: none).
	Logf func(format string, args ...any)
}

// Cluster is a running localkube cluster.
type Cluster struct {
	Name, Dir  string
	Netns      string     // path of the node's network namespace
	NodeName   string     // the node's name in the API
	NodeIP     netip.Addr // reachable from the host through the veth
	Kubeconfig string     // admin kubeconfig, server https://NodeIP:6443
	// CgroupV2 is the cgroup v2 directory holding every pod (the kubelet's cgroupRoot): the
	// agent's --cgroup (the chart's host.cgroup).
	CgroupV2 string
	// BPFFS is a bpffs of the cluster's own, a shared mount (the chart's host.bpffs); RunDir the
	// chart's host.run.
	BPFFS, RunDir string
	ServiceCIDR   netip.Prefix
	PodCIDR       netip.Prefix
	Bins          kubetest.NodeBins
	containerd    string // its socket
}

const (
	baseDir     = "/var/tmp/onehop-kube"
	cgroupFS    = "/sys/fs/cgroup"
	cgroupV2    = "/sys/fs/cgroup/unified"
	apiPort     = 6443
	pauseImage  = "registry.k8s.io/pause:3.10"
	cniBinDir   = "/usr/lib/cni"
	serviceCIDR = "10.96.0.0/16"
	podCIDR     = "10.245.0.0/24"
)

var nameRE = regexp.MustCompile(`^[a-z0-9]{1,10}$`)

// Tools are the commands localkube needs, and their Debian packages (`make deps` installs them).
var Tools = map[string]string{"nsenter": "util-linux", "ip": "iproute2", "iptables": "iptables", "containerd": "containerd",
	"ctr": "containerd", "runc": "runc", cniBinDir + "/bridge": "containernetworking-plugins"}

func prefix(name string) string { return "ohk-" + name }

// Up brings the cluster up and waits until its node is Ready. A cluster of that name left by a
// killed run is removed first. On error nothing is left.
func Up(ctx context.Context, o Options) (c *Cluster, err error) {
	if !nameRE.MatchString(o.Name) {
		return nil, fmt.Errorf("localkube: cluster name %q: use 1-10 lowercase letters or digits", o.Name)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("localkube: needs root (network namespaces, cgroups, containerd)")
	}
	if err := image.RequireTools(Tools); err != nil {
		return nil, fmt.Errorf("localkube: %w", err)
	}
	if _, err := os.Stat(filepath.Join(cgroupV2, "cgroup.procs")); err != nil {
		return nil, fmt.Errorf("localkube: no cgroup v2 at %s (the agent attaches there): %w", cgroupV2, err)
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if !o.Link.IsValid() {
		o.Link = defaultLink(o.Name)
	}
	if o.Link.Bits() != 30 || !o.Link.Addr().Is4() {
		return nil, fmt.Errorf("localkube: link %s must be an IPv4 /30", o.Link)
	}
	o.Link = o.Link.Masked()
	hostIP := o.Link.Addr().Next()
	if err := Down(context.WithoutCancel(ctx), o.Name); err != nil {
		return nil, fmt.Errorf("localkube: removing what a previous run of %s left: %w", o.Name, err)
	}
	if ifc := linkInUse(o.Link); ifc != "" {
		return nil, fmt.Errorf("localkube: link %s is already on interface %s (another localkube cluster? `onehop cluster down --provider localkube --name <name>` removes one); pick another Link", o.Link, ifc)
	}
	bins, err := kubetest.Binaries(ctx, kubetest.Logf(o.Logf))
	if err != nil {
		return nil, err
	}
	nodeBins, err := kubetest.NodeBinaries(ctx, kubetest.Logf(o.Logf))
	if err != nil {
		return nil, err
	}
	p := prefix(o.Name)
	c = &Cluster{Name: o.Name, Dir: filepath.Join(baseDir, o.Name), Netns: "/run/netns/" + p, NodeName: p,
		NodeIP: hostIP.Next(), CgroupV2: filepath.Join(cgroupV2, p), ServiceCIDR: netip.MustParsePrefix(serviceCIDR),
		PodCIDR: netip.MustParsePrefix(podCIDR), Bins: nodeBins}
	c.BPFFS, c.RunDir = filepath.Join(c.Dir, "bpf"), filepath.Join(c.Dir, "run")
	c.containerd = containerdSocket(c.Dir)
	defer func() {
		if err != nil {
			if derr := Down(context.WithoutCancel(ctx), o.Name); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	for _, d := range []string{c.Dir, filepath.Join(c.Dir, "pids"), filepath.Join(c.Dir, "logs"), c.BPFFS, c.RunDir, filepath.Join(c.Dir, "cni")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	if err := c.network(ctx, hostIP); err != nil {
		return nil, err
	}
	// The agent pins in a bpffs of the cluster's own; HostToContainer propagation needs it shared.
	if err := unix.Mount("bpf", c.BPFFS, "bpf", 0, "mode=700"); err != nil {
		return nil, fmt.Errorf("localkube: mount a bpffs at %s: %w", c.BPFFS, err)
	}
	if err := unix.Mount("", c.BPFFS, "", unix.MS_SHARED, ""); err != nil {
		return nil, fmt.Errorf("localkube: make %s a shared mount: %w", c.BPFFS, err)
	}
	if err := c.cgroups(); err != nil {
		return nil, err
	}
	pki, err := kubetest.WritePKI(c.Dir, 30*24*time.Hour, net.IP(c.NodeIP.AsSlice()))
	if err != nil {
		return nil, err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := kubetest.WriteKubeconfig(c.Kubeconfig, prefix(c.Name), &rest.Config{Host: fmt.Sprintf("https://%s:%d", c.NodeIP, apiPort),
		TLSClientConfig: rest.TLSClientConfig{CAData: pki.CAPEM, CertData: pki.AdminCertPEM, KeyData: pki.AdminKeyPEM}}); err != nil {
		return nil, err
	}
	o.Logf("localkube %s: etcd and kube-apiserver at https://%s:%d", o.Name, c.NodeIP, apiPort)
	if err := c.startControlPlane(ctx, bins, pki); err != nil {
		return nil, err
	}
	o.Logf("localkube %s: containerd (CRI) with the pause image", o.Name)
	if err := c.startContainerd(ctx, o.Source); err != nil {
		return nil, err
	}
	o.Logf("localkube %s: kubelet, kube-controller-manager, kube-scheduler, kube-proxy", o.Name)
	if err := c.startNode(ctx, pki); err != nil {
		return nil, err
	}
	if err := c.waitNodeReady(ctx, 2*time.Minute); err != nil {
		return nil, err
	}
	o.Logf("localkube %s: node %s Ready after %s", o.Name, c.NodeName, time.Since(start).Round(time.Second))
	return c, nil
}

// network makes the node's namespace and the veth pair joining it to the host.
func (c *Cluster) network(ctx context.Context, hostIP netip.Addr) error {
	p := prefix(c.Name)
	bits := "/30"
	for _, argv := range [][]string{
		{"ip", "netns", "add", p},
		{"ip", "link", "add", p, "type", "veth", "peer", "name", "eth0", "netns", p},
		{"ip", "addr", "add", hostIP.String() + bits, "dev", p},
		{"ip", "link", "set", p, "up"},
		{"ip", "-n", p, "link", "set", "lo", "up"},
		{"ip", "-n", p, "addr", "add", c.NodeIP.String() + bits, "dev", "eth0"},
		{"ip", "-n", p, "link", "set", "eth0", "up"},
		{"ip", "-n", p, "route", "add", "default", "via", hostIP.String()},
	} {
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("localkube: %s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
		}
	}
	// Pods reach services and each other through the node's namespace: it forwards (the host's
	// own setting is not touched).
	if out, err := exec.CommandContext(ctx, "ip", "netns", "exec", p, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		return fmt.Errorf("localkube: ip_forward in %s: %w: %s", p, err, bytes.TrimSpace(out))
	}
	return nil
}

// defaultLink is a /30 in 10.250.0.0/16 picked by the cluster's name (FNV-1a).
func defaultLink(name string) netip.Prefix {
	h := fnv.New32a()
	h.Write([]byte(name))
	n := h.Sum32() % (1 << 14) // 16384 /30s
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(n >> 6), byte(n&63) << 2}), 30)
}

// linkInUse names the host interface holding an address of link, if any.
func linkInUse(link netip.Prefix) string {
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok && link.Contains(ip.Unmap()) {
					return ifc.Name
				}
			}
		}
	}
	return ""
}

// containerdSocket is the node containerd's socket, in the cluster's directory dir (its shims
// name it as their -address).
func containerdSocket(dir string) string { return filepath.Join(dir, "containerd", "containerd.sock") }

package netns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/onehop-mesh/onehop/bench/cpu"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/kubeproxy"
	"github.com/onehop-mesh/onehop/clusters/services"
)

// Cluster is a running netns lab. It holds the lab's lock until Close.
type Cluster struct {
	p    *Provider
	name string
	lock *os.File
	mu   sync.Mutex
	st   state
}

var (
	_ clusters.Cluster  = (*Cluster)(nil)
	_ clusters.NodeHost = (*Cluster)(nil)
)

func (c *Cluster) Name() string              { return c.name }
func (c *Cluster) Provider() string          { return ProviderName }
func (c *Cluster) Services() *services.Store { return c.st.Store }

// Spec returns the lab's spec with its current pods and services.
func (c *Cluster) Spec() clusters.Spec {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.st.Spec
	s.Pods = nil
	for _, p := range c.st.Pods {
		s.Pods = append(s.Pods, p.PodSpec)
	}
	return s
}

// Close releases the lab's lock; the lab keeps running.
func (c *Cluster) Close() error {
	if c.lock == nil {
		return nil
	}
	err := c.lock.Close()
	c.lock = nil
	return err
}

// Pods returns the lab's pods sorted by name.
func (c *Cluster) Pods() []clusters.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]clusters.Pod(nil), c.st.Pods...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Pod returns one pod.
func (c *Cluster) Pod(name string) (clusters.Pod, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.st.Pods {
		if p.Name == name {
			return p, true
		}
	}
	return clusters.Pod{}, false
}

func (c *Cluster) node(name string) (node, bool) {
	for _, n := range c.st.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return node{}, false
}

// up creates the underlay and every node that is not complete yet.
func (c *Cluster) up(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Join(c.p.labDir(c.name), "logs"), 0o755); err != nil {
		return err
	}
	if err := mountBPF(prefix(c.name), c.p.bpfDir(c.name)); err != nil { // named for `down` and mountinfo
		return err
	}
	ul := underlayNetns(c.name)
	if !netnsExists(ul) {
		c.p.progress("create underlay %s", ul)
		if err := ipBatch(ctx, "", "netns add "+ul); err != nil {
			return err
		}
		if err := ipBatch(ctx, ul, "link set lo up",
			fmt.Sprintf("link add %s mtu %d type bridge", underlayBridge, c.st.Spec.Network.MTU),
			"link set "+underlayBridge+" up"); err != nil {
			return fmt.Errorf("create underlay bridge in %s (does the kernel have CONFIG_BRIDGE?): %w", ul, err)
		}
	}
	for i := range c.st.Nodes {
		n := &c.st.Nodes[i]
		if n.Ready && netnsExists(n.Netns) {
			continue
		}
		c.p.progress("create node %s (%s)", n.Name, n.Netns)
		if err := c.createNode(ctx, *n); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		n.Ready = true
		if err := c.save(); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) createNode(ctx context.Context, n node) error {
	ul := underlayNetns(c.name)
	if netnsExists(n.Netns) { // left half-made by an interrupted up
		if err := ipBatch(ctx, "", "netns delete "+n.Netns); err != nil {
			return err
		}
	}
	mtu := c.st.Spec.Network.MTU
	ipBatch(ctx, ul, "link delete "+n.Name) // a stale underlay port from an interrupted up
	if err := ipBatch(ctx, "", "netns add "+n.Netns); err != nil {
		return err
	}
	lines := []string{
		"link set lo up",
		fmt.Sprintf("link add %s mtu %d type veth peer name %s netns %s", nodeUplink, mtu, n.Name, ul),
		"link set " + nodeUplink + " up",
		fmt.Sprintf("link add %s address %s mtu %d type bridge", podBridge, bridgeMAC(n.Index), mtu),
		"link set " + podBridge + " up",
	}
	fams := families(c.st.Spec)
	for fi, f := range fams {
		lines = append(lines,
			fmt.Sprintf("addr add %s/%d dev %s%s", n.Underlay[fi], f.underlayBits, nodeUplink, f.addrFlags),
			fmt.Sprintf("addr add %s/%d dev %s%s", n.gateway(fi), n.PodCIDRs[fi].Bits(), podBridge, f.addrFlags))
		for _, peer := range c.st.Nodes {
			if peer.Name != n.Name {
				lines = append(lines, fmt.Sprintf("route add %s via %s dev %s", peer.PodCIDRs[fi], peer.Underlay[fi], nodeUplink))
			}
		}
	}
	if err := ipBatch(ctx, n.Netns, lines...); err != nil {
		return err
	}
	if err := ipBatch(ctx, ul, fmt.Sprintf("link set %s master %s up", n.Name, underlayBridge)); err != nil {
		return err
	}
	// A node routes pod traffic, and (as kube-proxy requires) bridged pod traffic goes through
	// iptables so that service NAT also applies between pods on the same bridge.
	kv := []string{"net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1", "net.ipv4.conf.all.rp_filter=0"}
	if c.st.Spec.HasFamily("ipv6") {
		kv = append(kv, "net.ipv6.conf.all.forwarding=1", "net.bridge.bridge-nf-call-ip6tables=1")
	}
	if err := sysctl(ctx, n.Netns, kv...); err != nil {
		return fmt.Errorf("%w (bridge-nf-call-iptables needs CONFIG_BRIDGE_NETFILTER)", err)
	}
	return os.MkdirAll(filepath.Join(c.p.CgroupRoot, prefix(c.name), n.Name), 0o755)
}

// CreatePod creates a pod (idempotent: an existing complete pod with the same spec is kept) and
// starts its workload.
func (c *Cluster) CreatePod(ctx context.Context, ps clusters.PodSpec) (clusters.Pod, error) {
	spec, err := c.checked(clusters.Spec{Pods: []clusters.PodSpec{ps}})
	if err != nil {
		return clusters.Pod{}, fmt.Errorf("pod %s: %w", ps.Name, err)
	}
	ps = spec.Pods[0]
	if old, ok := c.Pod(ps.Name); ok {
		if equalPodSpec(old.PodSpec, ps) && netnsExists(old.Netns) && c.st.Store.HasPod(ps.Name) {
			return old, nil
		}
		if err := c.DeletePod(ctx, ps.Name); err != nil {
			return clusters.Pod{}, err
		}
	}
	n, _ := c.node(ps.Node)
	pod := clusters.Pod{PodSpec: ps, Netns: podNetns(c.name, ps.Name), Cgroup: podCgroup(c.p.CgroupRoot, c.name, n.Name, ps.Name)}
	ord := c.freeOrdinal(n.Name)
	for fi := range families(c.st.Spec) {
		pod.IPs = append(pod.IPs, host(n.PodCIDRs[fi], ord))
	}
	c.p.progress("create pod %s on %s (%v)", ps.Name, n.Name, pod.IPs)
	c.mu.Lock()
	c.st.Pods = append(c.st.Pods, pod)
	c.mu.Unlock()
	if err := c.save(); err != nil { // recorded first, so down and a retried up know about it
		return pod, err
	}
	if err := c.createPodNet(ctx, n, pod); err != nil {
		return pod, fmt.Errorf("pod %s: %w", ps.Name, err)
	}
	if err := os.MkdirAll(pod.Cgroup, 0o755); err != nil {
		return pod, fmt.Errorf("pod %s: create cgroup: %w", ps.Name, err)
	}
	if ps.Workload != nil {
		if err := c.startWorkload(ctx, pod); err != nil {
			return pod, err
		}
	}
	c.st.Store.UpsertPod(services.Pod{Namespace: ps.Namespace, Name: ps.Name, Node: ps.Node, IPs: pod.IPs, Labels: ps.Labels, Ready: true})
	if err := c.syncServices(ctx); err != nil {
		return pod, err
	}
	return pod, c.save()
}

// checked defaults and validates pods or services added to the running lab, against its nodes,
// families and namespaces, with the same rules as a spec file.
func (c *Cluster) checked(add clusters.Spec) (clusters.Spec, error) {
	add.Name, add.Nodes, add.IPFamilies = c.name, c.st.Spec.Nodes, c.st.Spec.IPFamilies
	add.Network, add.Namespaces = c.st.Spec.Network, c.st.Spec.Namespaces
	add.SetDefaults()
	return add, add.Validate()
}

func equalPodSpec(a, b clusters.PodSpec) bool { return reflect.DeepEqual(a, b) }

// freeOrdinal returns the lowest host number (from 2; 1 is the gateway) unused on the node.
func (c *Cluster) freeOrdinal(nodeName string) int {
	n, _ := c.node(nodeName)
	used := map[netip.Addr]bool{}
	for _, p := range c.st.Pods {
		for _, ip := range p.IPs {
			used[ip] = true
		}
	}
	for ord := 2; ; ord++ {
		if !used[host(n.PodCIDRs[0], ord)] {
			return ord
		}
	}
}

// podMAC is 0a:58 (a locally administered prefix) followed by the last four bytes of ip.
func podMAC(ip netip.Addr) string {
	b := ip.As16()
	return fmt.Sprintf("0a:58:%02x:%02x:%02x:%02x", b[12], b[13], b[14], b[15])
}

func (c *Cluster) createPodNet(ctx context.Context, n node, pod clusters.Pod) error {
	if netnsExists(pod.Netns) {
		if err := ipBatch(ctx, "", "netns delete "+pod.Netns); err != nil {
			return err
		}
	}
	veth, mtu := hostVeth(pod.Name), c.st.Spec.Network.MTU
	ipBatch(ctx, n.Netns, "link delete "+veth) // stale end from an interrupted create
	if err := ipBatch(ctx, "", "netns add "+pod.Netns); err != nil {
		return err
	}
	if err := ipBatch(ctx, n.Netns,
		fmt.Sprintf("link add %s mtu %d type veth peer name %s netns %s", veth, mtu, podIface, pod.Netns),
		fmt.Sprintf("link set %s master %s up", veth, podBridge),
		// Hairpin lets a pod reach itself through its own service VIP.
		fmt.Sprintf("link set %s type bridge_slave hairpin on", veth)); err != nil {
		return err
	}
	// The MAC follows from the pod's IP (as the CNI bridge plugin does): a pod that reuses a
	// deleted pod's IP gets its MAC too, so neighbours' cached entries stay right. With random
	// MACs a peer that never ARPs for the new pod (a server answering DNATed traffic) keeps
	// sending to the old MAC until its entry goes stale, some 5–10 s.
	lines := []string{"link set lo up", fmt.Sprintf("link set %s address %s", podIface, podMAC(pod.IPs[0])), "link set " + podIface + " up"}
	for fi, f := range families(c.st.Spec) {
		lines = append(lines,
			fmt.Sprintf("addr add %s/%d dev %s%s", pod.IPs[fi], n.PodCIDRs[fi].Bits(), podIface, f.addrFlags),
			fmt.Sprintf("route add %s via %s dev %s", f.defaultRoute, n.gateway(fi), podIface))
	}
	if err := ipBatch(ctx, pod.Netns, lines...); err != nil {
		return err
	}
	// A new-connection-per-request run at 1000 QPS leaves ~60,000 sockets a minute in TIME_WAIT;
	// the default range (28k ports) and no reuse would run a client out of ports.
	return sysctl(ctx, pod.Netns, "net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1")
}

// DeletePod stops the pod's processes and removes its namespace and cgroup.
func (c *Cluster) DeletePod(ctx context.Context, name string) error {
	pod, ok := c.Pod(name)
	if !ok {
		return nil
	}
	c.st.Store.DeletePod(name)
	if err := c.syncServices(ctx); err != nil {
		return err
	}
	for _, cg := range append([]string{pod.Cgroup}, containerCgroups(pod.Cgroup)...) {
		if err := killCgroup(cg); err != nil {
			return err
		}
		if err := removeCgroupTree(cg); err != nil {
			return err
		}
	}
	if netnsExists(pod.Netns) {
		if err := ipBatch(ctx, "", "netns delete "+pod.Netns); err != nil {
			return err
		}
	}
	c.mu.Lock()
	for i, p := range c.st.Pods {
		if p.Name == name {
			c.st.Pods = append(c.st.Pods[:i], c.st.Pods[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	return c.save()
}

// UpsertService adds or updates a ClusterIP service and programs it on every node.
func (c *Cluster) UpsertService(ctx context.Context, sd clusters.ServiceDef) (services.Service, error) {
	svc, err := c.storeService(sd)
	if err != nil {
		return svc, err
	}
	if err := c.syncServices(ctx); err != nil {
		return svc, err
	}
	return svc, c.save()
}

// DeleteService removes a service and its rules on every node.
func (c *Cluster) DeleteService(ctx context.Context, namespace, name string) error {
	c.st.Store.DeleteService(namespace, name)
	if err := c.syncServices(ctx); err != nil {
		return err
	}
	return c.save()
}

// storeService checks a service and puts it in the store, programming nothing.
func (c *Cluster) storeService(sd clusters.ServiceDef) (services.Service, error) {
	spec, err := c.checked(clusters.Spec{Services: []clusters.ServiceDef{sd}})
	if err != nil {
		return services.Service{}, fmt.Errorf("service %s: %w", sd.Name, err)
	}
	sd = spec.Services[0]
	svc := services.Service{Namespace: sd.Namespace, Name: sd.Name, Selector: sd.Selector}
	for _, p := range sd.Ports {
		svc.Ports = append(svc.Ports, services.Port{Name: p.Name, Port: uint16(p.Port), TargetPort: uint16(p.TargetPort), Protocol: services.Protocol(p.Protocol)})
	}
	return c.st.Store.UpsertService(svc)
}

// syncServices programs the kube-proxy-style rules of every family on every node.
func (c *Cluster) syncServices(ctx context.Context) error {
	snap := c.st.Store.Snapshot()
	for _, n := range c.st.Nodes {
		if err := c.syncNode(ctx, n.Name, snap); err != nil {
			return err
		}
	}
	return nil
}

// ResyncServices rewrites one node's service rules from the store (a kube-proxy restart).
func (c *Cluster) ResyncServices(ctx context.Context, node string) error {
	if _, ok := c.node(node); !ok {
		return fmt.Errorf("no node %q in lab %s", node, c.name)
	}
	return c.syncNode(ctx, node, c.st.Store.Snapshot())
}

func (c *Cluster) syncNode(ctx context.Context, node string, snap services.Snapshot) error {
	runner := func(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
		return c.RunOnNode(ctx, node, stdin, argv...)
	}
	for _, f := range c.st.Spec.IPFamilies {
		if err := kubeproxy.Sync(ctx, runner, kubeproxy.Family(f), snap); err != nil {
			return fmt.Errorf("program services on node %s: %w", node, err)
		}
	}
	return nil
}

// RunOnNode runs a command in a node's network namespace and waits for it.
func (c *Cluster) RunOnNode(ctx context.Context, nodeName string, stdin []byte, argv ...string) ([]byte, error) {
	n, ok := c.node(nodeName)
	if !ok {
		return nil, fmt.Errorf("no node %q in lab %s", nodeName, c.name)
	}
	return run(ctx, stdin, append(enter(n.Netns), argv...)...)
}

// Start runs a process inside a pod: in its network namespace and, from the first instruction,
// in its cgroup (clone3 with CLONE_INTO_CGROUP), so its CPU time is the pod's; with a Container,
// in that container's cgroup beside the pod's instead.
func (c *Cluster) Start(ctx context.Context, podName string, cmd clusters.Command) (*clusters.Process, error) {
	pod, ok := c.Pod(podName)
	if !ok {
		return nil, fmt.Errorf("no pod %q in lab %s", podName, c.name)
	}
	cg := pod.Cgroup
	if cmd.Container != "" {
		if !containerName.MatchString(cmd.Container) {
			return nil, fmt.Errorf("start %s in %s: container name %q is not a DNS label", cmd.Name, podName, cmd.Container)
		}
		cg = containerCgroup(pod.Cgroup, cmd.Container)
		if err := os.MkdirAll(cg, 0o755); err != nil {
			return nil, fmt.Errorf("start %s in %s: %w", cmd.Name, podName, err)
		}
	}
	return c.start(ctx, pod.Netns, cg, podName, cmd)
}

var containerName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// containerCgroup is the cgroup of a pod's container: beside the pod's, in the node's cgroup
// (so `down` removes it with the node), named "pod-<pod>.<container>" (pod names have no dots).
func containerCgroup(podCgroup, container string) string { return podCgroup + "." + container }

// containerCgroups lists the container cgroups of a pod.
func containerCgroups(podCgroup string) []string {
	dirs, _ := filepath.Glob(containerCgroup(podCgroup, "*"))
	return dirs
}

// StartOnNode runs a node component (like a DaemonSet pod with hostNetwork) in the node's
// network namespace and its own cgroup under the node.
func (c *Cluster) StartOnNode(ctx context.Context, nodeName string, cmd clusters.Command) (*clusters.Process, error) {
	n, ok := c.node(nodeName)
	if !ok {
		return nil, fmt.Errorf("no node %q in lab %s", nodeName, c.name)
	}
	cg := daemonCgroup(c.p.CgroupRoot, c.name, n.Name, cmd.Name)
	if err := os.MkdirAll(cg, 0o755); err != nil {
		return nil, err
	}
	return c.start(ctx, n.Netns, cg, nodeName, cmd)
}

func (c *Cluster) start(ctx context.Context, netnsName, cgroup, owner string, cmd clusters.Command) (*clusters.Process, error) {
	if len(cmd.Argv) == 0 {
		return nil, fmt.Errorf("start in %s: empty command", owner)
	}
	cgfd, err := os.Open(cgroup)
	if err != nil {
		return nil, fmt.Errorf("start %s in %s: open cgroup: %w", cmd.Name, owner, err)
	}
	defer cgfd.Close()
	logPath := filepath.Join(c.p.labDir(c.name), "logs", owner+"."+cmd.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	argv := enter(netnsName)
	if cmd.UID != 0 { // nsenter enters the namespace as root, then drops to the uid
		id := strconv.Itoa(cmd.UID)
		argv = append(argv[:len(argv)-1], "--setuid", id, "--setgid", id, "--")
	}
	argv = append(argv, cmd.Argv...)
	var ex *exec.Cmd
	if cmd.Detach {
		ex = exec.Command(argv[0], argv[1:]...)
	} else {
		ex = exec.CommandContext(ctx, argv[0], argv[1:]...)
		ex.Cancel = func() error { return ex.Process.Signal(syscall.SIGTERM) }
		ex.WaitDelay = 5 * time.Second
	}
	ex.Stdout, ex.Stderr = logf, logf
	if cmd.Stdout != nil {
		ex.Stdout = cmd.Stdout
	}
	ex.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cgfd.Fd()), Setsid: cmd.Detach}
	if err := ex.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", cmd.Name, owner, err)
	}
	proc := &clusters.Process{Cmd: ex, LogPath: logPath}
	if cmd.Detach {
		proc.Exited = make(chan struct{})
		go func() { // reap it if it exits while we run
			ex.Wait()
			close(proc.Exited)
		}()
	}
	return proc, nil
}

// startWorkload starts a pod's long-running workload and waits until it accepts connections.
func (c *Cluster) startWorkload(ctx context.Context, pod clusters.Pod) error {
	w := pod.Workload
	argv := []string{c.p.Binary, "workload", w.Kind, "--port", strconv.Itoa(w.Port)}
	proc, err := c.Start(ctx, pod.Name, clusters.Command{Name: w.Kind, Argv: argv, Detach: true})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := c.Dial(ctx, pod.Name, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(w.Port)))
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("pod %s: workload %s did not listen on port %d within 15s: %v; log %s:\n%s", pod.Name, w.Kind, w.Port, err, proc.LogPath, proc.LogTail(2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Dial opens a socket from inside a pod's network namespace (address must be a literal IP).
func (c *Cluster) Dial(ctx context.Context, podName, network, address string) (net.Conn, error) {
	pod, ok := c.Pod(podName)
	if !ok {
		return nil, fmt.Errorf("no pod %q in lab %s", podName, c.name)
	}
	var conn net.Conn
	err := inNetns(pod.Netns, func() (err error) {
		conn, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// Listen opens a listening socket inside a pod's network namespace.
func (c *Cluster) Listen(podName, network, address string) (net.Listener, error) {
	pod, ok := c.Pod(podName)
	if !ok {
		return nil, fmt.Errorf("no pod %q in lab %s", podName, c.name)
	}
	var l net.Listener
	err := inNetns(pod.Netns, func() (err error) {
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// ListenOnNode opens a listening socket in a node's network namespace; the caller's goroutines
// serve it, as a hostNetwork pod on that node would.
func (c *Cluster) ListenOnNode(nodeName, network, address string) (net.Listener, error) {
	n, ok := c.node(nodeName)
	if !ok {
		return nil, fmt.Errorf("no node %q in lab %s", nodeName, c.name)
	}
	var l net.Listener
	err := inNetns(n.Netns, func() (err error) {
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// NodeAddresses returns the node's underlay addresses, primary family first.
func (c *Cluster) NodeAddresses(nodeName string) []netip.Addr {
	n, _ := c.node(nodeName)
	return n.Underlay
}

// NodeCgroup is the cgroup directory above every pod and daemon of the node.
func (c *Cluster) NodeCgroup(nodeName string) string {
	return filepath.Join(c.p.CgroupRoot, prefix(c.name), nodeName)
}

// NodeBPFDir is the node's directory in the lab's bpffs; down unmounts it with the rest of the
// lab.
func (c *Cluster) NodeBPFDir(nodeName string) string {
	return filepath.Join(c.p.bpfDir(c.name), nodeName)
}

// RuntimeDir holds the lab daemons' sockets and files; down removes it.
func (c *Cluster) RuntimeDir() string { return c.p.labDir(c.name) }

// NodeNetnsPath returns a node's network namespace path.
func (c *Cluster) NodeNetnsPath(nodeName string) string {
	return netnsPath(nodeNetns(c.name, nodeName))
}

// NetnsPath returns a pod's network namespace path.
func (c *Cluster) NetnsPath(podName string) string { return netnsPath(podNetns(c.name, podName)) }

// CPUTargets lists every pod and node component cgroup of the lab.
func (c *Cluster) CPUTargets() []cpu.Target {
	var out []cpu.Target
	for _, p := range c.Pods() {
		out = append(out, cpu.Target{Name: p.Name, Component: p.Component, Node: p.Node, Path: p.Cgroup})
		for _, d := range containerCgroups(p.Cgroup) {
			container := strings.TrimPrefix(d, p.Cgroup+".")
			out = append(out, cpu.Target{Name: p.Name + "/" + container, Component: container, Node: p.Node, Path: d})
		}
	}
	for _, n := range c.st.Nodes {
		dirs, _ := filepath.Glob(daemonCgroup(c.p.CgroupRoot, c.name, n.Name, "*"))
		for _, d := range dirs {
			name := filepath.Base(d)[len("daemon-"):]
			out = append(out, cpu.Target{Name: n.Name + "/" + name, Component: name, Node: n.Name, Path: d})
		}
	}
	return out
}

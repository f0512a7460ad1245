package variants

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/controlplane"
	"github.com/onehop-mesh/onehop/dataplane/agent"
	"github.com/onehop-mesh/onehop/dataplane/telemetry"
	"github.com/onehop-mesh/onehop/deploy/image"
)

// DataplaneModeLabel is the namespace label that enrolls pods, as in Istio ambient and Kmesh.
const DataplaneModeLabel = "istio.io/dataplane-mode"

// TelemetryLabel on an enrolled namespace says how its pods' connections are reported: "off",
// "on" (metrics) or "access-log" (metrics and an access log line per event). Without it, the
// agent's default: metrics on.
const TelemetryLabel = "onehop.io/telemetry"

// SockmapLabel on a namespace accelerates its pods' same-node connections with sockmap: "on"
// for onehop's pods, "sidecar" for the pods of a sidecar namespace, which onehop's agents then
// enroll for acceleration only (their proxies balance).
const SockmapLabel = "onehop.io/sockmap"

// xdsPort is where the lab's control plane listens on the first node (istiod's plaintext port).
const xdsPort = 15010

// Onehop runs onehop-agent on every node (in the node's network namespace, like a hostNetwork
// DaemonSet) fed by the lab's xDS control plane, and enrolls the pods of its namespace: their
// connections to service VIPs are balanced in the kernel at connect() time, one hop, no proxy.
type Onehop struct {
	// AgentBinary is the onehop-agent executable (default: beside this executable, or
	// $ONEHOP_AGENT_BIN).
	AgentBinary string
	// XDSMode is how the agents take their config from the lab's control plane: "envoy"
	// (Envoy xDS, as istiod serves a sidecar) or "workload" (Istio's ambient workload API, as
	// istiod serves ztunnel). Default: $ONEHOP_LAB_XDS_MODE, else envoy.
	XDSMode string
	// AgentArgs are extra flags for every agent (tests: a shorter telemetry period).
	AgentArgs []string
	// Instance, when set, makes this a second onehop deployment beside the default one, for
	// comparing two builds of the agent in one lab (`onehop gate`): variant "onehop-<Instance>",
	// with agents, control plane, ports, sockets and bpffs pins of its own. Its programs attach
	// to the same node cgroups and act only on the pods enrolled with its agents.
	Instance string
	// PortOffset moves the instance's xDS and metrics ports off the default deployment's.
	PortOffset int
	// Runtime, when set, runs each node's agent as a container of the agent image
	// (deploy/image) instead of a process of AgentBinary, as a hostNetwork DaemonSet pod would:
	// the same command line, in the node's network namespace, with the node's cgroup, the lab's
	// runtime directory (sockets, bpffs pins) and /run/netns mounted at their own paths.
	Runtime ContainerRuntime

	mu     sync.Mutex
	cancel context.CancelFunc
	cpDone chan error
	agents map[string]*clusters.Process
	argv   map[string][]string // each node's agent command line, to restart it
	users  int                 // installed variants sharing these agents (onehop, onehop-waypoint)
}

// onehop's deployment on a netns cluster is that cluster's agents (agentsOf), which its
// telemetry variants and onehop-waypoint share.
func init() { RegisterNetns(func(c clusters.Cluster) NetnsVariant { return agentsOf(c) }) }

func (o *Onehop) Name() string {
	if o.Instance != "" {
		return "onehop-" + o.Instance
	}
	return "onehop"
}
func (o *Onehop) Describe() string {
	build := ""
	if o.Instance != "" {
		build = " (" + o.Instance + " build)"
	}
	return "onehop-agent" + build + ": eBPF cgroup/connect4+6 service load balancing programmed over xDS (" + o.xdsMode() + " mode), no proxy (plaintext)"
}
func (o *Onehop) Labels() map[string]string { return map[string]string{DataplaneModeLabel: o.Name()} }

// AgentSocket is the unix socket of a node's agent admin API.
func AgentSocket(h clusters.NodeHost, node string) string {
	return filepath.Join(h.RuntimeDir(), "agent-"+node+".sock")
}

// agentMetricsPort is where the lab's agents serve /metrics, in their node's namespace.
const agentMetricsPort = 15020

// The default deployment's names and ports, or the instance's own.
func (o *Onehop) socket(h clusters.NodeHost, node string) string {
	if o.Instance == "" {
		return AgentSocket(h, node)
	}
	return filepath.Join(h.RuntimeDir(), "agent-"+o.Instance+"-"+node+".sock")
}

func (o *Onehop) accessLog(h clusters.NodeHost, node string) string {
	if o.Instance == "" {
		return AgentAccessLog(h, node)
	}
	return filepath.Join(h.RuntimeDir(), "agent-"+o.Instance+"-"+node+"-access.log")
}

func (o *Onehop) bpfDir(h clusters.NodeHost, node string) string {
	if o.Instance == "" {
		return h.NodeBPFDir(node)
	}
	return filepath.Join(h.NodeBPFDir(node), o.Instance)
}

func (o *Onehop) metricsPort() int { return agentMetricsPort + o.PortOffset }

// MetricsTargets are the agents' /metrics addresses, one per node.
func (o *Onehop) MetricsTargets(c clusters.Cluster) []string {
	h, ok := c.(clusters.NodeHost)
	if !ok {
		return nil
	}
	var out []string
	for _, node := range c.Spec().NodeNames() {
		if ips := h.NodeAddresses(node); len(ips) > 0 {
			out = append(out, netip.AddrPortFrom(ips[0], uint16(o.metricsPort())).String())
		}
	}
	return out
}

// TelemetryOn: onehop's pods take the agents' default, telemetry on.
func (o *Onehop) TelemetryOn() bool { return true }

// AgentAccessLog is where a node's agent writes the access log of the pods enrolled with one.
func AgentAccessLog(h clusters.NodeHost, node string) string {
	return filepath.Join(h.RuntimeDir(), "agent-"+node+"-access.log")
}

func (o *Onehop) xdsMode() string {
	if o.XDSMode != "" {
		return o.XDSMode
	}
	if m := os.Getenv("ONEHOP_LAB_XDS_MODE"); m != "" {
		return m
	}
	return "envoy"
}

func (o *Onehop) agentBinary() (string, error) {
	if o.Runtime != nil {
		return image.Entrypoint, nil
	}
	if o.AgentBinary != "" {
		return o.AgentBinary, nil
	}
	if p := os.Getenv("ONEHOP_AGENT_BIN"); p != "" {
		return p, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(self), "onehop-agent")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("onehop-agent not found beside %s: run `make build` or set ONEHOP_AGENT_BIN", self)
	}
	return p, nil
}

// Install starts the control plane and the agents, waits until every agent has programmed its
// first config, and enrolls the variant's pods.
func (o *Onehop) Install(ctx context.Context, c clusters.Cluster) (err error) {
	h, ok := c.(clusters.NodeHost)
	if !ok {
		return fmt.Errorf("onehop: the %s provider does not run its own nodes; deploy the agent DaemonSet from dataplane/deploy instead", c.Provider())
	}
	if _, ok := h.(nodeNetns); o.Runtime != nil && !ok {
		return fmt.Errorf("onehop: the %s provider does not say where its nodes' network namespaces are: cannot run agents in containers", c.Provider())
	}
	bin, err := o.agentBinary()
	if err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.users > 0 { // another variant started the agents: one agent per node serves both
		if err := o.enrollPods(ctx, c, h, true); err != nil {
			return err
		}
		o.users++
		return nil
	}
	defer func() {
		if err != nil {
			o.stop()
		} else {
			o.users++
		}
	}()
	cpAddr, err := o.startControlPlane(c, h)
	if err != nil {
		return err
	}
	nodes := c.Spec().NodeNames()

	o.agents, o.argv = map[string]*clusters.Process{}, map[string][]string{}
	for _, node := range nodes {
		sock := o.socket(h, node)
		os.Remove(sock)
		o.argv[node] = []string{bin, "--node-id", node, "--xds-address", cpAddr, "--cgroup", h.NodeCgroup(node),
			"--bpffs", o.bpfDir(h, node), "--admin-socket", sock, "--metrics-address", fmt.Sprintf(":%d", o.metricsPort()),
			"--access-log", o.accessLog(h, node)}
		if ips := h.NodeAddresses(node); len(ips) > 0 {
			o.argv[node] = append(o.argv[node], "--node-ip", ips[0].String())
		}
		o.argv[node] = append(append(o.argv[node], "--xds-mode", o.xdsMode()), o.AgentArgs...)
		if o.Runtime != nil {
			o.Runtime.Remove(ctx, o.containerID(node)) // one left by a killed run would hold the name
		}
		p, err := o.startAgent(ctx, h, node)
		if err != nil {
			return fmt.Errorf("onehop: start agent on %s: %w", node, err)
		}
		o.agents[node] = p
	}
	for node, p := range o.agents {
		if err := waitReady(ctx, o.socket(h, node), p); err != nil {
			return fmt.Errorf("onehop: agent on node %s: %w", node, err)
		}
	}
	return o.enrollPods(ctx, c, h, true)
}

// startControlPlane serves the lab's xDS from a socket in the first node's namespace, so every
// node's agent reaches it over the underlay, as it would reach istiod.
func (o *Onehop) startControlPlane(c clusters.Cluster, h clusters.NodeHost) (string, error) {
	first := c.Spec().NodeNames()[0]
	addr := netip.AddrPortFrom(h.NodeAddresses(first)[0], uint16(xdsPort+o.PortOffset)).String()
	l, err := h.ListenOnNode(first, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("onehop: control plane listener on %s: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	o.cancel, o.cpDone = cancel, make(chan error, 1)
	cp := controlplane.New(c.Services(), controlplane.Options{Log: slog.Default().With("component", "controlplane")})
	go func() { o.cpDone <- cp.Serve(ctx, l) }()
	return addr, nil
}

// stopControlPlane stops serving xDS; the agents keep what they programmed.
func (o *Onehop) stopControlPlane() {
	if o.cancel != nil {
		o.cancel()
		<-o.cpDone
		o.cancel = nil
	}
}

// enrollPods enrolls (or unenrolls) every pod of the namespaces labelled for onehop.
func (o *Onehop) enrollPods(ctx context.Context, c clusters.Cluster, h clusters.NodeHost, on bool) error {
	var errs []error
	for _, pod := range c.Pods() {
		if req, ok := o.enrollRequest(c, h, pod); ok {
			errs = append(errs, Enroll(ctx, o.socket(h, pod.Node), req, on))
		}
	}
	return errors.Join(errs...)
}

// enrollRequest is how a pod is enrolled: its netns, its namespace's telemetry label, and who it
// is for metric labels (a lab pod is a bare pod: its own workload, named after it; canonical
// names from its app and version labels, as Istio takes them). ok is false if its namespace is
// not labelled for this deployment.
func (o *Onehop) enrollRequest(c clusters.Cluster, h clusters.NodeHost, pod clusters.Pod) (agent.EnrollRequest, bool) {
	var labels map[string]string
	for _, ns := range c.Spec().Namespaces {
		if ns.Name == pod.Namespace {
			labels = ns.Labels
		}
	}
	sidecar := o.Instance == "" && labels[SockmapLabel] == "sidecar"
	if labels[DataplaneModeLabel] != o.Name() && !sidecar {
		return agent.EnrollRequest{}, false
	}
	req := agent.EnrollRequest{Netns: h.NetnsPath(pod.Name), Pod: &telemetry.Workload{
		Name: pod.Name, Namespace: pod.Namespace, App: pod.Labels["app"], Version: pod.Labels["version"],
		CanonicalService: cmp.Or(pod.Labels["app"], pod.Name), CanonicalRevision: cmp.Or(pod.Labels["version"], "latest"),
		Cluster: controlplane.ClusterID}, PodIPs: pod.IPs}
	yes, no := true, false
	req.Sockmap = &no
	if labels[SockmapLabel] != "" {
		req.Sockmap = &yes
	}
	if sidecar { // its proxy reports (and balances): onehop only accelerates
		req.Sidecar, req.Telemetry, req.AccessLog = true, &no, &no
		return req, true
	}
	switch labels[TelemetryLabel] {
	case "off":
		req.Telemetry, req.AccessLog = &no, &no
	case "access-log":
		req.Telemetry, req.AccessLog = &yes, &yes
	default: // "on", or the agent's default; the lab's agents write an access log for those who ask
		req.AccessLog = &no
	}
	return req, true
}

// Uninstall stops the agents and the control plane, then removes what the agents pinned: a
// stopped agent leaves its programs attached and serving (that is what makes a restart
// seamless), so taking onehop out of a node is an explicit `onehop-agent --uninstall`.
func (o *Onehop) Uninstall(ctx context.Context, c clusters.Cluster) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.users--; o.users > 0 {
		return nil // still serving another variant
	}
	o.users = 0
	err := o.stop()
	if h, ok := c.(clusters.NodeHost); ok {
		for node, argv := range o.argv {
			uargv, id := []string{argv[0], "--uninstall", "--bpffs", o.bpfDir(h, node), "--cgroup", h.NodeCgroup(node)}, ""
			if o.Runtime != nil { // the image uninstalls, as a chart's pre-delete hook would
				id = o.containerID(node) + "-uninstall"
				uargv = o.Runtime.RunArgv(o.container(h, node, id, uargv))
			}
			if out, uerr := h.RunOnNode(ctx, node, nil, uargv...); uerr != nil {
				err = errors.Join(err, fmt.Errorf("onehop: uninstall on %s: %w: %s", node, uerr, out))
			}
			if id != "" {
				err = errors.Join(err, o.Runtime.Remove(ctx, id))
			}
		}
	}
	o.argv = nil
	return err
}

func (o *Onehop) stop() error {
	var errs []error
	for node, p := range o.agents {
		// A container's ctr forwards the SIGTERM to the agent; if it has to be killed, the
		// container is left, and Remove kills it.
		if err := p.Stop(10 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("agent on %s: %w", node, err))
		}
		if o.Runtime != nil {
			if err := o.Runtime.Remove(context.Background(), o.containerID(node)); err != nil {
				errs = append(errs, fmt.Errorf("agent container on %s: %w", node, err))
			}
		}
	}
	o.agents = nil
	o.stopControlPlane()
	return errors.Join(errs...)
}

// AddPod enrolls a new pod of an enrolled namespace with its node's agent.
func (o *Onehop) AddPod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error {
	return o.podEnrollment(ctx, c, pod, true)
}

// RemovePod unenrolls a pod before it goes.
func (o *Onehop) RemovePod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error {
	return o.podEnrollment(ctx, c, pod, false)
}

func (o *Onehop) podEnrollment(ctx context.Context, c clusters.Cluster, pod clusters.Pod, on bool) error {
	h, ok := c.(clusters.NodeHost)
	if !ok {
		return fmt.Errorf("onehop: the %s provider does not run its own nodes", c.Provider())
	}
	req, ok := o.enrollRequest(c, h, pod)
	if !ok {
		return fmt.Errorf("onehop: pod %s/%s: its namespace is not labelled %s=%s", pod.Namespace, pod.Name, DataplaneModeLabel, o.Name())
	}
	return Enroll(ctx, o.socket(h, pod.Node), req, on)
}

// Enroll asks a node's agent to serve (or stop serving) the pod of req.Netns.
func Enroll(ctx context.Context, sock string, req agent.EnrollRequest, on bool) error {
	netns := req.Netns
	body, _ := json.Marshal(req)
	method := http.MethodPost
	if !on {
		method = http.MethodDelete
	}
	hreq, _ := http.NewRequestWithContext(ctx, method, "http://agent/enroll", bytes.NewReader(body))
	resp, err := agent.Client(sock).Do(hreq)
	if err != nil {
		return fmt.Errorf("enroll %s via %s: %w", netns, sock, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("enroll %s: %s: %s", netns, resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// Restart stops the node's agent with sig and starts a new one with the same command line, as a
// DaemonSet rollout or a crash-and-restart would. The pinned programs and maps keep serving
// connections meanwhile; the new agent adopts them.
func (o *Onehop) Restart(ctx context.Context, c clusters.Cluster, node string, sig syscall.Signal) (RestartEvent, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	h, _ := c.(clusters.NodeHost)
	old, ok := o.agents[node]
	if !ok || h == nil {
		return RestartEvent{}, fmt.Errorf("onehop: no agent runs on node %q", node)
	}
	ev := RestartEvent{Node: node, Signal: unix.SignalName(sig), StoppedAt: time.Now()}
	if o.Runtime != nil { // the container's process gets the signal, as from a kubelet
		o.Runtime.Kill(ctx, o.containerID(node), sig)
	} else {
		old.Process.Signal(sig)
	}
	select {
	case <-old.Exited:
	case <-time.After(10 * time.Second):
		old.Process.Kill()
		<-old.Exited
		if o.Runtime != nil {
			o.Runtime.Remove(ctx, o.containerID(node))
		}
		return ev, fmt.Errorf("onehop: agent on %s did not exit within 10s of %s; log %s:\n%s", node, ev.Signal, old.LogPath, old.LogTail(2000))
	}
	p, err := o.startAgent(ctx, h, node)
	if err != nil {
		delete(o.agents, node)
		return ev, fmt.Errorf("onehop: restart agent on %s: %w", node, err)
	}
	o.agents[node] = p
	if err := waitReady(ctx, o.socket(h, node), p); err != nil {
		return ev, fmt.Errorf("onehop: restarted agent on %s: %w", node, err)
	}
	ev.ReadyAt = time.Now()
	ev.ReadyMS = float64(ev.ReadyAt.Sub(ev.StoppedAt).Microseconds()) / 1000
	ev.Daemon = fmt.Sprintf("onehop-agent (pid %d -> %d)", old.Process.Pid, p.Process.Pid)
	if o.Runtime != nil {
		ev.Daemon = fmt.Sprintf("onehop-agent container %s (ctr pid %d -> %d)", o.containerID(node), old.Process.Pid, p.Process.Pid)
	}
	return ev, nil
}

// ContainerRuntime runs node agents as containers (deploy/image.Containerd: a containerd of the
// lab's own with Debian's runc).
type ContainerRuntime interface {
	// RunArgv is the command that runs a container in the foreground: it forwards signals to
	// the container's process, exits with it and removes the container.
	RunArgv(image.Container) []string
	// Kill sends sig to a container's process.
	Kill(ctx context.Context, id string, sig syscall.Signal) error
	// Remove kills and deletes a container, if there is one.
	Remove(ctx context.Context, id string) error
}

// nodeNetns is a NodeHost that says where a node's network namespace is (the netns lab).
type nodeNetns interface{ NodeNetnsPath(node string) string }

// startAgent starts the node's agent with its command line: a process, or a container whose
// ctr client is the process the lab watches (it exits when the agent does).
func (o *Onehop) startAgent(ctx context.Context, h clusters.NodeHost, node string) (*clusters.Process, error) {
	argv := o.argv[node]
	if o.Runtime != nil {
		argv = o.Runtime.RunArgv(o.container(h, node, o.containerID(node), argv))
	}
	return h.StartOnNode(ctx, node, clusters.Command{Name: "onehop-agent", Argv: argv, Detach: true})
}

func (o *Onehop) containerID(node string) string { return o.Name() + "-agent-" + node }

// container is the agent's container on node: what a DaemonSet pod with hostNetwork and
// hostPath mounts of the cgroup, the bpffs and the netns directory gets. Its cgroup is a child
// of the one StartOnNode gives "onehop-agent" processes (clusters/netns: daemon-<name> under
// the node), so the lab's CPU accounting counts the agent as before, and its counter survives
// restarts (runc removes the child with each container).
func (o *Onehop) container(h clusters.NodeHost, node, id string, argv []string) image.Container {
	return image.Container{ID: id, Args: argv, Netns: h.(nodeNetns).NodeNetnsPath(node),
		Cgroup: filepath.Join(h.NodeCgroup(node), "daemon-onehop-agent", id),
		Binds:  []string{h.RuntimeDir(), h.NodeCgroup(node), filepath.Dir(h.NetnsPath("any"))}}
}

// waitReady polls the agent's /readyz until it has programmed its first config.
func waitReady(ctx context.Context, sock string, p *clusters.Process) error {
	deadline := time.Now().Add(30 * time.Second)
	client := agent.Client(sock)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case <-p.Exited:
			return fmt.Errorf("exited before it was ready; log %s:\n%s", p.LogPath, p.LogTail(2000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond): // fine enough to time a restart
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/readyz", nil)
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = strings.TrimSpace(string(b))
	}
	return fmt.Errorf("not ready after 30s (%s); log %s:\n%s", last, p.LogPath, p.LogTail(2000))
}

// Package clusters defines the lab's cluster seam: a Provider brings clusters up and down, a
// Cluster runs pods, services and processes. The embedded default provider is clusters/netns
// (network namespaces and cgroups on one host); others (kind, any kubeconfig) sit behind the same
// interfaces.
package clusters

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/onehop-mesh/onehop/bench/cpu"
	"github.com/onehop-mesh/onehop/clusters/services"
)

// Provider creates, finds and removes clusters of one kind.
type Provider interface {
	// Up creates the cluster described by spec, or completes and reuses one of that name.
	Up(ctx context.Context, spec Spec) (Cluster, error)
	// Open attaches to a running cluster.
	Open(ctx context.Context, name string) (Cluster, error)
	// Down removes everything the cluster created; it succeeds when nothing is left.
	Down(ctx context.Context, name string) error
}

// Cluster is a running lab.
type Cluster interface {
	Name() string
	Provider() string
	Spec() Spec
	// Services is the service/endpoint store every data plane variant reads.
	Services() *services.Store
	Pods() []Pod
	Pod(name string) (Pod, bool)
	CreatePod(ctx context.Context, p PodSpec) (Pod, error)
	DeletePod(ctx context.Context, name string) error
	UpsertService(ctx context.Context, s ServiceDef) (services.Service, error)
	DeleteService(ctx context.Context, namespace, name string) error
	// Start runs a process inside a pod (network namespace and cgroup).
	Start(ctx context.Context, pod string, cmd Command) (*Process, error)
	// Dial opens a TCP or UDP socket from inside a pod's network namespace.
	Dial(ctx context.Context, pod, network, address string) (net.Conn, error)
	// CPUTargets lists every cgroup worth sampling (pods and node components).
	CPUTargets() []cpu.Target
	// Close releases the handle; the cluster keeps running.
	Close() error
}

// NodeRunner is implemented by clusters whose nodes the lab itself programs (the netns cluster):
// it runs a command in a node's network namespace, as a hostNetwork DaemonSet would.
type NodeRunner interface {
	RunOnNode(ctx context.Context, node string, stdin []byte, argv ...string) ([]byte, error)
}

// ServiceProxy is implemented by clusters whose kube-proxy is the lab's own rule programmer.
type ServiceProxy interface {
	// ResyncServices rewrites the node's service rules from scratch, as a restarted kube-proxy.
	ResyncServices(ctx context.Context, node string) error
}

// NodeHost is implemented by clusters whose nodes the lab itself runs (the netns cluster): it
// places node daemons (kube-proxy, the onehop agent, node proxies) the way a hostNetwork
// DaemonSet would.
type NodeHost interface {
	NodeRunner
	// StartOnNode runs a daemon in the node's network namespace and a cgroup of its own.
	StartOnNode(ctx context.Context, node string, cmd Command) (*Process, error)
	// ListenOnNode opens a listening socket in the node's network namespace.
	ListenOnNode(node, network, address string) (net.Listener, error)
	// NodeAddresses are the node's own IPs (one per family), reachable from every node.
	NodeAddresses(node string) []netip.Addr
	// NodeCgroup is the cgroup v2 directory holding every pod of the node.
	NodeCgroup(node string) string
	// NodeBPFDir is a bpffs directory the node's daemons may pin objects in.
	NodeBPFDir(node string) string
	// RuntimeDir is a directory for sockets and files of the lab's daemons.
	RuntimeDir() string
	// NetnsPath is the path of a pod's network namespace.
	NetnsPath(pod string) string
}

// Pod is a created pod.
type Pod struct {
	PodSpec
	IPs    []netip.Addr `json:"ips"`
	Netns  string       `json:"netns"`  // network namespace name
	Cgroup string       `json:"cgroup"` // cgroup v2 directory
}

// Command is a process to start in a pod.
type Command struct {
	Name string   // short name for the log file
	Argv []string // program and arguments
	// Detach lets the process outlive the caller (its own session, output to the log file).
	Detach bool
	// Stdout, when set, receives the standard output instead of the log file.
	Stdout io.Writer
	// UID, when not 0, runs the process as that user and group id (a sidecar proxy's own uid,
	// which its pod's interception rules exempt).
	UID int
	// Container, when set, runs the process in the pod's network namespace but in a cgroup of
	// its own beside the pod's (a sidecar container), so CPU reports show it as component
	// Container instead of adding it to the pod's. A DNS label, like "sidecar".
	Container string
}

// Process is a started process.
type Process struct {
	*exec.Cmd
	LogPath string
	// Exited is closed when a detached process has exited (it is reaped for the caller).
	Exited chan struct{}
	// Terminate, when set, asks the process to stop as SIGTERM would, where the signal cannot
	// reach it (a process in a remote pod); nil: SIGTERM.
	Terminate func() error
}

// Term asks the process to stop: Terminate, or SIGTERM.
func (p *Process) Term() error {
	if p.Terminate != nil {
		return p.Terminate()
	}
	return p.Process.Signal(syscall.SIGTERM)
}

// LogTail returns the last n bytes of the process's log, for error messages.
func (p *Process) LogTail(n int) string {
	b, _ := os.ReadFile(p.LogPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Stop ends a detached process: SIGTERM, then SIGKILL if it is still running after grace.
func (p *Process) Stop(grace time.Duration) error {
	if p.Exited == nil {
		return fmt.Errorf("stop pid %d: not a detached process (Wait for it instead)", p.Process.Pid)
	}
	p.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.Exited:
		return nil
	case <-time.After(grace):
	}
	p.Process.Kill()
	<-p.Exited
	return fmt.Errorf("pid %d did not exit within %v of SIGTERM and was killed", p.Process.Pid, grace)
}

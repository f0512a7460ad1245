package variants

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/clusters"
)

// Baseline is the cluster without a mesh: services are implemented by kube-proxy-style iptables
// rules in each node, which the cluster itself programs from its service store.
type Baseline struct{}

func init() { RegisterNetns(func(clusters.Cluster) NetnsVariant { return Baseline{} }) }

func (Baseline) Name() string { return "baseline" }
func (Baseline) Describe() string {
	return "no mesh: ClusterIP services through kube-proxy-style iptables DNAT in each node (plaintext)"
}

func (Baseline) Labels() map[string]string { return nil }

// Install checks that every node has the service rules; there is nothing else to deploy.
func (Baseline) Install(ctx context.Context, c clusters.Cluster) error {
	nr, ok := c.(clusters.NodeRunner)
	if !ok {
		return nil // a real Kubernetes cluster brings its own kube-proxy
	}
	for _, node := range c.Spec().NodeNames() {
		out, err := nr.RunOnNode(ctx, node, nil, "iptables-save", "-t", "nat")
		if err != nil {
			return fmt.Errorf("baseline on node %s: %w", node, err)
		}
		if !strings.Contains(string(out), "-j ONEHOP-SERVICES") {
			return fmt.Errorf("baseline on node %s: service rules are not programmed (no jump to ONEHOP-SERVICES in the nat table)", node)
		}
	}
	return nil
}

// Uninstall leaves the rules: they are the cluster's, not the variant's.
func (Baseline) Uninstall(context.Context, clusters.Cluster) error { return nil }

// Restart re-syncs the service rules of the node from scratch, which is what a restarted
// kube-proxy does (a full iptables-restore of its chains). There is no process: the rules stay
// in the kernel while "the daemon" is away, so the signal makes no difference.
func (Baseline) Restart(ctx context.Context, c clusters.Cluster, node string, sig syscall.Signal) (RestartEvent, error) {
	sp, ok := c.(clusters.ServiceProxy)
	if !ok {
		return RestartEvent{}, fmt.Errorf("baseline: the %s provider's kube-proxy is not the lab's; restart it with kubectl", c.Provider())
	}
	ev := RestartEvent{Node: node, Signal: unix.SignalName(sig), Daemon: "kube-proxy-style rule programmer (full re-sync)", StoppedAt: time.Now()}
	if err := sp.ResyncServices(ctx, node); err != nil {
		return ev, fmt.Errorf("baseline: re-sync services on %s: %w", node, err)
	}
	ev.ReadyAt = time.Now()
	ev.ReadyMS = float64(ev.ReadyAt.Sub(ev.StoppedAt).Microseconds()) / 1000
	return ev, nil
}

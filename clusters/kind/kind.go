// Package kind runs labs on kind clusters (sigs.k8s.io/kind as a library): Up creates a cluster
// with the scenario's node count, builds the agent's and the workload's images and loads them
// into every node (as `kind load image-archive`), and makes the lab on it as on any Kubernetes
// cluster (clusters/kube). kind needs a Docker, Podman or nerdctl engine, and pulls its node
// image from a registry; where there is neither (these machines), use clusters/localkube.
package kind

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodeutils"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/kube"
	"github.com/onehop-mesh/onehop/deploy/image"
	"github.com/onehop-mesh/onehop/deploy/install"
	"github.com/onehop-mesh/onehop/internal/kubetest"
)

// ProviderName is how results and reports name labs on kind.
const ProviderName = "kind"

// Provider makes a kind cluster per lab, named onehop-<lab>.
type Provider struct {
	Source    string // the onehop module's root, the images are built from
	NodeImage string // kind's node image; empty: kind's default for its version
	// Config is a kind cluster config file to create the cluster with (e.g. the offline node
	// image's, clusters/kind/nodeimage/kind-config.yaml); empty: spec.Nodes nodes, kind's defaults.
	Config string
	// ChartSet are more helm --set values for the onehop chart. On a host whose cgroup v2 is
	// the hybrid one (/sys/fs/cgroup/unified), host.cgroup is set to it whatever these say first.
	ChartSet []string
	Logf     func(format string, args ...any)
}

// ErrNoEngine is returned when no container engine kind can use is found.
var ErrNoEngine = errors.New("kind needs a running Docker, Podman or nerdctl engine, and none answers on this machine (use --provider localkube: a real Kubernetes without one)")

func clusterName(lab string) string { return "onehop-" + lab }

func (p *Provider) kind() (*cluster.Provider, error) {
	opt, err := cluster.DetectNodeProvider() // a client binary is found
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoEngine, err)
	}
	kp := cluster.NewProvider(opt)
	if _, err := kp.List(); err != nil { // and its engine answers
		return nil, fmt.Errorf("%w: %v", ErrNoEngine, err)
	}
	return kp, nil
}

// Up creates the cluster (one control-plane node and spec.Nodes-1 workers), loads the images and
// makes the lab on it.
func (p *Provider) Up(ctx context.Context, spec clusters.Spec) (clusters.Cluster, error) {
	kp, err := p.kind()
	if err != nil {
		return nil, err
	}
	logf := p.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	name := clusterName(spec.Name)
	config := "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: control-plane\n"
	for i := 1; i < spec.Nodes; i++ {
		config += "- role: worker\n"
	}
	if p.Config != "" {
		b, err := os.ReadFile(p.Config)
		if err != nil {
			return nil, fmt.Errorf("kind: config: %w", err)
		}
		config = string(b)
	}
	opts := []cluster.CreateOption{cluster.CreateWithRawConfig([]byte(config)), cluster.CreateWithWaitForReady(0), cluster.CreateWithDisplayUsage(false)}
	if p.NodeImage != "" {
		opts = append(opts, cluster.CreateWithNodeImage(p.NodeImage))
	}
	kp.Delete(name, "") // one left by a killed run
	logf("kind: creating cluster %s (%d nodes)", name, spec.Nodes)
	if err := kp.Create(name, opts...); err != nil {
		return nil, fmt.Errorf("kind: create %s: %w", name, err)
	}
	kc, err := p.prepare(ctx, kp, name, logf)
	if err == nil {
		var c clusters.Cluster
		if c, err = kc.Up(ctx, spec); err == nil {
			return c, nil
		}
	}
	return nil, errors.Join(err, kp.Delete(name, ""))
}

// prepare writes the kubeconfig, builds and loads the images, and says how onehop goes on.
func (p *Provider) prepare(ctx context.Context, kp *cluster.Provider, name string, logf func(string, ...any)) (*kube.Provider, error) {
	dir, err := os.MkdirTemp("", "onehop-kind-")
	if err != nil {
		return nil, err
	}
	cfg, err := kp.KubeConfig(name, false)
	if err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	agent, wl, err := image.BuildLab(ctx, p.Source, "lab", dir)
	if err != nil {
		return nil, err
	}
	nodes, err := kp.ListInternalNodes(name)
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		// The agents pin in bpffs, which kind's nodes do not mount: without it they run unpinned
		// and a restart detaches their programs.
		if err := n.Command("sh", "-c", "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf").Run(); err != nil {
			return nil, fmt.Errorf("kind: mount a bpffs in node %s: %w", n, err)
		}
		for _, tar := range []string{agent.Path, wl.Path} {
			f, err := os.Open(tar)
			if err != nil {
				return nil, err
			}
			err = nodeutils.LoadImageArchive(n, f)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("kind: load %s into %s: %w", tar, n, err)
			}
		}
	}
	logf("kind: images %s and %s loaded into %d nodes", agent.Ref, wl.Ref, len(nodes))
	helm, err := kubetest.Helm(ctx, kubetest.Logf(logf))
	if err != nil {
		return nil, err
	}
	node, err := kubetest.NodeBinaries(ctx, kubetest.Logf(logf))
	if err != nil {
		return nil, err
	}
	cidr := netip.MustParsePrefix("10.96.0.0/16") // kind's service subnet
	set := slices.Clone(p.ChartSet)               // appended to: not the caller's array
	if hybridCgroups() {
		// The nodes see the host's cgroup layout: v2 is the hybrid hierarchy's.
		set = append(set, "host.cgroup=/sys/fs/cgroup/unified")
	}
	return &kube.Provider{Kubeconfig: kubeconfig, Kubectl: node.Kubectl, WorkloadImage: wl.Ref, ServiceCIDR: cidr, Name: ProviderName,
		Log: slog.Default(), Install: install.Options{Helm: helm, Chart: install.ChartDir(p.Source), AgentImage: agent.Ref,
			WorkloadImage: wl.Ref, ServiceCIDR: cidr.String(), Set: set}}, nil
}

// hybridCgroups reports whether this host mounts cgroup v1 at /sys/fs/cgroup with cgroup v2 at
// /sys/fs/cgroup/unified (systemd's hybrid layout), as these machines do.
func hybridCgroups() bool {
	var root, unified unix.Statfs_t
	return unix.Statfs("/sys/fs/cgroup", &root) == nil && root.Type != unix.CGROUP2_SUPER_MAGIC &&
		unix.Statfs("/sys/fs/cgroup/unified", &unified) == nil && unified.Type == unix.CGROUP2_SUPER_MAGIC
}

// Open is not supported: a lab lives as long as the run that made it.
func (p *Provider) Open(ctx context.Context, name string) (clusters.Cluster, error) {
	return nil, fmt.Errorf("kind: reopening lab %q is not supported; run the scenario again", name)
}

// Down deletes the lab's kind cluster.
func (p *Provider) Down(ctx context.Context, name string) error {
	kp, err := p.kind()
	if err != nil {
		return err
	}
	return kp.Delete(clusterName(name), "")
}

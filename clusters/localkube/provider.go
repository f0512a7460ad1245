package localkube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/kube"
	"github.com/onehop-mesh/onehop/deploy/image"
	"github.com/onehop-mesh/onehop/deploy/install"
	"github.com/onehop-mesh/onehop/internal/kubetest"
)

// ProviderName is how results and reports name labs on a localkube cluster.
const ProviderName = "localkube"

// Provider runs each lab on a localkube cluster of its own, named after the lab: Up brings the
// cluster up, builds the agent and workload images from Source and loads them into the node, and
// makes the lab on it as on any Kubernetes cluster (clusters/kube); Down removes the cluster.
type Provider struct {
	Source string       // the onehop module's root
	Link   netip.Prefix // see Options.Link
	Logf   func(format string, args ...any)
}

func (p *Provider) Up(ctx context.Context, spec clusters.Spec) (clusters.Cluster, error) {
	logf := p.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c, err := Up(ctx, Options{Name: spec.Name, Link: p.Link, Source: p.Source, Logf: logf})
	if err != nil {
		return nil, err
	}
	kp, err := p.kubeProvider(ctx, c, logf)
	if err == nil {
		var kc clusters.Cluster
		if kc, err = kp.Up(ctx, spec); err == nil {
			return kc, nil
		}
	}
	return nil, fmt.Errorf("%w (%v)", err, Down(context.WithoutCancel(ctx), spec.Name))
}

// kubeProvider builds and loads the images, and says how the lab and onehop go on c.
func (p *Provider) kubeProvider(ctx context.Context, c *Cluster, logf func(string, ...any)) (*kube.Provider, error) {
	agent, wl, err := image.BuildLab(ctx, p.Source, "lab", c.Dir)
	if err != nil {
		return nil, err
	}
	for _, tar := range []string{agent.Path, wl.Path} {
		if err := c.LoadImage(ctx, tar); err != nil {
			return nil, err
		}
	}
	logf("localkube %s: images %s (%s) and %s loaded", c.Name, agent.Ref, agent.Digest, wl.Ref)
	helm, err := kubetest.Helm(ctx, kubetest.Logf(logf))
	if err != nil {
		return nil, err
	}
	return &kube.Provider{Kubeconfig: c.Kubeconfig, Kubectl: c.Bins.Kubectl, WorkloadImage: wl.Ref, ServiceCIDR: c.ServiceCIDR,
		Name: ProviderName, Log: slog.Default(),
		Install: install.Options{Helm: helm, Chart: install.ChartDir(p.Source), AgentImage: agent.Ref, WorkloadImage: wl.Ref,
			ServiceCIDR: c.ServiceCIDR.String(),
			Set:         []string{"host.cgroup=" + c.CgroupV2, "host.bpffs=" + c.BPFFS, "host.run=" + c.RunDir}}}, nil
}

// Open is not supported: a lab lives as long as the run that made it.
func (p *Provider) Open(ctx context.Context, name string) (clusters.Cluster, error) {
	return nil, fmt.Errorf("localkube: reopening lab %q is not supported; run the scenario again (it re-creates the lab)", name)
}

// Down removes the lab's cluster, and with it everything of the lab.
func (p *Provider) Down(ctx context.Context, name string) error { return Down(ctx, name) }

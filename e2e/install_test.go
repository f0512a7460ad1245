package e2e

import (
	"context"
	"log"

	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/e2e-framework/pkg/envconf"

	"github.com/onehop-mesh/onehop/deploy/install"
	"github.com/onehop-mesh/onehop/internal/kubetest"
)

const (
	system  = install.Namespace
	agentDS = install.AgentDaemonSet
)

func clientset(cfg *envconf.Config) (*kubernetes.Clientset, error) {
	return kubernetes.NewForConfig(cfg.Client().RESTConfig())
}

func installOptions(ctx context.Context, cfg *envconf.Config) (install.Options, error) {
	helm, err := kubetest.Helm(ctx, log.Printf)
	if err != nil {
		return install.Options{}, err
	}
	o := install.Options{Kubeconfig: cfg.KubeconfigFile(), Helm: helm, Chart: install.ChartDir(repoRoot()),
		AgentImage: setup.agentImage, WorkloadImage: setup.workload, ServiceCIDR: *serviceCIDR}
	if c := setup.local; c != nil { // the cluster's own cgroup root, bpffs and run directory
		o.Set = []string{"host.cgroup=" + c.CgroupV2, "host.bpffs=" + c.BPFFS, "host.run=" + c.RunDir}
	}
	o.Set = append(o.Set, chartSet...)
	return o, nil
}

// installOnehop installs the lab's control plane and the chart, and waits for every agent.
func installOnehop(ctx context.Context, cfg *envconf.Config) (context.Context, error) {
	return ctx, withInstall(ctx, cfg, func(cs kubernetes.Interface, o install.Options) error {
		xds, err := install.Onehop(ctx, cs, o)
		if err == nil {
			log.Printf("onehop installed: control plane at %s, an agent on every node", xds)
		}
		return err
	})
}

func uninstallOnehop(ctx context.Context, cfg *envconf.Config) (context.Context, error) {
	return ctx, withInstall(ctx, cfg, func(cs kubernetes.Interface, o install.Options) error {
		return install.Uninstall(ctx, cs, o)
	})
}

func withInstall(ctx context.Context, cfg *envconf.Config, do func(kubernetes.Interface, install.Options) error) error {
	cs, err := clientset(cfg)
	if err != nil {
		return err
	}
	o, err := installOptions(ctx, cfg)
	if err != nil {
		return err
	}
	return do(cs, o)
}

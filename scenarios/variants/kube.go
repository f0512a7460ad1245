package variants

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/kube"
	"github.com/onehop-mesh/onehop/deploy/install"
)

// kubeCluster is a lab on a real Kubernetes cluster (clusters/kube).
type kubeCluster interface {
	Clientset() kubernetes.Interface
	InstallOptions() install.Options
}

// On Kubernetes, the baseline is the cluster's own kube-proxy, and onehop is its chart with the
// lab's control plane (deploy/install); both for clusters of any kubeconfig and for localkube.
func init() {
	for _, provider := range []string{kube.ProviderName, "localkube"} {
		RegisterInstaller(provider, "baseline", kubeInstaller(func(context.Context, kubeCluster) (Deployment, error) {
			return kubeBaseline{}, nil
		}))
		RegisterInstaller(provider, "onehop", kubeInstaller(func(ctx context.Context, c kubeCluster) (Deployment, error) {
			if _, err := install.Onehop(ctx, c.Clientset(), c.InstallOptions()); err != nil {
				// Nothing half-applied: what got installed goes.
				return nil, errors.Join(fmt.Errorf("onehop: %w", err), install.Uninstall(context.WithoutCancel(ctx), c.Clientset(), c.InstallOptions()))
			}
			return kubeOnehop{c}, nil
		}))
		// Istio's sidecar and ambient are real Istio on Kubernetes, installed from its charts;
		// its proxies (Envoy, ztunnel) come only as images from a registry.
		for _, v := range []string{"sidecar", "sidecar-plaintext", "ambient", "ambient-waypoint"} {
			RegisterInstaller(provider, v, unavailable(fmt.Sprintf("%s on Kubernetes is real Istio installed from its Helm charts, whose proxies "+
				"(Envoy, ztunnel) are images pulled from a registry (docker.io/istio); this machine reaches no registry, and neither proxy "+
				"can be built from the Go module proxy or Debian. Here, run %s on the netns lab (--provider netns)", v, v)))
		}
	}
}

type kubeInstaller func(ctx context.Context, c kubeCluster) (Deployment, error)

func (in kubeInstaller) Install(ctx context.Context, c clusters.Cluster) (Deployment, error) {
	kc, ok := c.(kubeCluster)
	if !ok {
		return nil, fmt.Errorf("the %s provider is not a Kubernetes cluster", c.Provider())
	}
	return in(ctx, kc)
}

// kubeBaseline: nothing to install; the cluster's kube-proxy carries service traffic.
type kubeBaseline struct{}

func (kubeBaseline) Uninstall(context.Context, clusters.Cluster) error { return nil }
func (kubeBaseline) Describe() string {
	return "no mesh: ClusterIP services through the cluster's own kube-proxy (iptables mode) (plaintext)"
}

// kubeOnehop is the chart installed; the agents enroll the pods of namespaces labelled for
// onehop themselves (Kubernetes mode).
type kubeOnehop struct{ c kubeCluster }

func (kubeOnehop) Describe() string {
	return "onehop-agent from its Helm chart (Kubernetes mode; workload xDS from the lab's control plane fed by the API server): eBPF cgroup/connect4+6 service load balancing, no proxy (plaintext)"
}

func (k kubeOnehop) Uninstall(ctx context.Context, _ clusters.Cluster) error {
	return install.Uninstall(ctx, k.c.Clientset(), k.c.InstallOptions())
}

// unavailable is a variant that cannot be installed on a provider, and says why.
type unavailable string

func (u unavailable) Install(context.Context, clusters.Cluster) (Deployment, error) {
	return nil, errors.New(string(u))
}

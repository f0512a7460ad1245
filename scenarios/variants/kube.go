package variants

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/client-go/kubernetes"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/kube"
	kubeagent "github.com/onehop-mesh/onehop/dataplane/kube"
	"github.com/onehop-mesh/onehop/deploy/install"
)

// kubeCluster is a lab on a real Kubernetes cluster (clusters/kube).
type kubeCluster interface {
	Clientset() kubernetes.Interface
	InstallOptions() install.Options
	NodeName(labNode string) string
}

// On Kubernetes, the baseline is the cluster's own kube-proxy, and onehop is its chart with the
// lab's control plane (deploy/install); for clusters of any kubeconfig, localkube and kind.
func init() {
	for _, provider := range []string{kube.ProviderName, "localkube", "kind"} {
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

// Restart restarts the agent on node as Kubernetes does: its pod is deleted, with the default
// grace period for SIGTERM (the kubelet sends SIGTERM) or none for SIGKILL (the kubelet kills
// it), and the DaemonSet starts a new one; ready when the new pod is.
func (k kubeOnehop) Restart(ctx context.Context, _ clusters.Cluster, node string, sig syscall.Signal) (RestartEvent, error) {
	cs := k.c.Clientset()
	ev := RestartEvent{Node: node, Signal: unix.SignalName(sig)}
	name := k.c.NodeName(node)
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent", FieldSelector: "spec.nodeName=" + name}
	pods, err := cs.CoreV1().Pods(install.Namespace).List(ctx, sel)
	if err != nil || len(pods.Items) != 1 {
		return ev, fmt.Errorf("onehop: the agent pod on node %s (%s): %d pods, %v", node, name, len(pods.Items), err)
	}
	old := pods.Items[0]
	var grace *int64
	switch sig {
	case syscall.SIGTERM:
	case syscall.SIGKILL:
		grace = new(int64)
	default:
		return ev, fmt.Errorf("onehop on Kubernetes restarts with SIGTERM or SIGKILL, not %s", ev.Signal)
	}
	ev.StoppedAt = time.Now()
	if err := cs.CoreV1().Pods(install.Namespace).Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: grace}); err != nil {
		return ev, fmt.Errorf("onehop: delete agent pod %s: %w", old.Name, err)
	}
	var now corev1.Pod
	err = install.Poll(ctx, 2*time.Minute, func() (bool, string) {
		l, err := cs.CoreV1().Pods(install.Namespace).List(ctx, sel)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range l.Items {
			if p.UID == old.UID || p.DeletionTimestamp != nil {
				continue
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					now = p
					return true, ""
				}
			}
		}
		return false, fmt.Sprintf("no new ready agent on %s yet", name)
	})
	if err != nil {
		return ev, fmt.Errorf("onehop: agent on %s: %w", node, err)
	}
	ev.ReadyAt = time.Now()
	ev.ReadyMS = float64(ev.ReadyAt.Sub(ev.StoppedAt).Microseconds()) / 1000
	ev.Daemon = fmt.Sprintf("onehop-agent pod %s -> %s", old.Name, now.Name)
	return ev, nil
}

// AddPod waits until the agent on the pod's node has enrolled it: on Kubernetes the agents
// enroll pods themselves (they watch their node's pods), and say so with the pod's
// onehop.io/enrolled annotation. The lab pod is its Deployment's current pod.
func (k kubeOnehop) AddPod(ctx context.Context, _ clusters.Cluster, pod clusters.Pod) error {
	cs := k.c.Clientset()
	sel := metav1.ListOptions{LabelSelector: kube.PodLabel + "=" + pod.Name}
	return install.Poll(ctx, time.Minute, func() (bool, string) {
		l, err := cs.CoreV1().Pods(pod.Namespace).List(ctx, sel)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range l.Items {
			if p.DeletionTimestamp == nil && p.Annotations[kubeagent.EnrolledAnnotation] != "" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("pod %s/%s not enrolled by its node's agent yet", pod.Namespace, pod.Name)
	})
}

// RemovePod: the agent unenrolls a pod that is deleted.
func (kubeOnehop) RemovePod(context.Context, clusters.Cluster, clusters.Pod) error { return nil }

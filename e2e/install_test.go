package e2e

import (
	"context"
	"fmt"
	"log"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/e2e-framework/pkg/envconf"

	"github.com/onehop-mesh/onehop/internal/kubetest"
)

const (
	system   = "onehop-system" // the agents' and the control plane's namespace
	release  = "onehop"
	agentDS  = "onehop-agent" // the chart's DaemonSet, for release "onehop"
	xdsName  = "onehop-xds"
	xdsPort  = 15010
	rbacName = "onehop-e2e-xds"
)

func clientset(cfg *envconf.Config) (*kubernetes.Clientset, error) {
	return kubernetes.NewForConfig(cfg.Client().RESTConfig())
}

// installControlPlane runs the lab's control plane in the cluster (`onehop controlplane` from the
// workload image, with a service account that reads Services and Pods) behind a Service; the
// agents reach it at its cluster IP (they are on the host network, which may have no cluster DNS).
func installControlPlane(ctx context.Context, cfg *envconf.Config) (context.Context, error) {
	cs, err := clientset(cfg)
	if err != nil {
		return ctx, err
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: system}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return ctx, err
	}
	labels := map[string]string{"app": xdsName}
	objs := []func() error{
		func() error {
			_, err := cs.CoreV1().ServiceAccounts(system).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: xdsName}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: rbacName},
				Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"services", "pods"}, Verbs: []string{"get", "list", "watch"}}}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: rbacName},
				RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: rbacName},
				Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: xdsName, Namespace: system}}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			one := int32(1)
			_, err := cs.AppsV1().Deployments(system).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: xdsName},
				Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
					Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
						ServiceAccountName: xdsName,
						Containers: []corev1.Container{{Name: "controlplane", Image: setup.workload, ImagePullPolicy: corev1.PullIfNotPresent,
							Args:           []string{"controlplane", "--listen", fmt.Sprintf(":%d", xdsPort), "--service-cidr", *serviceCIDR},
							ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(xdsPort)}}, PeriodSeconds: 1},
						}}}}}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.CoreV1().Services(system).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: xdsName},
				Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "grpc-xds", Port: xdsPort}}}}, metav1.CreateOptions{})
			return err
		},
	}
	for _, create := range objs {
		if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return ctx, err
		}
	}
	if err := waitDeployment(ctx, cs, system, xdsName, 2*time.Minute); err != nil {
		return ctx, err
	}
	svc, err := cs.CoreV1().Services(system).Get(ctx, xdsName, metav1.GetOptions{})
	if err != nil {
		return ctx, err
	}
	setup.xds = fmt.Sprintf("%s:%d", svc.Spec.ClusterIP, xdsPort)
	log.Printf("control plane ready at %s", setup.xds)
	return ctx, nil
}

// helm runs the helm that internal/kubetest builds (and caches) from the module proxy.
func helm(ctx context.Context, cfg *envconf.Config, args ...string) (string, error) {
	bin, err := kubetest.Helm(ctx, log.Printf)
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, bin, append(args, "--kubeconfig", cfg.KubeconfigFile())...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// installChart installs deploy/chart/onehop with the built image, and waits for every agent.
func installChart(ctx context.Context, cfg *envconf.Config) (context.Context, error) {
	repo, tag, _ := strings.Cut(setup.agentImage, ":")
	args := []string{"install", release, filepath.Join(repoRoot(), "deploy", "chart", "onehop"), "--namespace", system,
		"--set", "image.repository=" + repo, "--set", "image.tag=" + tag, "--set", "image.pullPolicy=IfNotPresent",
		"--set", "xds.address=" + setup.xds, "--set", "xds.mode=workload"}
	if c := setup.local; c != nil { // the cluster's own cgroup root, bpffs and run directory
		args = append(args, "--set", "host.cgroup="+c.CgroupV2, "--set", "host.bpffs="+c.BPFFS, "--set", "host.run="+c.RunDir)
	}
	if _, err := helm(ctx, cfg, args...); err != nil {
		return ctx, err
	}
	cs, err := clientset(cfg)
	if err != nil {
		return ctx, err
	}
	return ctx, waitDaemonSet(ctx, cs, system, agentDS, 2*time.Minute)
}

func uninstallChart(ctx context.Context, cfg *envconf.Config) (context.Context, error) {
	_, err := helm(ctx, cfg, "uninstall", release, "--namespace", system, "--wait")
	return ctx, err
}

func waitDeployment(ctx context.Context, cs kubernetes.Interface, ns, name string, timeout time.Duration) error {
	return poll(ctx, timeout, func() (bool, string) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return d.Status.ReadyReplicas == *d.Spec.Replicas && d.Status.UpdatedReplicas == *d.Spec.Replicas,
			fmt.Sprintf("deployment %s/%s: %d/%d ready", ns, name, d.Status.ReadyReplicas, *d.Spec.Replicas)
	})
}

// waitDaemonSet waits until every node runs a ready pod of the DaemonSet's current template.
func waitDaemonSet(ctx context.Context, cs kubernetes.Interface, ns, name string, timeout time.Duration) error {
	return poll(ctx, timeout, func() (bool, string) {
		d, err := cs.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		s := d.Status
		return s.ObservedGeneration >= d.Generation && s.DesiredNumberScheduled > 0 && s.NumberReady == s.DesiredNumberScheduled &&
				s.UpdatedNumberScheduled == s.DesiredNumberScheduled,
			fmt.Sprintf("daemonset %s/%s: %d desired, %d updated, %d ready", ns, name, s.DesiredNumberScheduled, s.UpdatedNumberScheduled, s.NumberReady)
	})
}

// poll calls cond until it holds, or fails with its last word after timeout.
func poll(ctx context.Context, timeout time.Duration, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, what := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

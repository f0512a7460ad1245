// Package install puts onehop on a Kubernetes cluster as a user would: the lab's control plane
// (`onehop controlplane`, fed by the cluster's Services and Pods) as a Deployment behind a
// Service, and the agents from the Helm chart (deploy/chart/onehop). The e2e suites and the
// scenario runner's Kubernetes installers use it.
package install

import (
	"context"
	"fmt"
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
)

const (
	// Namespace holds the agents and the control plane.
	Namespace = "onehop-system"
	// Release is the chart's release name; the agents' DaemonSet is AgentDaemonSet.
	Release        = "onehop"
	AgentDaemonSet = "onehop-agent"
	xdsName        = "onehop-xds"
	xdsPort        = 15010
	rbacName       = "onehop-xds"
)

// Options say what to install.
type Options struct {
	Kubeconfig string
	Helm       string // the helm binary
	Chart      string // deploy/chart/onehop
	// AgentImage and WorkloadImage are full references already on the nodes (the control plane
	// runs from the workload image: the onehop binary).
	AgentImage, WorkloadImage string
	ServiceCIDR               string   // the cluster's, for the control plane (default 10.96.0.0/12)
	XDSMode                   string   // "workload" (default) or "envoy"
	Set                       []string // more helm --set values (host paths)
}

// Onehop installs the control plane, then the chart, and waits for an agent on every node.
// It returns the control plane's address.
func Onehop(ctx context.Context, cs kubernetes.Interface, o Options) (string, error) {
	xds, err := ControlPlane(ctx, cs, o)
	if err != nil {
		return "", err
	}
	mode := o.XDSMode
	if mode == "" {
		mode = "workload"
	}
	repo, tag, _ := strings.Cut(o.AgentImage, ":")
	args := []string{"install", Release, o.Chart, "--namespace", Namespace,
		"--set", "image.repository=" + repo, "--set", "image.tag=" + tag, "--set", "image.pullPolicy=IfNotPresent",
		"--set", "xds.address=" + xds, "--set", "xds.mode=" + mode}
	for _, s := range o.Set {
		args = append(args, "--set", s)
	}
	if _, err := Helm(ctx, o, args...); err != nil {
		return "", err
	}
	return xds, WaitDaemonSet(ctx, cs, Namespace, AgentDaemonSet, 2*time.Minute)
}

// Uninstall removes the chart (waiting for its agents, which uninstall their programs as they
// stop) and the control plane.
func Uninstall(ctx context.Context, cs kubernetes.Interface, o Options) error {
	var errs []error
	if _, err := Helm(ctx, o, "uninstall", Release, "--namespace", Namespace, "--wait"); err != nil {
		errs = append(errs, err)
	}
	del := metav1.DeleteOptions{}
	for _, err := range []error{
		cs.AppsV1().Deployments(Namespace).Delete(ctx, xdsName, del),
		cs.CoreV1().Services(Namespace).Delete(ctx, xdsName, del),
		cs.CoreV1().ServiceAccounts(Namespace).Delete(ctx, xdsName, del),
		cs.RbacV1().ClusterRoleBindings().Delete(ctx, rbacName, del),
		cs.RbacV1().ClusterRoles().Delete(ctx, rbacName, del),
	} {
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("uninstall onehop: %v", errs)
	}
	return nil
}

// Helm runs helm with the options' kubeconfig.
func Helm(ctx context.Context, o Options, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, o.Helm, append(args, "--kubeconfig", o.Kubeconfig)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// ControlPlane runs `onehop controlplane` from the workload image with a service account that
// reads Services and Pods, behind a Service; it returns the Service's cluster IP and port, which
// the agents (on the host network, maybe without cluster DNS) dial.
func ControlPlane(ctx context.Context, cs kubernetes.Interface, o Options) (string, error) {
	cidr := o.ServiceCIDR
	if cidr == "" {
		cidr = "10.96.0.0/12"
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", err
	}
	labels := map[string]string{"app": xdsName}
	one := int32(1)
	creates := []func() error{
		func() error {
			_, err := cs.CoreV1().ServiceAccounts(Namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: xdsName}}, metav1.CreateOptions{})
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
				Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: xdsName, Namespace: Namespace}}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.AppsV1().Deployments(Namespace).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: xdsName},
				Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
					Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
						ServiceAccountName: xdsName,
						Containers: []corev1.Container{{Name: "controlplane", Image: o.WorkloadImage, ImagePullPolicy: corev1.PullIfNotPresent,
							Args: []string{"controlplane", "--listen", fmt.Sprintf(":%d", xdsPort), "--service-cidr", cidr},
							ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(xdsPort)}},
								PeriodSeconds: 1}}}}}}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.CoreV1().Services(Namespace).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: xdsName},
				Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "grpc-xds", Port: xdsPort}}}}, metav1.CreateOptions{})
			return err
		},
	}
	for _, create := range creates {
		if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return "", err
		}
	}
	if err := WaitDeployment(ctx, cs, Namespace, xdsName, 2*time.Minute); err != nil {
		return "", err
	}
	svc, err := cs.CoreV1().Services(Namespace).Get(ctx, xdsName, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s:%d", svc.Spec.ClusterIP, xdsPort), nil
}

// ChartDir is the chart in the onehop module at root.
func ChartDir(root string) string { return filepath.Join(root, "deploy", "chart", "onehop") }

// WaitDeployment waits until every replica of the Deployment's current template is ready.
func WaitDeployment(ctx context.Context, cs kubernetes.Interface, ns, name string, timeout time.Duration) error {
	return Poll(ctx, timeout, func() (bool, string) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return d.Status.ReadyReplicas == *d.Spec.Replicas && d.Status.UpdatedReplicas == *d.Spec.Replicas,
			fmt.Sprintf("deployment %s/%s: %d/%d ready", ns, name, d.Status.ReadyReplicas, *d.Spec.Replicas)
	})
}

// WaitDaemonSet waits until every node runs a ready pod of the DaemonSet's current template.
func WaitDaemonSet(ctx context.Context, cs kubernetes.Interface, ns, name string, timeout time.Duration) error {
	return Poll(ctx, timeout, func() (bool, string) {
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

// Poll calls cond until it holds, or fails with its last word after timeout.
func Poll(ctx context.Context, timeout time.Duration, cond func() (bool, string)) error {
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

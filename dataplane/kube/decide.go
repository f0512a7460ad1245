// Package kube is the agent's Kubernetes mode: it watches the pods of its node and the
// namespaces (client-go shared informers), and enrolls the pods labelled for onehop, as Istio's
// CNI plugin and Kmesh enroll theirs, finding each pod's network namespace on the node.
package kube

import (
	"cmp"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/onehop-mesh/onehop/dataplane/datapath"
	"github.com/onehop-mesh/onehop/dataplane/telemetry"
)

const (
	// ModeLabel on a namespace or a pod says which data plane serves its pods (Istio ambient's
	// label). A pod's own label wins over its namespace's, so "none" opts a pod out.
	ModeLabel = "istio.io/dataplane-mode"
	// Mode is ModeLabel's value for onehop.
	Mode = "onehop"
	// TelemetryLabel (pod, else namespace) says how the pod's connections are reported, as in
	// the netns lab (scenarios/variants): "off", "on" (metrics) or "access-log" (metrics and an
	// access log line per connection event). Other values or none: the agent's defaults.
	TelemetryLabel = "onehop.io/telemetry"
	// EnrolledAnnotation is set on a pod, to the node's name, once its network namespace is in
	// the agent's map (its new connections are balanced by onehop), and removed when it is
	// unenrolled: what ambient.istio.io/redirection says for Istio's ambient mode.
	EnrolledAnnotation = "onehop.io/enrolled"
	// SockmapLabel (pod, else namespace) turns same-node acceleration "on" or "off" for the
	// pod; other values or none: the agent's default (--sockmap).
	SockmapLabel = "onehop.io/sockmap"
	// mirrorAnnotation holds a static pod's own UID, the one its cgroups are named after; the
	// apiserver's mirror pod has another.
	mirrorAnnotation = "kubernetes.io/config.mirror"
)

// Wanted says whether onehop should serve pod, given its namespace's labels: the pod has a
// sandbox (a network namespace with processes), is not on the host's network (enrolling it
// would enroll the node), and onehop is its data plane mode.
func Wanted(pod *corev1.Pod, nsLabels map[string]string) bool {
	if pod.Spec.HostNetwork || !hasSandbox(pod) {
		return false
	}
	if mode, ok := pod.Labels[ModeLabel]; ok {
		return mode == Mode
	}
	return nsLabels[ModeLabel] == Mode
}

// hasSandbox: a finished pod's sandbox is torn down; a pending one has a sandbox once an IP is
// assigned or a container (init containers included) runs.
func hasSandbox(pod *corev1.Pod) bool {
	switch pod.Status.Phase {
	case corev1.PodSucceeded, corev1.PodFailed:
		return false
	case corev1.PodRunning:
		return true
	}
	if pod.Status.PodIP != "" {
		return true
	}
	// Two loops, not append: the pod is the informer cache's, which must not be written.
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for _, s := range list {
			if s.State.Running != nil {
				return true
			}
		}
	}
	return false
}

// Options are the enrollment options TelemetryLabel and SockmapLabel ask for (pod, else
// namespace), on top of the agent's defaults.
func Options(pod *corev1.Pod, nsLabels map[string]string, defaults datapath.NetnsOptions) datapath.NetnsOptions {
	label := func(name string) string {
		if v, ok := pod.Labels[name]; ok {
			return v
		}
		return nsLabels[name]
	}
	o := defaults
	switch label(TelemetryLabel) {
	case "off":
		o.Telemetry, o.AccessLog = false, false
	case "on":
		o.Telemetry, o.AccessLog = true, false
	case "access-log":
		o.Telemetry, o.AccessLog = true, true
	}
	switch label(SockmapLabel) {
	case "on":
		o.Sockmap = true
	case "off":
		o.Sockmap = false
	}
	return o
}

// Workload is who the pod is in metric labels, named as Istio names it: the workload is the
// Deployment (its ReplicaSet's name less the pod-template-hash), else the owner, else the pod;
// app and version from the canonical labels, else app/version and app.kubernetes.io's.
func Workload(pod *corev1.Pod, cluster string) *telemetry.Workload {
	l := pod.Labels
	name := pod.Name
	for _, o := range pod.OwnerReferences {
		if o.Controller != nil && *o.Controller {
			name = o.Name
			if h := l["pod-template-hash"]; o.Kind == "ReplicaSet" && h != "" {
				name = strings.TrimSuffix(name, "-"+h)
			}
		}
	}
	app := cmp.Or(l["app"], l["app.kubernetes.io/name"])
	version := cmp.Or(l["version"], l["app.kubernetes.io/version"])
	return &telemetry.Workload{Name: name, Namespace: pod.Namespace, App: app, Version: version,
		CanonicalService:  cmp.Or(l["service.istio.io/canonical-name"], app, name),
		CanonicalRevision: cmp.Or(l["service.istio.io/canonical-revision"], version, "latest"),
		Cluster:           cluster}
}

// PodIPs are the pod's addresses, as the telemetry knows peers on this node.
func PodIPs(pod *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// CgroupUID is the UID the kubelet names the pod's cgroups after.
func CgroupUID(pod *corev1.Pod) string {
	return cmp.Or(pod.Annotations[mirrorAnnotation], string(pod.UID))
}

// Owner marks the enrollments of a pod: "kubernetes:<namespace>/<name>/<uid>".
func Owner(pod *corev1.Pod) string {
	return fmt.Sprintf("%s%s/%s/%s", ownerPrefix, pod.Namespace, pod.Name, pod.UID)
}

const ownerPrefix = "kubernetes:"

// parseOwner returns the pod key (namespace/name) and UID of an Owner mark; ok is false for
// an enrollment that is not Kubernetes mode's.
func parseOwner(owner string) (key, uid string, ok bool) {
	rest, ok := strings.CutPrefix(owner, ownerPrefix)
	if !ok {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '/')
	if i < 0 || strings.IndexByte(rest[:i], '/') < 0 {
		return "", "", false
	}
	return rest[:i], rest[i+1:], true
}

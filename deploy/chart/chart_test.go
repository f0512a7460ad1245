// Package chart tests the Helm chart of onehop-agent (deploy/chart/onehop): helm lint and
// template with default, custom and invalid values, what the DaemonSet asks of the node, and every
// rendered object created in a real kube-apiserver (internal/kubetest), which validates it.
package chart

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/onehop-mesh/onehop/internal/kubetest"
)

const chartDir = "onehop"

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error
)

// helm runs the cached helm binary (built on first use) with its state in a temporary home.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	helmOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		helmPath, helmErr = kubetest.Helm(ctx, t.Logf)
	})
	if helmErr != nil {
		t.Fatalf("helm: %v", helmErr)
	}
	home := t.TempDir()
	cmd := exec.Command(helmPath, args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config",
		"HELM_DATA_HOME="+home+"/data", "KUBECONFIG="+home+"/no-kubeconfig")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), errors.New("helm " + strings.Join(args, " ") + ": " + err.Error() + "\n" + stderr.String() + stdout.String())
	}
	return stdout.String(), nil
}

// render is `helm template` of the chart as release rel in namespace ns, as objects.
func render(t *testing.T, rel, ns string, args ...string) []*unstructured.Unstructured {
	t.Helper()
	out, err := helm(t, append([]string{"template", rel, chartDir, "--namespace", ns}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	dec := yaml.NewYAMLOrJSONDecoder(strings.NewReader(out), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("helm template output: %v\n%s", err, out)
		}
		if len(m) > 0 {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
	return objs
}

// one returns the only object of kind, converted strictly (a field the type does not have fails).
func one[T any](t *testing.T, objs []*unstructured.Unstructured, kind string) *T {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d objects of kind %s rendered, want 1", len(found), kind)
	}
	v := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(found[0].Object, v, true); err != nil {
		t.Fatalf("%s %s: %v", kind, found[0].GetName(), err)
	}
	return v
}

func kinds(objs []*unstructured.Unstructured) []string {
	var k []string
	for _, o := range objs {
		k = append(k, o.GetKind())
	}
	slices.Sort(k)
	return k
}

func TestLint(t *testing.T) {
	if out, err := helm(t, "lint", "--strict", chartDir); err != nil {
		t.Fatal(err)
	} else {
		t.Log(out)
	}
	if _, err := helm(t, "lint", "--strict", chartDir, "-f", "testdata/custom-values.yaml"); err != nil {
		t.Fatal(err)
	}
}

// TestDefaults checks what the DaemonSet asks of each node with the default values.
func TestDefaults(t *testing.T) {
	objs := render(t, "onehop", "istio-system")
	if got, want := kinds(objs), []string{"ClusterRole", "ClusterRoleBinding", "DaemonSet", "Role", "RoleBinding", "ServiceAccount"}; !slices.Equal(got, want) {
		// No PodDisruptionBudget (pinned state carries restarts) and no hook Job (see README).
		t.Errorf("rendered %v, want %v", got, want)
	}
	ds := one[appsv1.DaemonSet](t, objs, "DaemonSet")
	if ds.Name != "onehop-agent" || ds.Namespace != "istio-system" {
		t.Errorf("DaemonSet %s/%s, want istio-system/onehop-agent", ds.Namespace, ds.Name)
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || !spec.HostPID || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork %v hostPID %v dnsPolicy %s, want true true ClusterFirstWithHostNet", spec.HostNetwork, spec.HostPID, spec.DNSPolicy)
	}
	u := ds.Spec.UpdateStrategy
	if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil ||
		*u.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) || *u.RollingUpdate.MaxSurge != intstr.FromInt32(0) {
		t.Errorf("updateStrategy %+v, want RollingUpdate maxUnavailable 1 maxSurge 0", u)
	}
	sa := one[corev1.ServiceAccount](t, objs, "ServiceAccount")
	if spec.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName %q, the chart's ServiceAccount is %q", spec.ServiceAccountName, sa.Name)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if c.Image != "onehop.local/onehop-agent:0.1.0" || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %s pull %s, want onehop.local/onehop-agent:<appVersion> IfNotPresent", c.Image, c.ImagePullPolicy)
	}

	// Least privilege: these capabilities, nothing else, not privileged.
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext.capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("runAsUser %v, want 0", sc.RunAsUser)
	}
	add := slices.Sorted(slices.Values(sc.Capabilities.Add))
	if want := []corev1.Capability{"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"}; !slices.Equal(add, want) {
		t.Errorf("capabilities add %v, want %v", add, want)
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities drop %v, want [ALL]", sc.Capabilities.Drop)
	}

	// Environment: identity from the downward API, memory limit from the container's.
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	for name, path := range map[string]string{"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name",
		"POD_NAMESPACE": "metadata.namespace", "INSTANCE_IP": "status.podIP"} {
		if e := env[name]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != path {
			t.Errorf("%s: %+v, want fieldRef %s", name, e, path)
		}
	}
	mem := env["ONEHOP_MEMORY_LIMIT"]
	if mem.ValueFrom == nil || mem.ValueFrom.ResourceFieldRef == nil {
		t.Fatalf("ONEHOP_MEMORY_LIMIT: %+v, want a resourceFieldRef", mem)
	}
	if r := mem.ValueFrom.ResourceFieldRef; r.Resource != "limits.memory" || r.ContainerName != "agent" || !r.Divisor.Equal(resource.MustParse("1")) {
		t.Errorf("ONEHOP_MEMORY_LIMIT from %+v, want limits.memory of agent in bytes (divisor 1)", r)
	}
	if lim := c.Resources.Limits.Memory(); lim.IsZero() {
		t.Error("no memory limit: ONEHOP_MEMORY_LIMIT would be the node's allocatable memory")
	}
	for name, want := range map[string]string{
		"ONEHOP_XDS_ADDRESS": "istiod.istio-system.svc:15010", "ONEHOP_XDS_MODE": "workload",
		"ONEHOP_KUBERNETES": "true", "ONEHOP_UNINSTALL_ON_DELETE": "true", "ONEHOP_METRICS_ADDRESS": ":15020", "ONEHOP_SOCKMAP": "false",
		"ONEHOP_BPFFS": "/sys/fs/bpf/onehop", "ONEHOP_CGROUP": "/host/sys/fs/cgroup", "ONEHOP_ADMIN_SOCKET": "/run/onehop/agent.sock",
	} {
		if got := env[name].Value; got != want {
			t.Errorf("%s=%q, want %q", name, got, want)
		}
	}

	// Mounts: the paths the agent is told are inside host mounts of the right host paths.
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for _, m := range []struct {
		mountPath, hostPath, agentPath string
		readOnly                       bool
	}{
		{"/sys/fs/bpf", "/sys/fs/bpf", env["ONEHOP_BPFFS"].Value, false},
		{"/host/sys/fs/cgroup", "/sys/fs/cgroup", env["ONEHOP_CGROUP"].Value, true},
		{"/run/onehop", "/run/onehop", env["ONEHOP_ADMIN_SOCKET"].Value, false},
	} {
		vm, ok := mounts[m.mountPath]
		if !ok {
			t.Errorf("nothing mounted at %s", m.mountPath)
			continue
		}
		if hostPaths[vm.Name] != m.hostPath || vm.ReadOnly != m.readOnly {
			t.Errorf("%s: host path %q read-only %v, want %q %v", m.mountPath, hostPaths[vm.Name], vm.ReadOnly, m.hostPath, m.readOnly)
		}
		if !strings.HasPrefix(m.agentPath, m.mountPath) {
			t.Errorf("the agent is told %s, outside the mount %s", m.agentPath, m.mountPath)
		}
	}
	if p := mounts["/sys/fs/bpf"].MountPropagation; p == nil || *p == corev1.MountPropagationBidirectional {
		t.Errorf("bpffs propagation %v: Bidirectional needs a privileged container", p)
	}

	// Probes on the agent's metrics port.
	for name, p := range map[string]*corev1.Probe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name || p.HTTPGet.Port.String() != "http-metrics" {
			t.Errorf("probe %s: %+v", name, p)
		}
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "http-metrics" || c.Ports[0].ContainerPort != 15020 {
		t.Errorf("ports %+v, want http-metrics 15020", c.Ports)
	}

	// RBAC: read pods and namespaces, patch pods (the enrolled annotation) and nothing else;
	// the agent's own DaemonSet for uninstall.onDelete.
	cr := one[rbacv1.ClusterRole](t, objs, "ClusterRole")
	if len(cr.Rules) != 2 || !slices.Equal(cr.Rules[0].Verbs, []string{"get", "list", "watch"}) ||
		!slices.Equal(cr.Rules[0].Resources, []string{"pods", "namespaces"}) ||
		!slices.Equal(cr.Rules[1].Verbs, []string{"patch"}) || !slices.Equal(cr.Rules[1].Resources, []string{"pods"}) {
		t.Errorf("ClusterRole rules %+v, want get/list/watch pods and namespaces, patch pods", cr.Rules)
	}
	role := one[rbacv1.Role](t, objs, "Role")
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].ResourceNames, []string{ds.Name}) || !slices.Equal(role.Rules[0].Verbs, []string{"get", "list", "watch"}) {
		t.Errorf("Role rules %+v, want get, list, watch on daemonset %s only", role.Rules, ds.Name)
	}
}

// TestCustomValues checks that the values users set reach the DaemonSet.
func TestCustomValues(t *testing.T) {
	objs := render(t, "mesh", "onehop-system", "-f", "testdata/custom-values.yaml")
	if got := kinds(objs); slices.Contains(got, "Role") {
		t.Errorf("uninstall.onDelete false still renders a Role: %v", got)
	}
	ds := one[appsv1.DaemonSet](t, objs, "DaemonSet")
	if ds.Name != "mesh-onehop-agent" {
		t.Errorf("DaemonSet %s, want mesh-onehop-agent", ds.Name)
	}
	c := ds.Spec.Template.Spec.Containers[0]
	if c.Image != "onehop.local/onehop-agent:v0.2.0-dev" || c.ImagePullPolicy != corev1.PullNever {
		t.Errorf("image %s %s", c.Image, c.ImagePullPolicy)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	for name, want := range map[string]string{"ONEHOP_XDS_ADDRESS": "istiod.istio-system.svc:15012", "ONEHOP_XDS_MODE": "envoy",
		"ONEHOP_CLUSTER_ID": "east", "ONEHOP_UNINSTALL_ON_DELETE": "false", "ONEHOP_METRICS_ADDRESS": ":15021",
		"ONEHOP_LOG_LEVEL": "debug", "ONEHOP_ACCESS_LOG": "-", "ONEHOP_SOCKMAP": "true"} {
		if env[name] != want {
			t.Errorf("%s=%q, want %q", name, env[name], want)
		}
	}
	if lim := c.Resources.Limits.Memory(); !lim.Equal(resource.MustParse("1Gi")) {
		t.Errorf("memory limit %s, want 1Gi", lim)
	}
	if c.Ports[0].ContainerPort != 15021 || c.ReadinessProbe.HTTPGet.Port.String() != "http-metrics" {
		t.Errorf("port %+v", c.Ports)
	}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == "cgroup" && v.HostPath.Path != "/sys/fs/cgroup/unified" {
			t.Errorf("cgroup host path %s, want /sys/fs/cgroup/unified", v.HostPath.Path)
		}
	}
	if got := ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.String(); got != "10%" {
		t.Errorf("maxUnavailable %s, want 10%%", got)
	}
	if ds.Spec.Template.Labels["team"] != "mesh" {
		t.Errorf("pod labels %v", ds.Spec.Template.Labels)
	}
}

// TestBadValues: values.schema.json rejects each testdata/bad-*.yaml, naming the value.
func TestBadValues(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad-*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata/bad-*.yaml")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(b), "\n")
			want, ok := strings.CutPrefix(first, "# want: ")
			if !ok {
				t.Fatalf("%s: first line must be '# want: <text of the error>'", f)
			}
			_, err = helm(t, "template", "x", chartDir, "-f", f)
			if err == nil {
				t.Fatalf("helm template with %s succeeded", f)
			}
			if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), want) {
				t.Errorf("error does not name the schema and %q:\n%v", want, err)
			}
			t.Log(err)
		})
	}
}

// TestAPIServerAcceptsChart creates every object the chart renders, with default and custom
// values, in a real API server, with strict field validation; checks that the agent's service
// account may do what the agent does and no more; and that helm itself installs and uninstalls
// the release there.
func TestAPIServerAcceptsChart(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(env.Client.Discovery()))
	create := func(obj *unstructured.Unstructured, opts metav1.CreateOptions) error {
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return err
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
		}
		_, err = ri.Create(ctx, obj, opts)
		return err
	}
	strict := metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}

	for _, tc := range []struct{ rel, ns string }{{"onehop", "istio-system"}, {"mesh", "onehop-system"}} {
		if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tc.ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var args []string
		if tc.rel == "mesh" {
			args = []string{"-f", "testdata/custom-values.yaml"}
		}
		for _, obj := range render(t, tc.rel, tc.ns, args...) {
			if err := create(obj, strict); err != nil {
				t.Errorf("%s: create %s %s/%s: %v", tc.rel, obj.GetKind(), obj.GetNamespace(), obj.GetName(), err)
			}
		}
	}

	// The service account may read pods and namespaces, and the one DaemonSet; nothing more.
	sa := "system:serviceaccount:istio-system:onehop"
	for _, c := range []struct {
		attr  authorizationv1.ResourceAttributes
		allow bool
	}{
		{authorizationv1.ResourceAttributes{Verb: "watch", Resource: "pods"}, true},
		{authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods", Namespace: "default"}, true},
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "namespaces", Name: "default"}, true},
		{authorizationv1.ResourceAttributes{Verb: "get", Group: "apps", Resource: "daemonsets", Namespace: "istio-system", Name: "onehop-agent"}, true},
		{authorizationv1.ResourceAttributes{Verb: "watch", Group: "apps", Resource: "daemonsets", Namespace: "istio-system", Name: "onehop-agent"}, true},
		{authorizationv1.ResourceAttributes{Verb: "get", Group: "apps", Resource: "daemonsets", Namespace: "istio-system", Name: "other"}, false},
		{authorizationv1.ResourceAttributes{Verb: "list", Group: "apps", Resource: "daemonsets", Namespace: "istio-system"}, false},
		{authorizationv1.ResourceAttributes{Verb: "update", Resource: "pods", Namespace: "default"}, false},
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: "istio-system"}, false},
		{authorizationv1.ResourceAttributes{Verb: "list", Resource: "nodes"}, false},
	} {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: sa, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:istio-system"}, ResourceAttributes: &c.attr}}
		res, err := env.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Status.Allowed != c.allow {
			t.Errorf("%s %s %s %s/%s: allowed %v, want %v", sa, c.attr.Verb, c.attr.Resource, c.attr.Namespace, c.attr.Name, res.Status.Allowed, c.allow)
		}
	}

	// no_new_privs: the API server takes allowPrivilegeEscalation false next to SYS_ADMIN (its
	// check is for the spelling CAP_SYS_ADMIN), and the chart sets it.
	ds, err := env.Client.AppsV1().DaemonSets("istio-system").Get(ctx, "onehop-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sc := ds.Spec.Template.Spec.Containers[0].SecurityContext; sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation %v, want false", sc.AllowPrivilegeEscalation)
	}

	// helm itself, against the real API: install, then uninstall removes the DaemonSet.
	if out, err := helm(t, "install", "real", chartDir, "--namespace", "helm-real", "--create-namespace", "--kubeconfig", env.Kubeconfig); err != nil {
		t.Fatal(err)
	} else {
		t.Log(out)
	}
	if _, err := env.Client.AppsV1().DaemonSets("helm-real").Get(ctx, "real-onehop-agent", metav1.GetOptions{}); err != nil {
		t.Fatalf("after helm install: %v", err)
	}
	if _, err := helm(t, "uninstall", "real", "--namespace", "helm-real", "--kubeconfig", env.Kubeconfig); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.AppsV1().DaemonSets("helm-real").Get(ctx, "real-onehop-agent", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after helm uninstall: DaemonSet %v, want NotFound", err)
	}
}

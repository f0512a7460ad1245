package kubetest

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// TestAPIServer checks that what Start gives is a real API server: it stores and watches
// objects, validates them, enforces RBAC, and reports the version built.
func TestAPIServer(t *testing.T) {
	env := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := env.Client

	v, err := c.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != KubernetesVersion {
		t.Errorf("server version %s, want %s", v.GitVersion, KubernetesVersion)
	}

	ns, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "kubetest-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.CoreV1().Pods(ns.Name).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: map[string]string{"app": "p"}},
		Spec: corev1.PodSpec{
			NodeName:   "n1", // no scheduler here
			Containers: []corev1.Container{{Name: "c", Image: "onehop.local/none:1"}},
		},
	}
	if _, err := c.CoreV1().Pods(ns.Name).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(t, w, watch.Added, func(p *corev1.Pod) bool { return p.Name == "p" && p.Spec.NodeName == "n1" })
	patch := []byte(`{"metadata":{"labels":{"istio.io/dataplane-mode":"onehop"}}}`)
	if _, err := c.CoreV1().Pods(ns.Name).Patch(ctx, "p", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(t, w, watch.Modified, func(p *corev1.Pod) bool { return p.Labels["istio.io/dataplane-mode"] == "onehop" })
	if err := c.CoreV1().Pods(ns.Name).Delete(ctx, "p", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// No kubelet confirms termination: a pod bound to a node stays with a deletion timestamp.
	expect(t, w, watch.Modified, func(p *corev1.Pod) bool { return p.DeletionTimestamp != nil })

	// Validation is the real one.
	bad := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "no-containers"}}
	if _, err := c.CoreV1().Pods(ns.Name).Create(ctx, bad, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Errorf("pod without containers: got %v, want Invalid", err)
	}

	// RBAC is on: a service account with no bindings may not list pods.
	anon := rest.CopyConfig(env.Config)
	anon.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns.Name + ":nobody"}
	nobody, err := kubernetes.NewForConfig(anon)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nobody.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("unbound service account listing pods: got %v, want Forbidden", err)
	}

	// The kubeconfig file reaches the same server as the admin.
	kc, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := kubernetes.NewForConfig(kc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fromFile.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("through %s: %v", env.Kubeconfig, err)
	}
}

// expect waits for an event of the given type whose pod satisfies ok.
func expect(t *testing.T, w watch.Interface, typ watch.EventType, ok func(*corev1.Pod) bool) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, open := <-w.ResultChan():
			if !open {
				t.Fatalf("watch closed before a %s event", typ)
			}
			if p, isPod := ev.Object.(*corev1.Pod); isPod && ev.Type == typ && ok(p) {
				return
			}
		case <-timeout:
			t.Fatalf("no %s event in 30s", typ)
		}
	}
}

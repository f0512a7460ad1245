package kube

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/onehop-mesh/onehop/dataplane/agent"
	"github.com/onehop-mesh/onehop/internal/kubetest"
)

// memEnroller keeps enrollments as agent.Server does (by netns path) and records every Apply.
type memEnroller struct {
	mu      sync.Mutex
	byNetns map[string]agent.Enrollment
	applied []string // "+ns/name" or "-ns/name"
}

func (m *memEnroller) Apply(e agent.Enrollment, on bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	key, _, _ := parseOwner(e.Owner)
	if on {
		m.byNetns[e.Netns] = e
		m.applied = append(m.applied, "+"+key)
	} else {
		delete(m.byNetns, e.Netns)
		m.applied = append(m.applied, "-"+key)
	}
	return nil
}

func (m *memEnroller) Enrollments() []agent.Enrollment {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []agent.Enrollment
	for _, e := range m.byNetns {
		out = append(out, e)
	}
	return out
}

func (m *memEnroller) pods() []string {
	var out []string
	for _, e := range m.Enrollments() {
		k, _, _ := parseOwner(e.Owner)
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// mapFinder knows the pods that "run": the controller's logic alone, against a real API
// server (the real finder and kernel are cmd/onehop-agent's TestKubernetesMode's).
type mapFinder struct {
	mu   sync.Mutex
	uids map[string]bool
}

func (f *mapFinder) Netns(uid string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.uids[uid] {
		return "", ErrNoProcess
	}
	return "/proc/1" + uid + "/ns/net", nil
}

func (f *mapFinder) run(uid string) {
	f.mu.Lock()
	f.uids[uid] = true
	f.mu.Unlock()
}

// TestControllerAgainstAPIServer: namespace and pod labels, other nodes, deletion, a pod whose
// processes appear late, and a restart with a label removed meanwhile that touches nothing of
// the pods that stay.
func TestControllerAgainstAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	c := env.Client
	ctx := context.Background()
	prefix := fmt.Sprintf("ohkc%d", time.Now().UnixNano()%1e6)
	node := prefix + "-node"
	on := map[string]string{ModeLabel: Mode}
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: prefix + "-a", Labels: on}},
		{ObjectMeta: metav1.ObjectMeta{Name: prefix + "-b"}},
	} {
		if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	finder := &mapFinder{uids: map[string]bool{}}
	enr := &memEnroller{byNetns: map[string]agent.Enrollment{}}
	cookie := func(path string) (uint64, error) { // a namespace per path, as the kernel's would be
		h := fnv.New64a()
		h.Write([]byte(path))
		return h.Sum64(), nil
	}
	start := func() (stop func()) {
		ctx, cancel := context.WithCancel(ctx)
		ctl := &Controller{Client: c, Node: node, Finder: finder, Enroller: enr, Cookie: cookie}
		done := make(chan error, 1)
		go func() { done <- ctl.Run(ctx) }()
		deadline := time.Now().Add(30 * time.Second)
		for !ctl.Ready() {
			if time.Now().After(deadline) {
				t.Fatal("controller not ready")
			}
			time.Sleep(20 * time.Millisecond)
		}
		return func() { cancel(); <-done }
	}
	stop := start()
	defer func() { stop() }()

	mkPod := func(ns, name, nodeName string, labels map[string]string, running bool) *corev1.Pod {
		p, err := c.CoreV1().Pods(prefix+"-"+ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c:1"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.Phase = corev1.PodRunning
		if p, err = c.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if running {
			finder.run(string(p.UID))
		}
		return p
	}
	expect := func(step string, want ...string) {
		t.Helper()
		for i := range want {
			want[i] = prefix + "-" + want[i]
		}
		deadline := time.Now().Add(20 * time.Second)
		for !slices.Equal(enr.pods(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: enrolled %v, want %v", step, enr.pods(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The enrolled annotation follows the enrollment (the API server's copy, eventually).
	annotated := func(step, pod string, want bool) {
		t.Helper()
		ns, name, _ := strings.Cut(pod, "/")
		deadline := time.Now().Add(20 * time.Second)
		for {
			p, err := c.CoreV1().Pods(prefix+"-"+ns).Get(ctx, name, metav1.GetOptions{})
			v, has := "", false
			if err == nil {
				v, has = p.Annotations[EnrolledAnnotation]
			}
			if has == want && (!want || v == node) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: pod %s annotation %s=%q (present %v), want present %v", step, pod, EnrolledAnnotation, v, has, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	a1 := mkPod("a", "a1", node, nil, true)
	mkPod("a", "a2", node, map[string]string{ModeLabel: "none"}, true)
	mkPod("a", "o1", prefix+"-other", nil, true)
	b1 := mkPod("b", "b1", node, on, false) // its processes come later
	mkPod("b", "b2", node, nil, true)
	expect("labels, b1 not running yet", "a/a1")
	finder.run(string(b1.UID))
	expect("b1's processes found on a retry", "a/a1", "b/b1")
	annotated("enrolled", "a/a1", true)
	annotated("opted out", "a/a2", false)

	b1, _ = c.CoreV1().Pods(b1.Namespace).Get(ctx, "b1", metav1.GetOptions{})
	b1.Labels = nil
	if _, err := c.CoreV1().Pods(b1.Namespace).Update(ctx, b1, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("pod label removed", "a/a1")
	annotated("pod label removed", "b/b1", false)
	nsB, _ := c.CoreV1().Namespaces().Get(ctx, prefix+"-b", metav1.GetOptions{})
	nsB.Labels = on
	if _, err := c.CoreV1().Namespaces().Update(ctx, nsB, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("namespace labelled", "a/a1", "b/b1", "b/b2")
	if err := c.CoreV1().Pods(a1.Namespace).Delete(ctx, "a1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	expect("pod deleted", "b/b1", "b/b2")

	// Restart: stopped, b loses its label, b1 gets its own; the new controller removes b2 and
	// leaves b1 alone.
	stop()
	b1, _ = c.CoreV1().Pods(b1.Namespace).Get(ctx, "b1", metav1.GetOptions{})
	b1.Labels = on
	if _, err := c.CoreV1().Pods(b1.Namespace).Update(ctx, b1, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	nsB, _ = c.CoreV1().Namespaces().Get(ctx, prefix+"-b", metav1.GetOptions{})
	nsB.Labels = nil
	if _, err := c.CoreV1().Namespaces().Update(ctx, nsB, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	enr.mu.Lock()
	enr.applied = nil
	enr.mu.Unlock()
	stop = start()
	expect("restarted", "b/b1")
	annotated("restarted", "b/b1", true)
	annotated("restarted", "b/b2", false)
	time.Sleep(500 * time.Millisecond) // anything more it would do
	enr.mu.Lock()
	applied := slices.Clone(enr.applied)
	enr.mu.Unlock()
	if want := []string{"-" + prefix + "-b/b2"}; !slices.Equal(applied, want) {
		t.Errorf("the restarted controller applied %v, want only %v", applied, want)
	}
	for _, e := range enr.Enrollments() {
		if !strings.HasPrefix(e.Owner, ownerPrefix+prefix+"-b/b1/") || e.Pod.Namespace != prefix+"-b" {
			t.Errorf("enrollment %+v", e)
		}
	}
}

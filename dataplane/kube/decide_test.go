package kube

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/onehop-mesh/onehop/dataplane/agent"
	"github.com/onehop-mesh/onehop/dataplane/datapath"
	"github.com/onehop-mesh/onehop/dataplane/telemetry"
)

func pod(labels map[string]string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "0f1e2d3c-aaaa-bbbb-cccc-123456789abc", Labels: labels},
		Status: corev1.PodStatus{Phase: phase}}
}

func TestWanted(t *testing.T) {
	on := map[string]string{ModeLabel: Mode}
	running := corev1.PodRunning
	hostNet := pod(nil, running)
	hostNet.Spec.HostNetwork = true
	pendingWithIP := pod(on, corev1.PodPending)
	pendingWithIP.Status.PodIP = "10.244.1.5"
	pendingInit := pod(on, corev1.PodPending)
	pendingInit.Status.InitContainerStatuses = []corev1.ContainerStatus{{State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		ns   map[string]string
		want bool
	}{
		{"namespace label", pod(nil, running), on, true},
		{"pod label", pod(on, running), nil, true},
		{"no label", pod(nil, running), nil, false},
		{"namespace of another mode", pod(nil, running), map[string]string{ModeLabel: "ambient"}, false},
		{"pod opts out of its namespace", pod(map[string]string{ModeLabel: "none"}, running), on, false},
		{"pod label set empty opts out", pod(map[string]string{ModeLabel: ""}, running), on, false},
		{"pod opts in, namespace of another mode", pod(on, running), map[string]string{ModeLabel: "ambient"}, true},
		{"hostNetwork: would enroll the node", hostNet, on, false},
		{"pending, no sandbox yet", pod(on, corev1.PodPending), nil, false},
		{"pending with an IP", pendingWithIP, nil, true},
		{"pending, init container running", pendingInit, nil, true},
		{"succeeded", pod(on, corev1.PodSucceeded), nil, false},
		{"failed", pod(nil, corev1.PodFailed), on, false},
	} {
		if got := Wanted(tc.pod, tc.ns); got != tc.want {
			t.Errorf("%s: Wanted = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestOptions(t *testing.T) {
	def := datapath.NetnsOptions{Telemetry: true, AccessLog: true}
	for _, tc := range []struct {
		pod, ns map[string]string
		want    datapath.NetnsOptions
	}{
		{nil, nil, def},
		{nil, map[string]string{TelemetryLabel: "off"}, datapath.NetnsOptions{}},
		{map[string]string{TelemetryLabel: "on"}, map[string]string{TelemetryLabel: "off"}, datapath.NetnsOptions{Telemetry: true}},
		{map[string]string{TelemetryLabel: "access-log"}, nil, datapath.NetnsOptions{Telemetry: true, AccessLog: true}},
		{nil, map[string]string{TelemetryLabel: "loud"}, def},
		{nil, map[string]string{SockmapLabel: "on"}, datapath.NetnsOptions{Telemetry: true, AccessLog: true, Sockmap: true}},
		{map[string]string{SockmapLabel: "off", TelemetryLabel: "off"}, map[string]string{SockmapLabel: "on"}, datapath.NetnsOptions{}},
	} {
		if got := Options(pod(tc.pod, corev1.PodRunning), tc.ns, def); got != tc.want {
			t.Errorf("pod %v ns %v: %+v, want %+v", tc.pod, tc.ns, got, tc.want)
		}
	}
}

func TestWorkload(t *testing.T) {
	yes := true
	p := pod(map[string]string{"app": "web", "version": "v2", "pod-template-hash": "7d9f8c"}, corev1.PodRunning)
	p.Name = "web-7d9f8c-x2k4q"
	p.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-7d9f8c", Controller: &yes}}
	p.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.5"}, {IP: "fd00::5"}}
	want := telemetry.Workload{Name: "web", Namespace: "ns", App: "web", Version: "v2", CanonicalService: "web", CanonicalRevision: "v2", Cluster: "c1"}
	if got := Workload(p, "c1"); *got != want {
		t.Errorf("Workload = %+v, want %+v", *got, want)
	}
	if got := PodIPs(p); len(got) != 2 || got[1] != netip.MustParseAddr("fd00::5") {
		t.Errorf("PodIPs = %v", got)
	}
	bare := pod(nil, corev1.PodRunning)
	if got := Workload(bare, ""); got.Name != "p" || got.CanonicalService != "p" || got.CanonicalRevision != "latest" {
		t.Errorf("a bare pod's workload = %+v", *got)
	}
	key, uid, ok := parseOwner(Owner(p))
	if !ok || key != "ns/web-7d9f8c-x2k4q" || uid != string(p.UID) {
		t.Errorf("parseOwner(%q) = %q %q %v", Owner(p), key, uid, ok)
	}
	for _, o := range []string{"", "admin", "kubernetes:x", "kubernetes:ns/name"} {
		if _, _, ok := parseOwner(o); ok {
			t.Errorf("parseOwner(%q) ok", o)
		}
	}
	mirror := pod(nil, corev1.PodRunning)
	mirror.Annotations = map[string]string{mirrorAnnotation: "6b3c1e0d9f2a4b5c8d7e6f5a4b3c2d1e"}
	if got := CgroupUID(mirror); got != "6b3c1e0d9f2a4b5c8d7e6f5a4b3c2d1e" {
		t.Errorf("a static pod's cgroup UID = %q, want its config hash", got)
	}
}

// Both cgroup drivers, v1 and v2 lines, the nesting seen through a cgroup namespace.
func TestPodUIDFromCgroup(t *testing.T) {
	const uid = "0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
	for _, tc := range []struct{ name, cgroup, want string }{
		{"cgroupfs v2", "0::/kubepods/besteffort/pod" + uid + "/4f1c2a9b0e\n", uid},
		{"cgroupfs v2, guaranteed", "0::/kubepods/pod" + uid + "/4f1c2a9b0e\n", uid},
		{"cgroupfs v1", "12:memory:/kubepods/burstable/pod" + uid + "/abc\n11:cpu,cpuacct:/kubepods/burstable/pod" + uid + "/abc\n0::/\n", uid},
		{"systemd", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_aaaa_bbbb_cccc_123456789abc.slice/cri-containerd-4f1c.scope\n", uid},
		{"systemd guaranteed", "0::/kubepods.slice/kubepods-pod0f1e2d3c_aaaa_bbbb_cccc_123456789abc.slice/crio-4f1c.scope\n", uid},
		{"through a cgroup namespace", "0::/../../kubepods/besteffort/pod" + uid + "/c\n", uid},
		{"hybrid, pod only in v2", "4:memory:/user.slice\n0::/onehop-x/kubepods/besteffort/pod" + uid + "/c\n", uid},
		{"static pod", "0::/kubepods/burstable/pod6b3c1e0d9f2a4b5c8d7e6f5a4b3c2d1e/c\n", "6b3c1e0d9f2a4b5c8d7e6f5a4b3c2d1e"},
		{"no pod", "0::/system.slice/containerd.service\n", ""},
		{"kubepods itself", "0::/kubepods/besteffort\n", ""},
		{"looks like pod, not a UID", "0::/podman/pod-network\n", ""},
		{"uppercase is no kubelet UID", "0::/kubepods/pod0F1E2D3C-AAAA-BBBB-CCCC-123456789ABC/c\n", ""},
		{"garbage", "nonsense", ""},
	} {
		if got := PodUIDFromCgroup(tc.cgroup); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// ProcFinder over a /proc-shaped tree: the lowest live pid of the pod, kept while it lives.
func TestProcFinder(t *testing.T) {
	const uid = "0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
	root := t.TempDir()
	proc := func(pid, cgroup string, withNetns bool) {
		os.MkdirAll(filepath.Join(root, pid, "ns"), 0o755)
		os.WriteFile(filepath.Join(root, pid, "cgroup"), []byte(cgroup), 0o644)
		if withNetns {
			os.WriteFile(filepath.Join(root, pid, "ns", "net"), nil, 0o644)
		}
	}
	f := &ProcFinder{Root: root}
	if _, err := f.Netns(uid); err != ErrNoProcess {
		t.Fatalf("no process yet: %v, want ErrNoProcess", err)
	}
	proc("1", "0::/init.scope\n", true)
	proc("300", "0::/kubepods/besteffort/pod"+uid+"/app\n", true)
	proc("250", "0::/kubepods/besteffort/pod"+uid+"/pause\n", true)
	proc("200", "0::/kubepods/besteffort/pod"+uid+"/zombie\n", false)
	os.MkdirAll(filepath.Join(root, "self"), 0o755)
	got, err := f.Netns(uid)
	if want := filepath.Join(root, "250", "ns", "net"); err != nil || got != want {
		t.Fatalf("Netns = %q, %v; want %q", got, err, want)
	}
	proc("100", "0::/kubepods/besteffort/pod"+uid+"/late\n", true) // a lower pid later (pids wrapped)
	if got2, _ := f.Netns(uid); got2 != got {
		t.Errorf("Netns moved from %q to %q while the first process lives", got, got2)
	}
	os.RemoveAll(filepath.Join(root, "250"))
	if got, _ := f.Netns(uid); got != filepath.Join(root, "100", "ns", "net") {
		t.Errorf("after the process went away: %q", got)
	}
}

// same: what the controller compares to leave a right enrollment alone.
func TestSame(t *testing.T) {
	w := telemetry.Workload{Name: "web"}
	a := agent.Enrollment{Netns: "/proc/1/ns/net", Cookie: 7, Pod: &w, PodIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Owner: "kubernetes:a/b/c"}
	b := a
	w2 := w
	b.Pod = &w2
	if !same(a, b) {
		t.Error("equal enrollments differ")
	}
	b.PodIPs = nil
	if same(a, b) {
		t.Error("other pod IPs are the same")
	}
	b = a
	b.Options.Telemetry = true
	if same(a, b) {
		t.Error("other options are the same")
	}
}

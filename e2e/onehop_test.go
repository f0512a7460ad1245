package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"fortio.org/fortio/fhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/features"

	"github.com/onehop-mesh/onehop/bench/loadgen"
	"github.com/onehop-mesh/onehop/bench/probe"
	"github.com/onehop-mesh/onehop/dataplane/kube"
	"github.com/onehop-mesh/onehop/deploy/install"
)

// Every node runs one ready agent of the chart, healthy and ready by its own endpoints.
func TestAgentRollout(t *testing.T) {
	f := features.New("agent rollout").
		Assess("every node runs a ready agent", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			cs := must(clientset(cfg))(t)
			if err := install.WaitDaemonSet(ctx, cs, system, agentDS, time.Minute); err != nil {
				t.Fatal(err)
			}
			nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			agents := agentPods(ctx, t, cs)
			if len(agents) != len(nodes.Items) {
				t.Fatalf("%d agents for %d nodes", len(agents), len(nodes.Items))
			}
			for _, p := range agents {
				for _, path := range []string{"/healthz", "/readyz"} {
					if _, err := proxyGet(ctx, cs, system, p.Name, 15020, path); err != nil {
						t.Errorf("agent %s on %s: %s: %v", p.Name, p.Spec.NodeName, path, err)
					}
				}
			}
			return ctx
		}).Feature()
	testenv.Test(t, f)
}

// Pods of a namespace labelled istio.io/dataplane-mode=onehop are enrolled: their connections to
// a Service's VIP are balanced by the agent over the Service's pods (both get requests, and the
// agent counts the connections for that service), and no request fails. Once the label is
// removed the agent unenrolls them: the same load is no longer counted by it.
func TestEnrollmentAndBalancing(t *testing.T) {
	ns := "e2e-enroll"
	f := features.New("enrollment and VIP balancing").
		Setup(enrolledWeb(ns)).
		Assess("connections to the VIP are balanced by onehop over both pods", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			cs := must(clientset(cfg))(t)
			enrolledAnnotation(ctx, t, cs, ns, true)
			before := webCounts(ctx, t, cs, ns)
			opened := connectionsOpened(ctx, t, cs, ns)
			res := runLoad(ctx, t, cs, ns, "load-1")
			after := webCounts(ctx, t, cs, ns)
			var served int64
			for pod, n := range after {
				d := n - before[pod]
				t.Logf("%s served %d", pod, d)
				if d == 0 {
					t.Errorf("pod %s served nothing: the VIP was not balanced over it", pod)
				}
				served += d
			}
			ok := res.RetCodes[200]
			if ok == 0 || ok != res.DurationHistogram.Count || served < ok {
				t.Errorf("%d requests, %d answered 200, the pods served %d", res.DurationHistogram.Count, ok, served)
			}
			got := connectionsOpened(ctx, t, cs, ns) - opened
			t.Logf("%d requests over %d connections; the agent counted %.0f connections from client to web", ok, res.SocketCount, got)
			if got < float64(res.SocketCount) {
				t.Errorf("the agent counted %.0f connections to web from the client, fortio opened %d: not enrolled, or not balanced by onehop", got, res.SocketCount)
			}
			return ctx
		}).
		Assess("removing the label unenrolls the pods", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			cs := must(clientset(cfg))(t)
			patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:null}}}`, kube.ModeLabel)
			if _, err := cs.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			enrolledAnnotation(ctx, t, cs, ns, false)
			opened := connectionsOpened(ctx, t, cs, ns)
			res := runLoad(ctx, t, cs, ns, "load-2")
			if got := connectionsOpened(ctx, t, cs, ns) - opened; got != 0 {
				t.Errorf("after the label's removal the agent still counted %.0f connections from the namespace's client", got)
			}
			if res.RetCodes[200] != res.DurationHistogram.Count {
				t.Errorf("without onehop (kube-proxy) %d of %d requests answered 200", res.RetCodes[200], res.DurationHistogram.Count)
			}
			return ctx
		}).
		Teardown(removeNamespace(ns)).Feature()
	testenv.Test(t, f)
}

// Pods of a namespace labelled onehop.io/sockmap=on talk to pods of their own node socket to
// socket: the agents count payloads redirected by sk_msg, every request succeeds, and telemetry
// still sees the connections.
func TestSameNodeAcceleration(t *testing.T) {
	ns := "e2e-sockmap"
	f := features.New("same-node acceleration").
		Setup(func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			cs := must(clientset(cfg))(t)
			createNamespace(ctx, t, cs, ns, map[string]string{kube.ModeLabel: kube.Mode, kube.SockmapLabel: "on"})
			deployWeb(ctx, t, cs, ns)
			return ctx
		}).
		Assess("same-node payloads are redirected and nothing fails", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			cs := must(clientset(cfg))(t)
			enrolledAnnotation(ctx, t, cs, ns, true)
			redirected, opened := agentMetric(ctx, t, cs, "onehop_kernel_msg_redirected_total", nil), connectionsOpened(ctx, t, cs, ns)
			res := runLoad(ctx, t, cs, ns, "load-sockmap")
			if res.RetCodes[200] == 0 || res.RetCodes[200] != res.DurationHistogram.Count {
				t.Errorf("%d requests, %d answered 200", res.DurationHistogram.Count, res.RetCodes[200])
			}
			if !sharesANode(ctx, t, cs, ns, "job-name=load-sockmap", "app=web") {
				t.Skip("the load's pod and the web pods ran on different nodes: nothing same-node to accelerate")
			}
			r, o := agentMetric(ctx, t, cs, "onehop_kernel_msg_redirected_total", nil)-redirected, connectionsOpened(ctx, t, cs, ns)-opened
			t.Logf("%d requests over %d connections: %.0f payloads redirected, %.0f connections reported", res.RetCodes[200], res.SocketCount, r, o)
			if r < float64(res.SocketCount) {
				t.Errorf("%.0f payloads redirected for %d same-node connections: want at least one each", r, res.SocketCount)
			}
			if o < float64(res.SocketCount) {
				t.Errorf("telemetry counted %.0f connections, fortio opened %d", o, res.SocketCount)
			}
			return ctx
		}).
		Teardown(removeNamespace(ns)).Feature()
	testenv.Test(t, f)
}

// sharesANode reports whether a pod of selector a runs on the node of a pod of selector b.
func sharesANode(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, a, b string) bool {
	t.Helper()
	nodes := func(sel string) map[string]bool {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, p := range pods.Items {
			out[p.Spec.NodeName] = true
		}
		return out
	}
	nb := nodes(b)
	for n := range nodes(a) {
		if nb[n] {
			return true
		}
	}
	return false
}

// The agents' DaemonSet is restarted (kubectl rollout restart) while a client holds long-lived
// connections and opens new ones to an enrolled service: as in Cilium's conn-disrupt test, any
// lost connection or failed request fails.
func TestRestartUnderTraffic(t *testing.T) {
	ns := "e2e-restart"
	f := features.New("agent restart under traffic").
		Setup(enrolledWeb(ns)).
		Assess("no connection or request is lost", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			cs := must(clientset(cfg))(t)
			vip := serviceVIP(ctx, t, cs, ns)
			conf, _ := json.Marshal(probe.Config{Target: vip + ":8080", Path: loadgen.EchoPath, LongLived: 8, NewConnRate: 20,
				Duration: 30 * time.Second, Timeout: 2 * time.Second})
			startJob(ctx, t, cs, ns, "probe", "workload", "probe", "--config", string(conf))
			waitLog(ctx, t, cs, ns, "probe", `"event":"started"`)
			restartAt := time.Now()
			patch := fmt.Appendf(nil, `{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, restartAt.Format(time.RFC3339))
			if _, err := cs.AppsV1().DaemonSets(system).Patch(ctx, agentDS, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second) // the controller sees the new template before waitDaemonSet looks
			if err := install.WaitDaemonSet(ctx, cs, system, agentDS, 2*time.Minute); err != nil {
				t.Fatal(err)
			}
			t.Logf("DaemonSet rolled in %s", time.Since(restartAt).Round(100*time.Millisecond))
			logs := waitJob(ctx, t, cs, ns, "probe", time.Minute)
			var res probe.Result
			for line := range strings.Lines(logs) {
				if strings.Contains(line, `"summary"`) {
					if err := json.Unmarshal([]byte(line), &res); err != nil {
						t.Fatal(err)
					}
				}
			}
			s := res.Summary
			t.Logf("probe: %d requests ok, %d failed; long-lived %d ok, %d lost; new connections %d ok, %d failed",
				s.RequestsOK, s.RequestsFailed, s.LongLivedOK, s.LongLivedFailed, s.NewConnOK, s.NewConnFailed)
			if s.RequestsOK == 0 || s.RequestsFailed != 0 || s.LongLivedFailed != 0 || s.NewConnFailed != 0 || s.ConnectErrors != 0 {
				t.Errorf("traffic was disrupted by the agents' restart: %+v", s)
			}
			return ctx
		}).
		Teardown(removeNamespace(ns)).Feature()
	testenv.Test(t, f)
}

func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func createNamespace(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns string, labels map[string]string) {
	t.Helper()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func deleteNamespace(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns string) {
	if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	if err := install.Poll(ctx, 2*time.Minute, func() (bool, string) {
		_, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return err != nil, "namespace " + ns + " still terminating"
	}); err != nil {
		t.Error(err)
	}
}

// deployWeb runs two fortio servers (the lab's workload) behind Service web.
func deployWeb(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	two := int32(2)
	labels := map[string]string{"app": "web"}
	_, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Replicas: &two, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
				AutomountServiceAccountToken: new(bool),
				Containers: []corev1.Container{{Name: "fortio", Image: setup.workload, ImagePullPolicy: corev1.PullIfNotPresent,
					Args: []string{"workload", "fortio-server", "--stats-host", "0.0.0.0"},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
						PeriodSeconds: 1}}}}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := install.WaitDeployment(ctx, cs, ns, "web", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

func serviceVIP(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns string) string {
	t.Helper()
	svc, err := cs.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

// startJob runs the workload image with args as a one-pod Job (label app=client).
func startJob(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string, args ...string) {
	t.Helper()
	zero := int32(0)
	_, err := cs.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: batchv1.JobSpec{BackoffLimit: &zero, Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "client"}},
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, AutomountServiceAccountToken: new(bool),
				Containers: []corev1.Container{{Name: "client", Image: setup.workload, ImagePullPolicy: corev1.PullIfNotPresent, Args: args}}}}}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func jobPod(ctx context.Context, cs kubernetes.Interface, ns, job string) (string, error) {
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=" + job})
	if err != nil || len(pods.Items) == 0 {
		return "", fmt.Errorf("no pod of job %s/%s yet: %v", ns, job, err)
	}
	return pods.Items[0].Name, nil
}

func podLogs(ctx context.Context, cs kubernetes.Interface, ns, pod string) (string, error) {
	b, err := cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: "client"}).DoRaw(ctx)
	return string(b), err
}

// waitLog waits until the job's pod has logged want.
func waitLog(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, job, want string) {
	t.Helper()
	if err := install.Poll(ctx, 2*time.Minute, func() (bool, string) {
		pod, err := jobPod(ctx, cs, ns, job)
		if err != nil {
			return false, err.Error()
		}
		logs, err := podLogs(ctx, cs, ns, pod)
		return err == nil && strings.Contains(logs, want), fmt.Sprintf("%s has not logged %s: %q %v", pod, want, logs, err)
	}); err != nil {
		t.Fatal(err)
	}
}

// waitJob waits for the job to succeed and returns its pod's log.
func waitJob(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string, timeout time.Duration) string {
	t.Helper()
	if err := install.Poll(ctx, timeout, func() (bool, string) {
		j, err := cs.BatchV1().Jobs(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if j.Status.Failed > 0 {
			pod, _ := jobPod(ctx, cs, ns, name)
			logs, _ := podLogs(ctx, cs, ns, pod)
			t.Fatalf("job %s/%s failed:\n%s", ns, name, logs)
		}
		return j.Status.Succeeded > 0, fmt.Sprintf("job %s/%s: %d active", ns, name, j.Status.Active)
	}); err != nil {
		t.Fatal(err)
	}
	pod, err := jobPod(ctx, cs, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	logs, err := podLogs(ctx, cs, ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	return logs
}

// runLoad sends 3 s of fortio load at 50 QPS over 4 connections, a new connection per request,
// to the web Service's VIP from a client Job in ns, and returns fortio's result.
func runLoad(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string) fhttp.HTTPRunnerResults {
	t.Helper()
	opts, _ := json.Marshal(loadgen.Options{URL: "http://" + serviceVIP(ctx, t, cs, ns) + ":8080" + loadgen.EchoPath,
		QPS: 50, Connections: 4, Duration: 3 * time.Second, KeepAlive: false, Timeout: 2 * time.Second})
	startJob(ctx, t, cs, ns, name, "workload", "fortio-load", "--options", string(opts))
	logs := waitJob(ctx, t, cs, ns, name, 2*time.Minute)
	for line := range strings.Lines(logs) {
		var e loadgen.Event
		if json.Unmarshal([]byte(line), &e) == nil && e.Event == "result" {
			var res fhttp.HTTPRunnerResults
			if err := json.Unmarshal(e.Fortio, &res); err != nil {
				t.Fatal(err)
			}
			return res
		}
	}
	t.Fatalf("no result in the load's log:\n%s", logs)
	return fhttp.HTTPRunnerResults{}
}

// proxyGet GETs path on a pod's port through the API server's pod proxy.
func proxyGet(ctx context.Context, cs kubernetes.Interface, ns, pod string, port int, path string) ([]byte, error) {
	return cs.CoreV1().RESTClient().Get().Namespace(ns).Resource("pods").Name(pod + ":" + strconv.Itoa(port)).
		SubResource("proxy").Suffix(path).DoRaw(ctx)
}

// enrolledAnnotation waits until every pod of ns has the agent's enrolled annotation (on), or
// none has (off).
func enrolledAnnotation(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns string, on bool) {
	t.Helper()
	err := install.Poll(ctx, time.Minute, func() (bool, string) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, p := range pods.Items {
			if _, has := p.Annotations[kube.EnrolledAnnotation]; has != on && p.Status.Phase == corev1.PodRunning {
				return false, fmt.Sprintf("pod %s/%s: annotation %s present %v", ns, p.Name, kube.EnrolledAnnotation, has)
			}
		}
		return len(pods.Items) > 0, "no pods in " + ns
	})
	if err != nil {
		t.Fatal(err)
	}
}

// webCounts are the requests each web pod has served (its fortio server's own count).
func webCounts(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns string) map[string]int64 {
	t.Helper()
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, p := range pods.Items {
		b, err := proxyGet(ctx, cs, ns, p.Name, loadgen.StatsPort, "/requests")
		if err != nil {
			t.Fatalf("request count of %s: %v", p.Name, err)
		}
		var st loadgen.ServerStats
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		out[p.Name] = st.Echo
	}
	return out
}

func agentPods(ctx context.Context, t *testing.T, cs kubernetes.Interface) []corev1.Pod {
	t.Helper()
	pods, err := cs.CoreV1().Pods(system).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=onehop"})
	if err != nil {
		t.Fatal(err)
	}
	return pods.Items
}

// connectionsOpened sums, over every agent, the TCP connections it counted from client pods of
// ns to its web Service (Istio's standard metric, source side).
func connectionsOpened(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns string) float64 {
	t.Helper()
	return agentMetric(ctx, t, cs, "istio_tcp_connections_opened_total", map[string]string{"reporter": "source",
		"source_workload_namespace": ns, "destination_service": "web." + ns + ".svc.cluster.local"})
}

// agentMetric sums a counter's series with labels over every node's agent.
func agentMetric(ctx context.Context, t *testing.T, cs kubernetes.Interface, family string, labels map[string]string) float64 {
	t.Helper()
	var sum float64
	for _, p := range agentPods(ctx, t, cs) {
		b, err := proxyGet(ctx, cs, system, p.Name, 15020, "/metrics")
		if err != nil {
			t.Fatalf("metrics of agent %s: %v", p.Name, err)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatal(err)
		}
		fam := fams[family]
		if fam == nil {
			continue
		}
		for _, m := range fam.Metric {
			if hasLabels(m, labels) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.Label {
		if v, ok := want[l.GetName()]; ok && v == l.GetValue() {
			n++
		}
	}
	return n == len(want)
}

// enrolledWeb makes namespace ns, labelled for onehop, with the web Service and its two pods.
func enrolledWeb(ns string) features.Func {
	return func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
		cs := must(clientset(cfg))(t)
		createNamespace(ctx, t, cs, ns, map[string]string{kube.ModeLabel: kube.Mode})
		deployWeb(ctx, t, cs, ns)
		return ctx
	}
}

func removeNamespace(ns string) features.Func {
	return func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
		deleteNamespace(ctx, t, must(clientset(cfg))(t), ns)
		return ctx
	}
}

package localkube

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/kube"

	"github.com/onehop-mesh/onehop/scenarios"
)

// A scenario runs on a real Kubernetes cluster as on the netns lab: baseline (the cluster's
// kube-proxy) and onehop (its chart), pods and services as API objects, fortio exec'd into the
// client pod; every run valid, and its requests counted by its own service's server (read
// through a port forward), none elsewhere.
func TestProviderRunsAScenario(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	lab := fmt.Sprintf("p%d", os.Getpid()%100000)
	p := &Provider{Source: repoRoot(), Link: mustPrefix("10.250.3.0/30"), Logf: t.Logf}
	t.Cleanup(func() { Down(context.Background(), lab) })
	s, err := scenarios.Parse("test.yaml", []byte(`
name: kube-test
cluster: {nodes: 1}
variants: [baseline, onehop]
placements: [same-node]
load:
  qps: 200
  connections: [2]
  keepalive: [true, false]
  duration: 1s
  warmup: 200ms
  repetitions: 1
`))
	if err != nil {
		t.Fatal(err)
	}
	r := &scenarios.Runner{Provider: p, Binary: "onehop", ResultsDir: t.TempDir(), Lab: lab}
	res, _, err := r.Run(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if res.Cluster.Provider != ProviderName || len(res.Runs) != 4 {
		t.Fatalf("provider %q, %d runs", res.Cluster.Provider, len(res.Runs))
	}
	for _, run := range res.Runs {
		if run.Routing == nil {
			t.Fatalf("%s keepalive=%v: no routing check", run.Variant, run.KeepAlive)
		}
		t.Logf("%s keepalive=%v: p50 %.0f us, %d requests at their own server, elsewhere %v, valid %v %v",
			run.Variant, run.KeepAlive, run.Latency.Percentiles["p50"], run.Routing.Target, run.Routing.Elsewhere, run.Valid, run.Invalid)
		if !run.Valid || run.Routing.Target == 0 || len(run.Routing.Elsewhere) != 0 {
			t.Errorf("%s keepalive=%v: valid %v %v, routing %+v", run.Variant, run.KeepAlive, run.Valid, run.Invalid, run.Routing)
		}
	}
	if d := res.Variants["onehop"]; d == "" || res.Variants["baseline"] == "" {
		t.Errorf("variant descriptions %v", res.Variants)
	}
	if _, err := os.Stat("/var/tmp/onehop-kube/" + lab); err == nil {
		t.Errorf("the lab's cluster is still there after the run")
	}
}

// A lab pod on Kubernetes is a Deployment of one pod, named as the lab names it: processes run
// in its current pod, its loopback is reached through a port forward, and deleting the lab pod
// deletes the Deployment.
func TestLabPodsAreDeployments(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	lab := fmt.Sprintf("d%d", os.Getpid()%100000)
	p := &Provider{Source: repoRoot(), Link: mustPrefix("10.250.3.0/30"), Logf: t.Logf}
	t.Cleanup(func() { Down(context.Background(), lab) })
	ctx := context.Background()
	c, err := p.Up(ctx, clusters.Spec{Name: lab, Nodes: 1, Pods: []clusters.PodSpec{
		{Name: "client", Node: "n1"},
		{Name: "web", Node: "n1", Labels: map[string]string{"app": "web"}, Workload: &clusters.Workload{Kind: "fortio-server"}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cs := c.(interface{ Clientset() kubernetes.Interface }).Clientset()
	d, err := cs.AppsV1().Deployments("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Status.ReadyReplicas != 1 || d.Spec.Template.Labels["app"] != "web" {
		t.Errorf("deployment web: %d ready, template labels %v", d.Status.ReadyReplicas, d.Spec.Template.Labels)
	}
	pods, _ := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: kube.PodLabel + "=web"})
	if len(pods.Items) != 1 || pods.Items[0].Name == "web" || pods.Items[0].OwnerReferences[0].Kind != "ReplicaSet" {
		t.Fatalf("web's pods: %+v", pods.Items)
	}
	web, _ := c.Pod("web")
	if got := pods.Items[0].Status.PodIP; len(web.IPs) != 1 || web.IPs[0].String() != got {
		t.Errorf("lab pod web has %v, its pod %s", web.IPs, got)
	}

	// A process in the client's pod reaches web's server by address.
	var out bytes.Buffer
	proc, err := c.Start(ctx, "client", clusters.Command{Name: "get", Stdout: &out,
		Argv: []string{"onehop", "workload", "first-request", "--target", web.IPs[0].String() + ":8080", "--timeout", "10s"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Cmd.Wait(); err != nil || !strings.Contains(out.String(), "first_success_unix_ns") {
		t.Fatalf("request from client: %v %q\n%s", err, out.String(), proc.LogTail(2000))
	}
	// web's own count, read on its loopback through the port forward.
	conn, err := c.Dial(ctx, "web", "tcp", "127.0.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()

	if err := c.DeletePod(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AppsV1().Deployments("default").Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("deployment web after DeletePod: %v", err)
	}
	if _, ok := c.Pod("web"); ok {
		t.Errorf("lab pod web still listed")
	}
}

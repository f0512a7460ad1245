package localkube

import (
	"context"
	"fmt"
	"os"
	"testing"

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

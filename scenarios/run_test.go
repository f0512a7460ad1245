package scenarios

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/report"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/internal/testbin"
	"github.com/onehop-mesh/onehop/scenarios/variants"
)

// A short real run: lab up, baseline, fortio through the VIP on both placements, CPU sampled,
// result written, report rendered, lab gone.
// testRunner runs scenarios on a lab of its own, removed when the test ends, with results in a
// temporary directory.
func testRunner(t *testing.T, lab string) *Runner {
	testbin.RequireRoot(t)
	p, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	p.Binary = testbin.Onehop(t)
	t.Setenv("ONEHOP_AGENT_BIN", p.Binary+"-agent") // where the registered onehop variant finds it
	t.Cleanup(func() { p.Down(context.Background(), lab) })
	return &Runner{Provider: p, Binary: p.Binary, ResultsDir: t.TempDir(), Lab: lab}
}

// runYAML runs the scenario given as YAML with r, failing the test on any error.
func runYAML(t *testing.T, r *Runner, yaml string) (*bench.Result, string) {
	t.Helper()
	s, err := Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	res, path, err := r.Run(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	return res, path
}

func TestRunScenarioEndToEnd(t *testing.T) {
	lab := "tr" + strings.ToLower(strings.ReplaceAll(t.Name(), "Test", ""))[:6]
	r := testRunner(t, lab)
	res, path := runYAML(t, r, `
name: e2e
variants: [baseline]
load:
  qps: 200
  connections: [1, 4]
  duration: 1s
  warmup: 200ms
`)
	if _, err := os.Stat("/run/netns/onehop-" + lab + "-n1"); err == nil {
		t.Error("lab still up after the run")
	}
	if len(res.Runs) != 4 {
		t.Fatalf("%d runs, want 4 (2 placements x 2 connection counts)", len(res.Runs))
	}
	for _, run := range res.Runs {
		if !run.Valid {
			t.Errorf("run %s invalid: %v", run.ID, run.Invalid)
		}
		if run.Latency.Percentiles["p99"] <= 0 || len(run.Fortio) < 500 {
			t.Errorf("run %s: no latency data (p99 %v, fortio %d bytes)", run.ID, run.Latency.Percentiles["p99"], len(run.Fortio))
		}
		if run.CPU.Host.BusyMS <= 0 || run.CPUPer1k.Components["client"] <= 0 || run.CPUPer1k.Components["server"] <= 0 {
			t.Errorf("run %s: CPU not sampled: host %v, per 1k %v", run.ID, run.CPU.Host, run.CPUPer1k)
		}
		if rt := run.Routing; rt == nil || rt.Target < run.Latency.Requests || len(rt.Elsewhere) > 0 {
			t.Errorf("run %s: routing %+v, want its %d requests at its own servers only", run.ID, rt, run.Latency.Requests)
		}
		if run.CPU.WindowSeconds < 0.9 || run.CPU.WindowSeconds > 2 {
			t.Errorf("run %s: CPU window %.2fs does not match the 1s measured run (warm-up excluded)", run.ID, run.CPU.WindowSeconds)
		}
	}
	if res.Environment.Kernel == "" || !strings.HasPrefix(res.Environment.Tools["iptables"], "iptables v") || res.EndedAt.Before(res.StartedAt) {
		t.Errorf("environment metadata incomplete: %+v", res.Environment)
	}
	back, err := bench.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(r.ResultsDir, "report")
	files, err := report.Render(back, out)
	if err != nil || len(files) < 3 {
		t.Fatalf("render: %v %v", files, err)
	}
}

// misrouted is a data plane with a routing bug: its client pod's connections to port 8080 go to
// the baseline's same-node server, whatever service they were for. Every fortio server answers
// alike, so only the servers' own request counts can tell.
type misrouted struct{}

func (misrouted) Name() string              { return "misrouted" }
func (misrouted) Describe() string          { return "test: DNAT to another namespace's server" }
func (misrouted) Labels() map[string]string { return nil }
func (misrouted) Install(ctx context.Context, c clusters.Cluster) error {
	to, _ := c.Pod("baseline-server-same-node-0")
	p, err := c.Start(ctx, clientPod("misrouted"), clusters.Command{Name: "misroute", Argv: []string{"iptables", "-w", "-t", "nat",
		"-A", "OUTPUT", "-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", to.IPs[0].String() + ":8080"}})
	if err != nil {
		return err
	}
	return p.Wait()
}
func (misrouted) Uninstall(context.Context, clusters.Cluster) error { return nil }

func TestMisroutedRunIsInvalid(t *testing.T) {
	variants.RegisterNetns(func(clusters.Cluster) variants.NetnsVariant { return misrouted{} })
	r := testRunner(t, "trmisrt")
	res, _ := runYAML(t, r, `
name: misrouted
variants: [baseline, misrouted]
placements: [same-node]
load:
  qps: 200
  connections: [2]
  duration: 1s
  warmup: 200ms
`)
	for _, run := range res.Runs {
		switch run.Variant {
		case "baseline":
			if !run.Valid || run.Routing.Target < run.Latency.Requests {
				t.Errorf("baseline run %s: valid %v %v, routing %+v", run.ID, run.Valid, run.Invalid, run.Routing)
			}
		case "misrouted":
			// Every request succeeded (the wrong server answered): only routing can flag it.
			if run.Valid || run.Latency.Errors > 0 || run.Routing.Target != 0 || run.Routing.Elsewhere["baseline/baseline-server-same-node-0"] < run.Latency.Requests ||
				!strings.Contains(strings.Join(run.Invalid, ";"), "misrouted") {
				t.Errorf("misrouted run %s: valid %v %v, errors %d, routing %+v", run.ID, run.Valid, run.Invalid, run.Latency.Errors, run.Routing)
			}
		}
	}
}

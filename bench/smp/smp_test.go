package smp

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/sysinfo"
)

func sample() *bench.Result {
	t0 := time.Date(2026, 12, 1, 5, 33, 29, 0, time.UTC)
	run := func(variant string, valid bool) bench.Run {
		r := bench.Run{
			ID: variant + "/same-node/c8/keepalive/r1", Variant: variant, Placement: "same-node",
			Connections: 8, KeepAlive: true, Mode: "fixed-qps", RequestedQPS: 1000,
			Duration: 6 * time.Second, PayloadBytes: 1024, Repetition: 1, Target: "http://10.96.0.1:8080/echo",
			StartedAt: t0.Add(time.Second), EndedAt: t0.Add(7 * time.Second), Valid: valid,
			Latency: bench.Latency{
				Requests: 6000, Errors: 3, Sockets: 11, RespBytes: 6966000, ActualQPS: 999.5,
				AvgUS: 416, MinUS: 211, MaxUS: 2971,
				Percentiles: map[string]float64{"p50": 396, "p90": 542, "p99": 858, "p99.9": 2125},
			},
			CPUPer1k: bench.CPUPer1k{HostBusyMS: 735.5, Components: map[string]float64{"client": 373.8}},
		}
		if !valid {
			r.Invalid = []string{"actual QPS 500 below 95% of 1000"}
		}
		return r
	}
	return &bench.Result{
		SchemaVersion: bench.SchemaVersion,
		Scenario:      bench.ScenarioInfo{Name: "demo", File: "scenarios/demo.yaml", Settings: json.RawMessage(`{}`)},
		Environment: sysinfo.Environment{Kernel: "6.18.44", Cores: 2, MemoryBytes: 4 << 30,
			Modules: map[string]string{"fortio.org/fortio": "v1.75.3"}},
		Cluster: bench.ClusterInfo{Provider: "netns", Name: "bench", Nodes: 2, IPFamilies: []string{"ipv4"}},
		Variants: map[string]string{
			"baseline": "no mesh: iptables DNAT (plaintext)",
			"sidecar":  "HAProxy in every pod, mutual TLS between sidecars",
		},
		StartedAt: t0, EndedAt: t0.Add(time.Minute),
		Runs:    []bench.Run{run("baseline", true), run("sidecar", false)},
		Startup: []bench.StartupRun{{Variant: "sidecar", Pod: "p1", Repetition: 1, FirstSuccessMS: 42}},
	}
}

func TestFromResultMapsEachRun(t *testing.T) {
	d, err := FromResult(sample())
	if err != nil {
		t.Fatal(err)
	}
	if d.Schema.SMPVersion != Version || d.Schema.OneHopSchemaVersion != bench.SchemaVersion {
		t.Errorf("schema note = %+v", d.Schema)
	}
	if len(d.Results) != 2 || len(d.TestConfigs) != 2 || len(d.MeshConfigs) != 2 || len(d.Environments) != 1 {
		t.Fatalf("got %d results, %d tests, %d meshes, %d envs; want 2, 2, 2, 1",
			len(d.Results), len(d.TestConfigs), len(d.MeshConfigs), len(d.Environments))
	}

	res := d.Results[0]
	want := Latency{Min: 0.211, Average: 0.416, P50: 0.396, P90: 0.542, P99: 0.858, Max: 2.971}
	if res.LatenciesMs != want {
		t.Errorf("latencies_ms = %+v, want %+v", res.LatenciesMs, want)
	}
	if res.ID != "demo-20261201T053329Z/baseline/same-node/c8/keepalive/r1" || res.ActualQPS != 999.5 {
		t.Errorf("id %q actual_qps %v", res.ID, res.ActualQPS)
	}
	if !res.StartTime.Equal(time.Date(2026, 12, 1, 5, 33, 30, 0, time.UTC)) || res.EndTime.Sub(res.StartTime) != 6*time.Second {
		t.Errorf("times %v .. %v", res.StartTime, res.EndTime)
	}
	x := res.OneHop
	if !x.Valid || x.Errors != 3 || x.Sockets != 11 || x.Requests != 6000 || x.Placement != "same-node" ||
		x.Repetition != 1 || x.CPUPer1k.HostBusyMS != 735.5 || x.PercentilesMs["p99.9"] != 2.125 {
		t.Errorf("extras = %+v", x)
	}

	// The invalid run is exported and marked, not dropped.
	bad := d.Results[1]
	if bad.OneHop.Valid || len(bad.OneHop.Invalid) != 1 || bad.Labels["valid"] != "false" || bad.Labels["mesh"] != "sidecar" {
		t.Errorf("invalid run: labels %v extras %+v", bad.Labels, bad.OneHop)
	}

	// References resolve within the document.
	ids := map[string]bool{d.Environments[0].ID: true}
	for _, m := range d.MeshConfigs {
		ids[m.ID] = true
	}
	for _, c := range d.TestConfigs {
		ids[c.ID] = true
	}
	for _, r := range d.Results {
		for _, ref := range []string{r.TestID, r.MeshConfigID, r.EnvID} {
			if !ids[ref] {
				t.Errorf("result %s refers to missing %q", r.ID, ref)
			}
		}
	}

	c := d.TestConfigs[0]
	cl := c.Clients[0]
	if cl.LoadGenerator != "fortio" || c.Labels["load_generator_version"] != "v1.75.3" || cl.Connections != 8 ||
		cl.RPS != 1000 || c.Duration != "6s" || cl.AdditionalOptions != "-keepalive=true" || cl.Protocol != "PROTOCOL_HTTP" {
		t.Errorf("test config = %+v", c)
	}
	m := d.MeshConfigs[1]
	if m.Labels["mesh"] != "sidecar" || m.Labels["description"] == "" || m.MTLSEnabled == nil || !*m.MTLSEnabled {
		t.Errorf("sidecar mesh config = %+v", m)
	}
	if b := d.MeshConfigs[0].MTLSEnabled; b == nil || *b {
		t.Errorf("baseline mtls_enabled = %v, want false", b)
	}
	env := d.Environments[0]
	if len(env.Nodes) != 2 || env.Labels["provider"] != "netns" || env.Labels["kernel"] != "6.18.44" || env.KubernetesVersion != "" {
		t.Errorf("env = %+v", env)
	}
	if s := d.OneHop.Scenarios; len(s) != 1 || len(s[0].Startup) != 1 || s[0].Startup[0].FirstSuccessMS != 42 {
		t.Errorf("scenario extras = %+v", s)
	}

	// The JSON keys are the proto's field names.
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]json.RawMessage
	json.Unmarshal(b, &keys)
	for _, k := range []string{"smp_version", "start_time", "end_time", "latencies_ms", "actual_qps", "test_id", "mesh_config_id", "env_id", "onehop"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("result JSON lacks %q: %s", k, b)
		}
	}
}

func TestFromResultRefusesDuplicateRunIDs(t *testing.T) {
	r := sample()
	r.Runs[1].ID = r.Runs[0].ID
	if _, err := FromResult(r); err == nil {
		t.Error("duplicate run ids were accepted")
	}
}

func TestCommittedResult(t *testing.T) {
	r, err := bench.Read("../../reports/new-connection-per-request.result.json")
	if err != nil {
		t.Fatal(err)
	}
	d, err := FromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Results) != len(r.Runs) || len(d.Results) == 0 {
		t.Fatalf("%d SMP results for %d runs", len(d.Results), len(r.Runs))
	}
	for _, res := range d.Results {
		if res.LatenciesMs.P50 <= 0 || res.LatenciesMs.P99 <= 0 {
			t.Errorf("%s: p50 %v p99 %v", res.ID, res.LatenciesMs.P50, res.LatenciesMs.P99)
		}
	}
}

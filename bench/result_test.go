package bench_test

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/cpu"
	"github.com/onehop-mesh/onehop/bench/sysinfo"
)

// fortioJSON is a trimmed but realistic fortio HTTPRunnerResults: fields Summarize does not read
// are kept to show they are ignored.
const fortioJSON = `{
  "RunType": "HTTP",
  "Labels": "onehop baseline same-node c2",
  "StartTime": "2026-11-22T04:00:00.123456789Z",
  "RequestedQPS": "1000",
  "RequestedDuration": "10s",
  "ActualQPS": 999.62,
  "ActualDuration": 10003800000,
  "NumThreads": 2,
  "Version": "1.75.3",
  "DurationHistogram": {
    "Count": 10000,
    "Min": 0.000081,
    "Max": 0.0123,
    "Sum": 1.62,
    "Avg": 0.000162,
    "StdDev": 0.00004,
    "Data": [
      {"Start": 0.000081, "End": 0.0001, "Percent": 5.1, "Count": 510},
      {"Start": 0.0001, "End": 0.0002, "Percent": 97.2, "Count": 9210},
      {"Start": 0.0002, "End": 0.0123, "Percent": 100, "Count": 280}
    ],
    "Percentiles": [
      {"Percentile": 50, "Value": 0.00015},
      {"Percentile": 75, "Value": 0.000175},
      {"Percentile": 90, "Value": 0.00019},
      {"Percentile": 99, "Value": 0.00045},
      {"Percentile": 99.9, "Value": 0.0021}
    ]
  },
  "ErrorsDurationHistogram": {"Count": 7, "Min": 0.001, "Max": 0.002, "Sum": 0.01, "Avg": 0.0014, "StdDev": 0, "Data": null},
  "Exactly": 0,
  "Jitter": false,
  "Uniform": true,
  "NoCatchUp": false,
  "RunID": 0,
  "AccessLoggerInfo": "",
  "ID": "2026-11-22-040000",
  "RetCodes": {"200": 9993, "-1": 3, "503": 4},
  "IPCountMap": {"10.96.0.1:8080": 2},
  "Sizes": {"Count": 10000, "Min": 1141, "Max": 1141, "Sum": 11410000, "Avg": 1141, "StdDev": 0, "Data": null},
  "HeaderSizes": {"Count": 10000, "Min": 117, "Max": 117, "Sum": 1170000, "Avg": 117, "StdDev": 0, "Data": null},
  "URL": "http://10.96.0.1:8080/echo",
  "SocketCount": 2,
  "AbortOn": 0
}`

func sampleResult() *bench.Result {
	t0 := time.Date(2026, 11, 22, 4, 0, 0, 123456789, time.UTC)
	return &bench.Result{
		Scenario: bench.ScenarioInfo{Name: "latency-vs-connections", File: "scenarios/latency-vs-connections.yaml",
			Description: "p50 vs connections", Settings: json.RawMessage(`{"name":"latency-vs-connections","load":{"qps":1000}}`)},
		Environment: sysinfo.Environment{Hostname: "lab", Kernel: "6.8.0", KernelVersion: "#1 SMP", Arch: "amd64",
			OS: "Debian GNU/Linux 12", CPUModel: "Test CPU", Cores: 8, MemoryBytes: 16 << 30, GoVersion: "go1.26",
			Modules: map[string]string{"fortio.org/fortio": "v1.75.3"}, Tools: map[string]string{"iptables": "v1.8.9"},
			GitRevision: "2cbfb9e", GitDirty: true},
		Cluster:   bench.ClusterInfo{Provider: "netns", Name: "bench", Nodes: 2, IPFamilies: []string{"ipv4"}},
		StartedAt: t0,
		EndedAt:   t0.Add(time.Minute),
		Runs: []bench.Run{{
			ID: "baseline/same-node/c2/keepalive/r1", Variant: "baseline", Placement: "same-node", Connections: 2,
			KeepAlive: true, Mode: "fixed-qps", RequestedQPS: 1000, Duration: 10 * time.Second, PayloadBytes: 1024,
			Repetition: 1, Target: "http://10.96.0.1:8080/echo", StartedAt: t0.Add(time.Second), EndedAt: t0.Add(13 * time.Second),
			Valid: false, Invalid: []string{"7 of 10000 requests failed (non-200 or socket error)"},
			Latency: bench.Latency{Requests: 10000, Errors: 7, Sockets: 2, ActualQPS: 999.62, AvgUS: 162, MinUS: 81, MaxUS: 12300,
				Percentiles: map[string]float64{"p50": 150, "p99.9": 2100}},
			CPU: cpu.Usage{WindowSeconds: 10.0038, Host: cpu.HostUsage{UserMS: 1200, SystemMS: 800, IdleMS: 78000, SoftirqMS: 300, BusyMS: 2300, TickBusyMS: 2310, CPUs: 8},
				Cgroups: []cpu.CgroupUsage{{Target: cpu.Target{Name: "fortio-client", Component: "client", Node: "n1"}, UsageMS: 900, UserMS: 600, SystemMS: 300}}},
			CPUPer1k: bench.CPUPer1k{HostBusyMS: 230.16, HostSoftirqMS: 30.02, Components: map[string]float64{"client": 90.06}},
			Fortio:   json.RawMessage(`{"ActualQPS": 999.62, "RetCodes": {"200": 9993, "-1": 7}, "SocketCount": 2}`),
		}},
	}
}

func TestWriteReadRoundTrip(t *testing.T) {
	orig := sampleResult()
	path := filepath.Join(t.TempDir(), "result.json")
	if err := orig.Write(path); err != nil {
		t.Fatal(err)
	}
	if orig.SchemaVersion != bench.SchemaVersion {
		t.Errorf("Write left SchemaVersion %d, want %d", orig.SchemaVersion, bench.SchemaVersion)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("{\n  \"schema_version\": 1,\n")) || !bytes.HasSuffix(raw, []byte("}\n")) {
		t.Errorf("file is not indented JSON starting with schema_version and ending in a newline:\n%s", raw)
	}
	got, err := bench.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(orig)
	have, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, want) {
		t.Errorf("read back:\n%s\nwant\n%s", have, want)
	}
	// Spot checks that would hide behind a marshalling bug on both sides.
	r := got.Runs[0]
	if r.Duration != 10*time.Second || !r.StartedAt.Equal(orig.Runs[0].StartedAt) || r.Latency.Percentiles["p99.9"] != 2100 {
		t.Errorf("run read back as %+v", r)
	}
	var blob map[string]any
	if err := json.Unmarshal(r.Fortio, &blob); err != nil || blob["SocketCount"] != 2.0 {
		t.Errorf("fortio blob read back as %s (%v)", r.Fortio, err)
	}
	if !got.StartedAt.Equal(orig.StartedAt) || got.StartedAt.Nanosecond() != 123456789 {
		t.Errorf("StartedAt read back as %v, want %v", got.StartedAt, orig.StartedAt)
	}
}

func TestWriteErrors(t *testing.T) {
	if err := sampleResult().Write(filepath.Join(t.TempDir(), "missing-dir", "r.json")); err == nil {
		t.Error("Write into a missing directory succeeded")
	}
	r := sampleResult()
	r.Runs[0].Fortio = json.RawMessage(`{not json`)
	if err := r.Write(filepath.Join(t.TempDir(), "r.json")); err == nil || !strings.Contains(err.Error(), "encode result") {
		t.Errorf("Write with a broken fortio blob = %v, want an encode error", err)
	}
	if _, err := bench.Read(filepath.Join(t.TempDir(), "nope.json")); !os.IsNotExist(err) {
		t.Errorf("Read of a missing file = %v, want a not-exist error", err)
	}
}

func TestDecodeRejects(t *testing.T) {
	valid, err := json.Marshal(func() *bench.Result { r := sampleResult(); r.SchemaVersion = bench.SchemaVersion; return r }())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bench.Decode(valid); err != nil {
		t.Fatalf("a valid result is rejected: %v", err)
	}
	with := func(edit func(map[string]any)) []byte {
		var c map[string]any
		if err := json.Unmarshal(valid, &c); err != nil {
			t.Fatal(err)
		}
		edit(c)
		b, _ := json.Marshal(c)
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want []string
	}{
		{"newer schema", with(func(c map[string]any) { c["schema_version"] = 2 }), []string{"schema_version 2", "re-run"}},
		{"older schema", with(func(c map[string]any) { c["schema_version"] = 0 }), []string{"schema_version 0", "re-run"}},
		// The version is checked before anything else, so unknown fields of a newer schema do
		// not hide the real reason.
		{"newer schema with new fields", with(func(c map[string]any) { c["schema_version"] = 2; c["new_thing"] = 1 }), []string{"schema_version 2", "re-run"}},
		{"missing schema_version", with(func(c map[string]any) { delete(c, "schema_version") }), []string{"no schema_version"}},
		{"null schema_version", with(func(c map[string]any) { c["schema_version"] = nil }), []string{"no schema_version"}},
		{"unknown top-level field", with(func(c map[string]any) { c["surprise"] = true }), []string{"decode result", `"surprise"`}},
		{"unknown field in a run", with(func(c map[string]any) {
			c["runs"].([]any)[0].(map[string]any)["p50_us"] = 1
		}), []string{"decode result", `"p50_us"`}},
		{"not JSON", []byte("schema_version: 1\n"), []string{"not a onehop result"}},
		{"string schema_version", []byte(`{"schema_version": "1"}`), []string{"not a onehop result"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := bench.Decode(tt.in)
			if err == nil {
				t.Fatalf("Decode accepted %s", tt.in)
			}
			if r != nil {
				t.Errorf("Decode returned a result with its error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	// Read names the file in its errors.
	path := filepath.Join(t.TempDir(), "old.json")
	if err := os.WriteFile(path, tests[0].in, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := bench.Read(path); err == nil || !strings.HasPrefix(err.Error(), path+": ") || !strings.Contains(err.Error(), "schema_version 2") {
		t.Errorf("Read(%s) = %v, want an error naming the file and the version", path, err)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestSummarize(t *testing.T) {
	l, err := bench.Summarize(json.RawMessage(fortioJSON))
	if err != nil {
		t.Fatal(err)
	}
	if l.Requests != 10000 || l.Errors != 7 || l.Sockets != 2 || l.ActualQPS != 999.62 {
		t.Errorf("requests %d errors %d sockets %d qps %v; want 10000, 7 (3 socket errors + 4 503s), 2, 999.62",
			l.Requests, l.Errors, l.Sockets, l.ActualQPS)
	}
	for name, got := range map[string][2]float64{"avg": {l.AvgUS, 162}, "min": {l.MinUS, 81}, "max": {l.MaxUS, 12300}} {
		if !near(got[0], got[1]) {
			t.Errorf("%s = %vus, want %vus", name, got[0], got[1])
		}
	}
	want := map[string]float64{"p50": 150, "p75": 175, "p90": 190, "p99": 450, "p99.9": 2100}
	if len(l.Percentiles) != len(want) {
		t.Errorf("percentile keys %v, want %v", keys(l.Percentiles), keys(want))
	}
	for k, v := range want {
		got, ok := l.Percentile(k)
		if !ok || !near(got, v) {
			t.Errorf("Percentile(%q) = %v, %v; want %vus", k, got, ok, v)
		}
	}
	if _, ok := l.Percentile("p99.99"); ok {
		t.Error("Percentile of a missing key reports ok")
	}

	tests := []struct {
		name       string
		in         string
		wantErrors int64
	}{
		{"all ok", `{"DurationHistogram": {"Count": 5}, "RetCodes": {"200": 5}}`, 0},
		{"no 200 at all", `{"DurationHistogram": {"Count": 5}, "RetCodes": {"-1": 5}}`, 5},
		{"no RetCodes", `{"DurationHistogram": {"Count": 3}}`, 3},
		{"other 2xx counts as error", `{"DurationHistogram": {"Count": 4}, "RetCodes": {"200": 3, "204": 1}}`, 1},
	}
	for _, tt := range tests {
		l, err := bench.Summarize(json.RawMessage(tt.in))
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if l.Errors != tt.wantErrors || l.Percentiles == nil {
			t.Errorf("%s: errors %d (percentiles %v), want %d and a non-nil map", tt.name, l.Errors, l.Percentiles, tt.wantErrors)
		}
	}
	if _, err := bench.Summarize(json.RawMessage(`{"ActualQPS": "fast"}`)); err == nil || !strings.Contains(err.Error(), "fortio result") {
		t.Errorf("Summarize of a bad result = %v, want a fortio result error", err)
	}
}

func keys(m map[string]float64) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestCheck(t *testing.T) {
	good := func() bench.Run {
		return bench.Run{Mode: "fixed-qps", RequestedQPS: 1000, Duration: 10 * time.Second, Connections: 2, KeepAlive: true,
			Latency: bench.Latency{Requests: 10000, Sockets: 2, ActualQPS: 999.8}}
	}
	tests := []struct {
		name string
		edit func(*bench.Run)
		want []string // substrings, one per expected reason, in Invalid's (sorted) order; nil = valid
	}{
		{"valid", func(*bench.Run) {}, nil},
		{"qps at the limit", func(r *bench.Run) { r.Latency.ActualQPS = 950; r.Latency.Requests = 9500 }, nil},
		{"qps too low", func(r *bench.Run) { r.Latency.ActualQPS = 790 },
			[]string{"actual QPS 790.0 is 79.0% of the requested 1000 (below 95%): fortio could not hold the rate with 2 connection(s)"}},
		{"fewer requests than planned", func(r *bench.Run) { r.Latency.Requests = 9000 }, []string{"9000 requests done of 10000 planned"}},
		{"slow and short", func(r *bench.Run) { r.Latency.ActualQPS = 500; r.Latency.Requests = 5000 },
			[]string{"5000 requests done of 10000 planned", "actual QPS 500.0"}},
		{"errors", func(r *bench.Run) { r.Latency.Errors = 3 }, []string{"3 of 10000 requests failed"}},
		{"nothing completed", func(r *bench.Run) { r.Latency.Requests = 0; r.Latency.ActualQPS = 0; r.Latency.Sockets = 0 },
			[]string{"0 requests done of 10000 planned", "actual QPS 0.0", "no request completed"}},
		{"keep-alive connection broke", func(r *bench.Run) { r.Latency.Sockets = 3 },
			[]string{"3 sockets opened for 2 keep-alive connections: 1 connection(s) broke and were reopened"}},
		{"keep-alive with fewer sockets", func(r *bench.Run) { r.Latency.Sockets = 1 }, nil},
		{"new connection per request", func(r *bench.Run) { r.KeepAlive = false; r.Latency.Sockets = 10000 }, nil},
		{"max-qps is never QPS-flagged", func(r *bench.Run) {
			r.Mode, r.RequestedQPS, r.Latency.ActualQPS, r.Latency.Requests = "max-qps", 0, 50, 500
		}, nil},
		{"max-qps ignores a stray requested QPS", func(r *bench.Run) {
			r.Mode, r.Latency.ActualQPS, r.Latency.Requests = "max-qps", 50, 500
		}, nil},
		{"max-qps still checks errors and sockets", func(r *bench.Run) {
			r.Mode, r.RequestedQPS, r.Latency.ActualQPS, r.Latency.Errors, r.Latency.Sockets = "max-qps", 0, 50, 1, 4
		}, []string{"1 of 10000 requests failed", "4 sockets opened for 2 keep-alive connections"}},
		{"routed to its own servers", func(r *bench.Run) { r.Routing = &bench.Routing{Target: 10004} }, nil},
		{"misrouted to another namespace", func(r *bench.Run) {
			r.Routing = &bench.Routing{Target: 0, Elsewhere: map[string]int64{"onehop/onehop-server-same-node-0": 10004}}
		}, []string{"misrouted: requests reached servers outside the run's service (onehop/onehop-server-same-node-0 10004)",
			"misrouted: the service's own servers received 0 requests of the 10000"}},
		{"partly misrouted", func(r *bench.Run) {
			r.Routing = &bench.Routing{Target: 9000, Elsewhere: map[string]int64{"a/b": 1004}}
		}, []string{"misrouted: requests reached servers outside the run's service (a/b 1004)", "received 9000 requests of the 10000"}},
		{"earlier verdict is replaced", func(r *bench.Run) { r.Valid, r.Invalid = false, []string{"stale reason"} }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good()
			tt.edit(&r)
			r.Check(bench.Limits{MinQPSRatio: 0.95})
			if r.Valid != (len(tt.want) == 0) {
				t.Errorf("Valid = %v with reasons %q, want valid=%v", r.Valid, r.Invalid, len(tt.want) == 0)
			}
			if len(r.Invalid) != len(tt.want) {
				t.Fatalf("reasons = %q, want %d matching %q", r.Invalid, len(tt.want), tt.want)
			}
			if !slices.IsSorted(r.Invalid) {
				t.Errorf("reasons are not sorted: %q", r.Invalid)
			}
			for i, w := range tt.want {
				if !strings.Contains(r.Invalid[i], w) {
					t.Errorf("reason %d = %q, want it to contain %q", i, r.Invalid[i], w)
				}
			}
		})
	}
}

package scenarios_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/scenarios"
)

func TestParseInvalid(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "invalid", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 11 {
		t.Fatalf("found %d invalid scenarios under testdata/invalid, want at least 11", len(files))
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".yaml"), func(t *testing.T) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(b), "\n")
			want, ok := strings.CutPrefix(first, "# want: ")
			if !ok || strings.TrimSpace(want) == "" {
				t.Fatalf("first line must be a `# want: <substring>` comment, got %q", first)
			}
			want = strings.TrimSpace(want)
			s, err := scenarios.Parse(path, b)
			if err == nil {
				t.Fatalf("Parse accepted %s: %+v", path, s)
			}
			if s != nil {
				t.Errorf("Parse returned a scenario with its error: %+v", s)
			}
			msg := err.Error()
			if !strings.Contains(msg, want) {
				t.Fatalf("error does not mention %q:\n%s", want, msg)
			}
			if !strings.HasPrefix(msg, path+": ") {
				t.Errorf("error does not start with the file name %q:\n%s", path, msg)
			}
			// One problem per file, so that no file passes on a problem it was not written for.
			if _, problems, ok := strings.Cut(msg, "invalid scenario:\n"); ok {
				if lines := strings.Split(problems, "\n"); len(lines) != 1 {
					t.Errorf("want exactly one problem, got %d:\n%s", len(lines), problems)
				}
			}
			if _, lerr := scenarios.LoadFile(path); lerr == nil || lerr.Error() != msg {
				t.Errorf("LoadFile(%s) = %v, want %v", path, lerr, err)
			}
		})
	}
}

// TestRepoScenarios parses every scenario file shipped beside the package and checks that the lab
// each one asks for is a valid cluster spec.
func TestRepoScenarios(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no scenario files (*.yaml) in the scenarios directory")
	}
	listed, err := scenarios.Files(".")
	if err != nil || !slices.Equal(listed, files) {
		t.Errorf("Files(\".\") = %v, %v; want %v", listed, err, files)
	}
	names := map[string]string{}
	for _, path := range files {
		t.Run(path, func(t *testing.T) {
			s, err := scenarios.LoadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if s.File != path {
				t.Errorf("File = %q, want %q", s.File, path)
			}
			if want := strings.TrimSuffix(path, ".yaml"); s.Name != want {
				t.Errorf("scenario name %q does not match its file %s", s.Name, path)
			}
			if other, dup := names[s.Name]; dup {
				t.Errorf("scenario name %q is used by %s too", s.Name, other)
			}
			names[s.Name] = path
			if s.Description == "" {
				t.Error("no description")
			}
			spec := s.Spec("bench")
			if err := spec.Validate(); err != nil {
				t.Errorf("the scenario's lab is not a valid cluster spec: %v", err)
			}
		})
	}
}

func TestParseDefaults(t *testing.T) {
	s, err := scenarios.Parse("minimal.yaml", []byte("name: minimal\n"))
	if err != nil {
		t.Fatal(err)
	}
	catchUp := true
	warmup, payload := scenarios.Duration(2*time.Second), 1024
	want := &scenarios.Scenario{
		Name:       "minimal",
		Cluster:    scenarios.Cluster{Nodes: 2, IPFamilies: []string{"ipv4"}},
		Variants:   []string{"baseline"},
		Placements: []string{scenarios.SameNode, scenarios.CrossNode},
		Kind:       scenarios.KindLatency,
		Servers:    1,
		Load: scenarios.Load{
			Mode:         "fixed-qps",
			QPS:          1000,
			Connections:  []int{1, 2, 4, 8, 16, 32, 64},
			KeepAlive:    []bool{true},
			Duration:     scenarios.Duration(10 * time.Second),
			Warmup:       &warmup,
			Repetitions:  1,
			PayloadBytes: &payload,
			Resolution:   scenarios.Duration(10 * time.Microsecond),
			CatchUp:      &catchUp,
			Limits:       bench.Limits{MinQPSRatio: 0.95},
			Timeout:      scenarios.Duration(5 * time.Second),
		},
		File: "minimal.yaml",
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("defaults =\n%+v\nwant\n%+v", *s, *want)
	}
	if got := s.Load.Resolution.D(); got != 10*time.Microsecond {
		t.Errorf("Resolution.D() = %v", got)
	}
}

func TestParseKeepsExplicitValues(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(*scenarios.Scenario) bool
	}{
		{"catchup false is kept", "load: {catchup: false}", func(s *scenarios.Scenario) bool { return s.Load.CatchUp != nil && !*s.Load.CatchUp }},
		{"max-qps leaves qps at 0", "load: {mode: max-qps}", func(s *scenarios.Scenario) bool { return s.Load.Mode == "max-qps" && s.Load.QPS == 0 }},
		{"qps", "load: {qps: 250.5}", func(s *scenarios.Scenario) bool { return s.Load.QPS == 250.5 }},
		{"connections", "load: {connections: [3, 1024]}", func(s *scenarios.Scenario) bool { return slices.Equal(s.Load.Connections, []int{3, 1024}) }},
		{"keepalive both", "load: {keepalive: [true, false]}", func(s *scenarios.Scenario) bool { return slices.Equal(s.Load.KeepAlive, []bool{true, false}) }},
		{"durations", "load: {duration: 1m30s, warmup: 500ms, resolution: 1us, timeout: 2s}", func(s *scenarios.Scenario) bool {
			return s.Load.Duration.D() == 90*time.Second && s.Load.Warmup.D() == 500*time.Millisecond &&
				s.Load.Resolution.D() == time.Microsecond && s.Load.Timeout.D() == 2*time.Second
		}},
		{"ratio", "load: {validity: {minQPSRatio: 1}}", func(s *scenarios.Scenario) bool { return s.Load.Limits.MinQPSRatio == 1 }},
		{"one same-node placement on one node", "cluster: {nodes: 1}\nplacements: [same-node]", func(s *scenarios.Scenario) bool {
			return s.Cluster.Nodes == 1 && slices.Equal(s.Placements, []string{"same-node"})
		}},
		{"dual-stack", "cluster: {ipFamilies: [ipv6, ipv4]}", func(s *scenarios.Scenario) bool {
			return slices.Equal(s.Cluster.IPFamilies, []string{"ipv6", "ipv4"})
		}},
		{"servers and payload", "servers: 50\nload: {payloadBytes: 1048576, repetitions: 100}", func(s *scenarios.Scenario) bool {
			return s.Servers == 50 && *s.Load.PayloadBytes == 1<<20 && s.Load.Repetitions == 100
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := scenarios.Parse(tt.name, []byte("name: x\n"+tt.yaml+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(s) {
				t.Errorf("parsed %q to %+v", tt.yaml, s.Load)
			}
		})
	}
}

func TestScenarioSpec(t *testing.T) {
	s, err := scenarios.Parse("t", []byte("name: t\nservers: 2\ncluster: {ipFamilies: [ipv4, ipv6]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	spec := s.Spec("lab1")
	if err := spec.Validate(); err != nil {
		t.Fatalf("Spec is invalid: %v", err)
	}
	if spec.Name != "lab1" || spec.Nodes != 2 || !slices.Equal(spec.IPFamilies, []string{"ipv4", "ipv6"}) {
		t.Errorf("spec = %s, %d nodes, %v", spec.Name, spec.Nodes, spec.IPFamilies)
	}
	nodeOf := map[string]string{}
	for _, p := range spec.Pods {
		nodeOf[p.Name] = p.Node
	}
	// Each variant has a namespace of its own named after it.
	wantNodes := map[string]string{"baseline-client": "n1",
		"baseline-server-same-node-0": "n1", "baseline-server-same-node-1": "n1", "baseline-server-cross-node-0": "n2", "baseline-server-cross-node-1": "n2"}
	if !reflect.DeepEqual(nodeOf, wantNodes) {
		t.Errorf("pod placement = %v, want %v", nodeOf, wantNodes)
	}
	var svcs []string
	for _, sv := range spec.Services {
		svcs = append(svcs, sv.Namespace+"/"+sv.Name+"->"+sv.Selector["app"])
	}
	if want := []string{"baseline/fortio-same-node->server-same-node", "baseline/fortio-cross-node->server-cross-node"}; !slices.Equal(svcs, want) {
		t.Errorf("services = %v, want %v", svcs, want)
	}
}

func TestDurationJSON(t *testing.T) {
	b, err := json.Marshal(struct{ D scenarios.Duration }{scenarios.Duration(1500 * time.Millisecond)})
	if err != nil || string(b) != `{"D":"1.5s"}` {
		t.Errorf("Duration JSON = %s, %v; want {\"D\":\"1.5s\"}", b, err)
	}
}

// Zero is a real choice for warm-up and payload, not "use the default".
func TestZeroWarmupAndPayloadAreKept(t *testing.T) {
	s, err := scenarios.Parse("zero.yaml", []byte("name: zero\nload:\n  warmup: 0s\n  payloadBytes: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Load.Warmup.D() != 0 || *s.Load.PayloadBytes != 0 {
		t.Errorf("warmup %v payload %d, want 0 and 0", s.Load.Warmup.D(), *s.Load.PayloadBytes)
	}
}

// Every variant runs first in some repetition, and each point has every variant once per rep.
func TestPlanRotatesVariantOrder(t *testing.T) {
	s, err := scenarios.Parse("t", []byte("name: t\nvariants: [baseline, onehop]\nplacements: [same-node]\nload: {connections: [1], repetitions: 2}\n"))
	if err != nil {
		t.Fatal(err)
	}
	order := scenarios.Plan(s)
	want := []string{"baseline/same-node/c1/keepalive/r1", "onehop/same-node/c1/keepalive/r1", "onehop/same-node/c1/keepalive/r2", "baseline/same-node/c1/keepalive/r2"}
	if !slices.Equal(order, want) {
		t.Errorf("plan = %v, want %v", order, want)
	}
}

// Over 2n repetitions every variant runs before every other one exactly n times, and first
// exactly twice: rotation alone would put A before B in 2 of 3 repetitions.
func TestPlanBalancesVariantOrder(t *testing.T) {
	s, err := scenarios.Parse("t", []byte("name: t\nvariants: [baseline, onehop, sidecar]\nplacements: [same-node]\nload: {connections: [1], repetitions: 6}\n"))
	if err != nil {
		t.Fatal(err)
	}
	order := scenarios.Plan(s)
	before := map[[2]string]int{}
	first := map[string]int{}
	for rep := 0; rep < 6; rep++ {
		var names []string
		for _, run := range order[rep*3 : rep*3+3] {
			names = append(names, strings.SplitN(run, "/", 2)[0])
		}
		first[names[0]]++
		for i := range names {
			for j := i + 1; j < len(names); j++ {
				before[[2]string{names[i], names[j]}]++
			}
		}
	}
	for _, a := range s.Variants {
		if first[a] != 2 {
			t.Errorf("%s runs first in %d of 6 repetitions, want 2 (order %v)", a, first[a], order)
		}
		for _, b := range s.Variants {
			if a != b && before[[2]string{a, b}] != 3 {
				t.Errorf("%s runs before %s in %d of 6 repetitions, want 3 (order %v)", a, b, before[[2]string{a, b}], order)
			}
		}
	}
}

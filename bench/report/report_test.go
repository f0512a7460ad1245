package report

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/sysinfo"
)

const invalidID = "onehop-same-node-c2-r1"

// testResult has two variants, two placements, connections 1, 2 and 4 with keep-alive, and three
// repetitions (with two, the median equals the mean and the test could not tell them apart).
// Repetition factors 1, 1.1 and 3 make the median 1.1× and the mean 1.7× the base value.
// One run is invalid and carries values (987…) that must not appear in any table.
func testResult() *bench.Result {
	start := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	r := &bench.Result{
		SchemaVersion: bench.SchemaVersion,
		Scenario:      bench.ScenarioInfo{Name: "latency-basic", Description: "Test scenario."},
		Environment: sysinfo.Environment{
			Kernel: "6.8.0-test", CPUModel: "Test CPU @ 3GHz", Cores: 8, MemoryBytes: 16 << 30,
			GoVersion: "go1.26.0", Modules: map[string]string{"fortio.org/fortio": "v1.75.3"},
			Tools: map[string]string{"iptables": "1.8.10"}, GitRevision: "abc123", GitDirty: true,
		},
		Cluster:   bench.ClusterInfo{Provider: "kind", Name: "lab", Nodes: 2, IPFamilies: []string{"ipv4"}},
		StartedAt: start,
		EndedAt:   start.Add(5 * time.Minute),
	}
	base := map[string]float64{"baseline": 100, "onehop": 130}
	p99 := map[string]float64{"baseline": 4, "onehop": 6} // p99 ratio onehop/baseline = 1.3*6/4 = 1.95
	place := map[string]float64{"same-node": 1, "cross-node": 2}
	factor := []float64{1, 1.1, 3}
	for _, v := range []string{"onehop", "baseline"} { // not in report order, to test sorting
		for _, pl := range []string{"same-node", "cross-node"} {
			for _, c := range []int{1, 2, 4} {
				for rep, f := range factor {
					p50 := base[v] * place[pl] * float64(c) * f
					run := bench.Run{
						ID: fmt.Sprintf("%s-%s-c%d-r%d", v, pl, c, rep), Variant: v, Placement: pl,
						Connections: c, KeepAlive: true, Mode: "fixed-qps", RequestedQPS: 1000,
						Duration: 30 * time.Second, PayloadBytes: 64, Repetition: rep, Valid: true,
						Latency: bench.Latency{ActualQPS: 999 + f, Percentiles: map[string]float64{
							"p50": p50, "p90": 2 * p50, "p99": p99[v] * p50, "p99.9": 10 * p50}},
						CPUPer1k: bench.CPUPer1k{HostBusyMS: 50 * f, HostSoftirqMS: 5 * f,
							Components: map[string]float64{"client": 20 * f, "server": 10 * f}},
					}
					if v == "onehop" {
						run.CPUPer1k.Components["proxy"] = 7 * f
					}
					if run.ID == invalidID {
						run.Valid = false
						run.Invalid = []string{"fortio reported 3 errors", "cpu window short"}
						run.Latency.ActualQPS = 98761
						run.Latency.Percentiles = map[string]float64{"p50": 98765, "p90": 98766, "p99": 98767}
						run.CPUPer1k.HostBusyMS = 98768
					}
					r.Runs = append(r.Runs, run)
				}
			}
		}
	}
	return r
}

func render(t *testing.T, r *bench.Result) (string, []string, string) {
	t.Helper()
	dir := t.TempDir()
	files, err := Render(r, dir)
	if err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "latency-basic.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(md), files, dir
}

// row returns the cells of the first table row led by lead after each marker in turn.
func row(t *testing.T, md string, lead string, markers ...string) []string {
	t.Helper()
	for _, m := range markers {
		i := strings.Index(md, m)
		if i < 0 {
			t.Fatalf("marker %q not found", m)
		}
		md = md[i+len(m):]
	}
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "| "+lead+" |") {
			cells := strings.Split(strings.Trim(line, "| "), " | ")
			return cells[1:]
		}
	}
	t.Fatalf("no row %q after %q", lead, markers)
	return nil
}

func TestRenderFiles(t *testing.T) {
	_, files, dir := render(t, testResult())
	var want []string
	for _, n := range []string{"latency-basic.md", "latency-basic-cross-node-keepalive.svg", "latency-basic-cross-node-keepalive.png",
		"latency-basic-same-node-keepalive.svg", "latency-basic-same-node-keepalive.png"} {
		want = append(want, filepath.Join(dir, n))
	}
	if !slices.Equal(files, want) {
		t.Fatalf("files = %v, want %v", files, want)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		switch filepath.Ext(f) {
		case ".png":
			if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
				t.Errorf("%s is not a PNG", f)
			}
		case ".svg":
			if !bytes.Contains(b, []byte("<svg")) {
				t.Errorf("%s is not an SVG", f)
			}
		}
	}
}

func TestRenderTables(t *testing.T) {
	md, _, _ := render(t, testResult())

	// Median of 100, 110, 300 is 110 (the mean would be 170).
	got := row(t, md, "1", "## same-node, keep-alive", "| connections |")
	want := []string{"110 (100–300)", "220 (200–600)", "440 (400–1200)", "1000",
		"143 (130–390)", "286 (260–780)", "858 (780–2340)", "1000"}
	if !slices.Equal(got, want) {
		t.Errorf("latency row = %q, want %q", got, want)
	}
	// The invalid repetition is left out: onehop at 2 connections has the median of 260 and 780.
	if got := row(t, md, "2", "## same-node, keep-alive", "| connections |"); got[4] != "520 (260–780)" {
		t.Errorf("onehop p50 at 2 connections = %q, want the median of the valid runs", got[4])
	}

	// 143/110 = 1.30 for p50, 858/440 = 1.95 for p99; at 2 connections 520/220 = 2.36.
	for lead, want := range map[string][]string{"1": {"1.30", "1.95"}, "2": {"2.36", "3.55"}} {
		if got := row(t, md, lead, "## same-node, keep-alive", "Ratio to baseline"); !slices.Equal(got, want) {
			t.Errorf("ratio row %s = %q, want %q", lead, got, want)
		}
	}

	// CPU columns are the union of components; baseline has no proxy.
	if !strings.Contains(md, "| variant | connections | host busy | mesh overhead | host softirq | client | proxy | server |") {
		t.Error("CPU header lacks the union of components")
	}
	if got, want := row(t, md, "baseline", "## cross-node, keep-alive", "CPU-milliseconds"), []string{"1", "55.0", "–", "5.50", "22.0", "–", "11.0"}; !slices.Equal(got, want) {
		t.Errorf("CPU row = %q, want %q", got, want)
	}
	// The mesh overhead is the variant's host busy minus the baseline's at the same point.
	if got := row(t, md, "onehop", "## cross-node, keep-alive", "CPU-milliseconds"); len(got) < 3 || got[2] == "–" {
		t.Errorf("onehop CPU row %q has no mesh overhead", got)
	}

	for _, bad := range []string{"98761", "98765", "98766", "98767", "98768", "170"} {
		if strings.Contains(md, bad) {
			t.Errorf("report contains %s, a value of the invalid run or a mean", bad)
		}
	}
	i := strings.Index(md, "## Runs flagged invalid")
	if i < 0 || !strings.Contains(md[i:], "`"+invalidID+"`") || !strings.Contains(md[i:], "fortio reported 3 errors; cpu window short") {
		t.Errorf("invalid run not listed with its reasons:\n%s", md[max(i, 0):])
	}
	for _, s := range []string{"6.8.0-test", "Test CPU @ 3GHz", "v1.75.3", "abc123 (dirty)", "5m0s", "1000 QPS", "64-byte",
		"[![latency vs connections — same-node, keep-alive, 1000 QPS](latency-basic-same-node-keepalive.png)](latency-basic-same-node-keepalive.svg)"} {
		if !strings.Contains(md, s) {
			t.Errorf("report lacks %q", s)
		}
	}
}

func TestRenderAllInvalidCell(t *testing.T) {
	r := testResult()
	for i := range r.Runs {
		if run := &r.Runs[i]; run.Variant == "onehop" && run.Placement == "cross-node" && run.Connections == 4 {
			run.Valid, run.Invalid = false, []string{"too many errors"}
		}
	}
	md, _, _ := render(t, r)
	if got := row(t, md, "4", "## cross-node, keep-alive", "| connections |"); !slices.Equal(got[4:], []string{"invalid", "invalid", "invalid", "invalid"}) {
		t.Errorf("latency row = %q, want onehop cells invalid", got)
	}
	if got := row(t, md, "4", "## cross-node, keep-alive", "Ratio to baseline"); !slices.Equal(got, []string{"invalid", "invalid"}) {
		t.Errorf("ratio row = %q, want invalid", got)
	}
}

func TestRenderDeterministic(t *testing.T) {
	a, _, _ := render(t, testResult())
	r := testResult()
	slices.Reverse(r.Runs)
	if b, _, _ := render(t, r); a != b {
		t.Error("same result in another run order rendered differently")
	}
}

func TestRenderMixedLoads(t *testing.T) {
	r := testResult()
	r.Runs[0].RequestedQPS = 2000
	if _, err := Render(r, t.TempDir()); err == nil {
		t.Error("Render accepted a section mixing 1000 and 2000 QPS")
	}
}

func TestIndex(t *testing.T) {
	old, cur, other := testResult(), testResult(), testResult()
	cur.StartedAt = old.StartedAt.Add(24 * time.Hour)
	cur.Environment.GitRevision, cur.Environment.GitDirty = "def456", false
	other.Scenario.Name = "alpha"
	dir := t.TempDir()
	if err := Index([]*bench.Result{cur, other, old}, dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	want := "# Benchmark reports\n\n" +
		"- [alpha](alpha.md) — 2025-03-01 10:00 UTC, revision abc123 (dirty), 35/36 runs valid\n" +
		"- [latency-basic](latency-basic.md) — 2025-03-02 10:00 UTC, revision def456, 35/36 runs valid\n" +
		"\n[Claims scorecard](claims.md): the published Kmesh claims against these results.\n"
	if string(b) != want {
		t.Errorf("README.md =\n%s\nwant\n%s", b, want)
	}
}

// TestScorecard: every claim gets a row; a claim whose scenario ran gets its ratio and verdict
// from the data, the others say which scenario to run.
func TestScorecard(t *testing.T) {
	r := testResult() // onehop p50 is 1.3x baseline at every point
	r.Scenario.Name = scLatency
	dir := t.TempDir()
	if err := Scorecard([]*bench.Result{r}, dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "claims.md"))
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, c := range claims {
		if !strings.Contains(md, "| "+c.id+" |") {
			t.Errorf("no row for %s", c.id)
		}
	}
	for _, want := range []string{
		"onehop/baseline p50 1.30–", "| not reproduced |", // C2 from the data (1.3x or more)
		"not measured: run `bin/onehop run scenarios/" + scWaypoint + ".yaml`", // C4
		"not reproducible here", // C11
	} {
		if !strings.Contains(md, want) {
			t.Errorf("claims.md lacks %q:\n%s", want, md)
		}
	}
}

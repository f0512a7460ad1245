package report

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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

// row returns the cells of the first table row led by lead ("onehop | 2" for the first two cells)
// after each marker in turn, without the lead's cells.
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
			return cells[strings.Count(lead, " | ")+1:]
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

	// Median of 100, 110, 300 is 110 (the mean would be 170); from three values the bootstrap
	// interval of the median spans them all.
	lat := "## same-node, keep-alive"
	for lead, want := range map[string][]string{
		"baseline | 1": {"110 [100, 300]", "220 [200, 600]", "440 [400, 1200]", "1000", "3/3"},
		"onehop | 1":   {"143 [130, 390]", "286 [260, 780]", "858 [780, 2340]", "1000", "3/3"},
		// The invalid repetition is left out: the median of 260 and 780, and no interval from two.
		"onehop | 2": {"520", "1040", "3120", "1001", "2/3"},
	} {
		if got := row(t, md, lead, lat, "| variant | connections | p50 µs [95% CI] |"); !slices.Equal(got, want) {
			t.Errorf("latency row %s = %q, want %q", lead, got, want)
		}
	}

	// Paired: onehop is 1.3× baseline (p99 1.95×) in every repetition, so every paired ratio is
	// exactly that, where the ratio of medians at 2 connections (520/220 = 2.36) is not. Two pairs
	// give no interval and no Mann–Whitney p.
	for lead, want := range map[string][]string{
		"onehop | 1": {"1.30 [1.30, 1.30]", "1.95 [1.95, 1.95]", "0.38", "3"},
		"onehop | 2": {"1.30", "1.95", "–", "2"},
	} {
		if got := row(t, md, lead, lat, "Ratio to baseline, paired"); !slices.Equal(got, want) {
			t.Errorf("ratio row %s = %q, want %q", lead, got, want)
		}
	}

	// CPU columns are the union of components; baseline has no proxy.
	if !strings.Contains(md, "| variant | connections | host busy [95% CI] | mesh overhead | host softirq | client | proxy | server |") {
		t.Error("CPU header lacks the union of components")
	}
	if got, want := row(t, md, "baseline | 1", "## cross-node, keep-alive", "CPU-milliseconds"), []string{"55.0 [50.0, 150]", "–", "5.50", "22.0", "–", "11.0"}; !slices.Equal(got, want) {
		t.Errorf("CPU row = %q, want %q", got, want)
	}
	// The mesh overhead is the variant's host busy minus the baseline's at the same point.
	if got := row(t, md, "onehop | 1", "## cross-node, keep-alive", "CPU-milliseconds"); len(got) < 2 || got[1] == "–" {
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
	if got := row(t, md, "onehop | 4", "## cross-node, keep-alive", "| variant | connections | p50"); !slices.Equal(got, []string{"invalid", "invalid", "invalid", "invalid", "0/3"}) {
		t.Errorf("latency row = %q, want onehop cells invalid", got)
	}
	if got := row(t, md, "onehop | 4", "## cross-node, keep-alive", "Ratio to baseline"); !slices.Equal(got, []string{"invalid", "invalid", "invalid", "0"}) {
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
	cur.StartedAt, cur.EndedAt = old.StartedAt.Add(24*time.Hour), old.EndedAt.Add(24*time.Hour)
	cur.Environment.GitRevision, cur.Environment.GitDirty = "def456", false
	other.Scenario.Name, other.Quick = "alpha", true
	dir := t.TempDir()
	if err := Index([]*bench.Result{cur, other, old}, dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	// The scorecard first, then one line per scenario (the newest result of each).
	card, list := strings.Index(md, "## Claims scorecard"), strings.Index(md, "## Scenarios")
	if !strings.HasPrefix(md, "# Benchmark reports\n\n## Claims scorecard\n\n") || card < 0 || list < card ||
		!strings.Contains(md[card:list], "| C1 |") || !strings.Contains(md[card:list], "**Quick run**") {
		t.Errorf("README.md does not start with the scorecard (marked quick):\n%s", md)
	}
	want := "## Scenarios\n\n" +
		"- [alpha](alpha.md) — 2025-03-01 10:00 UTC, revision abc123 (dirty), 5m0s, 35/36 runs valid, quick run\n" +
		"- [latency-basic](latency-basic.md) — 2025-03-02 10:00 UTC, revision def456, 5m0s, 35/36 runs valid\n"
	if !strings.HasSuffix(md, want) {
		t.Errorf("README.md ends\n%s\nwant\n%s", md[list:], want)
	}
	if _, err := os.Stat(filepath.Join(dir, "claims.md")); err != nil {
		t.Error(err)
	}
}

// TestScorecard: every claim gets a row; a claim whose scenario ran gets its ratio and verdict
// from the data, the others say which scenario to run.
func TestScorecard(t *testing.T) {
	r := testResult() // onehop p50 is 1.3x baseline at every point
	r.Scenario.Name = scMesh
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
		"p50 onehop/baseline, keep-alive (claim: ≤ 1.05): cross-node c=1 1.300 [1.300, 1.300]", // C2 from the data,
		"| inconclusive (3 repetitions per point; a verdict needs 10",                          // but too few repetitions for a verdict
		"not measured: run `bin/onehop run scenarios/" + scWaypoint + ".yaml`",                 // C4
		"not reproducible here", // C11
	} {
		if !strings.Contains(md, want) {
			t.Errorf("claims.md lacks %q:\n%s", want, md)
		}
	}
}

// TestRenderPairedRatios: the machine drifts between repetitions and moves both variants alike,
// while onehop is exactly 1.2× baseline within each repetition. The per-variant intervals are
// wide (they carry the drift); the paired ratio is 1.20 with a narrow interval, because the drift
// cancels within a repetition. This is why ratios are paired.
func TestRenderPairedRatios(t *testing.T) {
	r := testResult()
	r.Runs = nil
	drift := []float64{0.7, 1.3, 0.9, 1.6, 1.0, 0.8, 1.45, 1.1, 0.75, 1.25}
	for _, v := range []string{"baseline", "onehop"} {
		scale := map[string]float64{"baseline": 200, "onehop": 240}[v]
		for _, c := range []int{1, 8} {
			for rep, d := range drift {
				p50 := scale * d
				r.Runs = append(r.Runs, bench.Run{
					ID: fmt.Sprintf("%s-c%d-r%d", v, c, rep), Variant: v, Placement: "same-node", Connections: c,
					KeepAlive: true, Mode: "fixed-qps", RequestedQPS: 1000, Duration: 30 * time.Second, Repetition: rep, Valid: true,
					Latency: bench.Latency{ActualQPS: 1000, Percentiles: map[string]float64{"p50": p50, "p90": 1.5 * p50, "p99": 3 * p50}},
				})
			}
		}
	}
	md, _, dir := render(t, r)

	ratios := row(t, md, "onehop | 8", "Ratio to baseline, paired")
	if ratios[3] != "10" {
		t.Errorf("pairs = %q, want 10", ratios[3])
	}
	for _, col := range []struct{ ratio, latency int }{{0, 0}, {1, 2}} { // p50, p99
		if med, lo, hi := parseCI(t, ratios[col.ratio]); med != 1.2 || !(lo <= 1.2 && 1.2 <= hi) || hi-lo > 0.01 {
			t.Errorf("paired ratio %q: want 1.20 with a narrow interval around it", ratios[col.ratio])
		}
		for _, v := range []string{"baseline", "onehop"} {
			cell := row(t, md, v+" | 8", "| variant | connections | p50 µs [95% CI] |")[col.latency]
			if med, lo, hi := parseCI(t, cell); (hi-lo)/med < 0.2 {
				t.Errorf("%s interval %q is narrow; the drift should widen it", v, cell)
			}
		}
	}
	// The unpaired test over the same values cannot tell the variants apart.
	if p, err := strconv.ParseFloat(ratios[2], 64); err != nil || p < 0.05 {
		t.Errorf("Mann–Whitney p = %v (%v), want above 0.05: the drift hides the difference unpaired", p, err)
	}

	svg, err := os.ReadFile(filepath.Join(dir, "latency-basic-same-node-keepalive.svg"))
	if err != nil {
		t.Fatal(err)
	}
	for _, title := range []string{">p50</text>", ">p90</text>", ">p99</text>"} {
		if !bytes.Contains(svg, []byte(title)) {
			t.Errorf("SVG lacks the panel title %q", title)
		}
	}
	if png, err := os.Stat(filepath.Join(dir, "latency-basic-same-node-keepalive.png")); err != nil || png.Size() == 0 {
		t.Errorf("PNG not written: %v", err)
	}
}

// parseCI reads "412 [398, 431]".
func parseCI(t *testing.T, s string) (med, lo, hi float64) {
	t.Helper()
	if _, err := fmt.Sscanf(s, "%g [%g, %g]", &med, &lo, &hi); err != nil {
		t.Fatalf("%q is not a median with an interval: %v", s, err)
	}
	return med, lo, hi
}

// TestScorecardSockmap: C5's verdict follows the paired ratios of both scenarios: reproduced
// when sockmap cuts onehop's mean latency by 15% and raises the chain's QPS by 25% at every
// repetition, not reproduced when it changes nothing.
func TestScorecardSockmap(t *testing.T) {
	results := func(latGain, qpsGain float64) []*bench.Result {
		var out []*bench.Result
		for _, name := range []string{scSockLat, scSockQPS} {
			r := testResult()
			r.Scenario.Name, r.Runs = name, nil
			for rep := range 10 {
				d := 1 + 0.05*float64(rep%3) // the machine drifts between repetitions
				for _, v := range []string{"onehop", "onehop-sockmap", "sidecar", "sidecar-sockmap"} {
					avg, qps := 300*d, 5000/d
					if strings.HasSuffix(v, "-sockmap") {
						avg, qps = avg*latGain, qps*qpsGain
					}
					r.Runs = append(r.Runs, bench.Run{ID: fmt.Sprintf("%s-%d", v, rep), Variant: v, Placement: "same-node", Connections: 60,
						KeepAlive: true, Repetition: rep, Valid: true, Latency: bench.Latency{AvgUS: avg, ActualQPS: qps}})
				}
			}
			out = append(out, r)
		}
		return out
	}
	for _, tc := range []struct {
		lat, qps float64
		want     string
	}{{0.85, 1.25, "| reproduced |"}, {1, 1, "| not reproduced |"}} {
		dir := t.TempDir()
		if err := Scorecard(results(tc.lat, tc.qps), dir); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(dir, "claims.md"))
		var c5 string
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "| C5 |") {
				c5 = line
			}
		}
		if !strings.HasSuffix(c5, tc.want) || !strings.Contains(c5, fmt.Sprintf("onehop pod to pod same-node c=60 %.3f", tc.lat)) {
			t.Errorf("latency x%.2f, QPS x%.2f: C5 row\n%s\nwant it to end %q", tc.lat, tc.qps, c5, tc.want)
		}
	}
}

// TestRenderOptionTwins: a variant and its -sockmap twin get a paired with/without table.
func TestRenderOptionTwins(t *testing.T) {
	r := testResult()
	r.Runs = nil
	for rep := range 5 {
		d := 1 + 0.1*float64(rep)
		for _, v := range []string{"onehop", "onehop-sockmap"} {
			avg, qps := 200*d, 1000.0
			if v == "onehop-sockmap" {
				avg, qps = avg*0.8, qps*1.25
			}
			r.Runs = append(r.Runs, bench.Run{ID: fmt.Sprintf("%s-%d", v, rep), Variant: v, Placement: "same-node", Connections: 60,
				KeepAlive: true, Mode: "max-qps", Duration: 3 * time.Second, Repetition: rep, Valid: true,
				Latency:  bench.Latency{AvgUS: avg, ActualQPS: qps, Percentiles: map[string]float64{"p50": avg, "p90": avg, "p99": avg}},
				CPUPer1k: bench.CPUPer1k{HostBusyMS: 100}})
		}
	}
	md, _, _ := render(t, r)
	got := row(t, md, "onehop-sockmap / onehop | 60", "With sockmap / without, paired")
	if len(got) < 6 || !strings.HasPrefix(got[0], "0.80") || !strings.HasPrefix(got[3], "1.25") || got[5] != "5" {
		t.Errorf("twin row %q, want mean ratio 0.80, QPS ratio 1.25 over 5 pairs", got)
	}
}

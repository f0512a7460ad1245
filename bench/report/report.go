// Package report renders benchmark results into Markdown reports with latency plots. Only valid
// runs feed a plot or a table; invalid ones are listed with their reasons so nothing disappears
// silently.
package report

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/stats"
)

// baseline is the variant ratios are computed against.
const baseline = "baseline"

// plotted are the percentiles drawn and tabulated; p99.9 from short runs is too noisy to compare.
var plotted = []string{"p50", "p90", "p99"}

// Metric names for the non-latency values aggregated per cell; components get compPrefix.
const (
	mQPS       = "qps"
	mMean      = "mean"
	mBusy      = "busy"
	mSoftirq   = "softirq"
	compPrefix = "cpu:"
)

// optionSuffix names a variant's twin with same-node acceleration on (onehop-sockmap).
const optionSuffix = "-sockmap"

// minCI is the fewest values a confidence interval is computed from: a bootstrap over two values
// only redraws those two, and would show the min–max range under another name.
const minCI = 3

// stat summarises one metric over the valid repetitions of a cell.
type stat struct {
	med, min, max float64
	n             int
	// ci is the 95% bootstrap interval of med; hasCI is false with fewer than minCI values and for
	// metrics no table or plot shows with an interval.
	ci    stats.Interval
	hasCI bool
	// reps is the value of each valid repetition, so that variants measured together can be paired.
	reps map[int]float64
}

// cell is one point on a plot: a variant at a connection count.
type cell struct {
	variant string
	conns   int
}

// section is everything measured for one placement and keep-alive mode; it becomes one plot and
// its tables.
type section struct {
	placement  string
	keepAlive  bool
	load       string
	variants   []string
	conns      []int
	components []string
	// cells maps a cell that ran to its metrics; the map is empty when no repetition was valid.
	cells map[cell]map[string]stat
	// runs counts the runs of each cell, valid or not.
	runs map[cell]int
}

// Render writes <outDir>/<scenario-name>.md and its plots
// (<scenario-name>-<placement>-<keepalive|newconn>.svg and .png) for one result, returning the
// files written.
func Render(r *bench.Result, outDir string) ([]string, error) {
	name := fileName(r.Scenario.Name)
	if name == "" {
		return nil, fmt.Errorf("result has no scenario name")
	}
	if len(r.Survival) > 0 {
		return renderSurvival(r, name, outDir)
	}
	if len(r.Startup) > 0 {
		return renderStartup(r, name, outDir)
	}
	secs, err := sections(r.Runs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.Scenario.Name, err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	variants := variantsOf(r.Runs)

	var b strings.Builder
	writeHeader(&b, r, variants)
	var files []string
	for _, s := range secs {
		label, file := mode(s.keepAlive)
		base := fmt.Sprintf("%s-%s-%s", name, fileName(s.placement), file)
		title := fmt.Sprintf("latency vs connections — %s, %s, %s", s.placement, label, s.load)
		written, err := writePlots(s, variants, title, filepath.Join(outDir, base))
		files = append(files, written...)
		if err != nil {
			return files, err
		}
		writeSection(&b, s, title, base)
	}
	writeInvalid(&b, r.Runs)
	writeTelemetry(&b, r.Telemetry)

	md := filepath.Join(outDir, name+".md")
	if err := os.WriteFile(md, []byte(b.String()), 0o644); err != nil {
		return files, err
	}
	return append([]string{md}, files...), nil
}

// Index writes <outDir>/README.md linking every scenario report found in results (one line per
// scenario with its date, git revision and a validity count). When a scenario appears more than
// once the most recent result is listed, as Render would have overwritten the older report.
func Index(results []*bench.Result, outDir string) error {
	latest := newest(results)
	var b strings.Builder
	b.WriteString("# Benchmark reports\n\n## Claims scorecard\n\n" + scorecard(latest) + "## Scenarios\n\n")
	for _, n := range slices.Sorted(maps.Keys(latest)) {
		r := latest[n]
		what := validity(r.Runs) + " runs valid"
		if len(r.Survival) > 0 {
			what = survivalLine(r.Survival)
		}
		if len(r.Startup) > 0 {
			what = fmt.Sprintf("%d new pods", len(r.Startup))
		}
		if r.Quick {
			what += ", quick run"
		}
		fmt.Fprintf(&b, "- [%s](%s.md) — %s, revision %s, %s, %s\n", r.Scenario.Name, fileName(n),
			r.StartedAt.UTC().Format("2006-01-02 15:04 MST"), revision(r), r.EndedAt.Sub(r.StartedAt).Round(time.Second), what)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(outDir, "README.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	return Scorecard(results, outDir)
}

// sections groups runs by placement and keep-alive mode, then by variant and connection count,
// aggregating the valid repetitions of each cell.
func sections(runs []bench.Run) ([]*section, error) {
	type key struct {
		placement string
		keepAlive bool
	}
	byKey := map[key][]bench.Run{}
	for _, r := range runs {
		k := key{r.Placement, r.KeepAlive}
		byKey[k] = append(byKey[k], r)
	}
	var out []*section
	for k, all := range byKey {
		s := &section{placement: k.placement, keepAlive: k.keepAlive, cells: map[cell]map[string]stat{}, runs: map[cell]int{}}
		byCell := map[cell][]bench.Run{}
		for _, r := range all {
			byCell[cell{r.Variant, r.Connections}] = append(byCell[cell{r.Variant, r.Connections}], r)
			s.runs[cell{r.Variant, r.Connections}]++
		}
		// Medians over different offered loads would mix incomparable numbers.
		loads := distinct(all, loadLabel)
		if len(loads) > 1 {
			return nil, fmt.Errorf("%s, %s mixes loads %s; one report section needs one load",
				s.placement, modeLabel(s.keepAlive), strings.Join(loads, ", "))
		}
		s.load = loads[0]
		s.variants = variantsOf(all)
		s.conns = distinct(all, func(x bench.Run) int { return x.Connections })
		comps := map[string]bool{}
		for c, rs := range byCell {
			s.cells[c] = aggregate(rs)
			for m := range s.cells[c] {
				if name, ok := strings.CutPrefix(m, compPrefix); ok {
					comps[name] = true
				}
			}
		}
		s.components = slices.Sorted(maps.Keys(comps))
		out = append(out, s)
	}
	// Placements alphabetically, keep-alive before new connections.
	slices.SortFunc(out, func(a, b *section) int {
		return cmp.Or(strings.Compare(a.placement, b.placement), cmp.Compare(modeLabel(a.keepAlive), modeLabel(b.keepAlive)))
	})
	return out, nil
}

// aggregate reduces the valid runs of one cell to per-metric median, min, max and, for the
// latencies and host busy time, the 95% interval of the median.
func aggregate(runs []bench.Run) map[string]stat {
	values := map[string]map[int]float64{}
	add := func(metric string, rep int, v float64) {
		if values[metric] == nil {
			values[metric] = map[int]float64{}
		}
		values[metric][rep] = v
	}
	for _, r := range runs {
		if !r.Valid {
			continue
		}
		add(mQPS, r.Repetition, r.Latency.ActualQPS)
		add(mMean, r.Repetition, r.Latency.AvgUS)
		add(mBusy, r.Repetition, r.CPUPer1k.HostBusyMS)
		add(mSoftirq, r.Repetition, r.CPUPer1k.HostSoftirqMS)
		for _, p := range plotted {
			if v, ok := r.Latency.Percentile(p); ok {
				add(p, r.Repetition, v)
			}
		}
		for c, v := range r.CPUPer1k.Components {
			add(compPrefix+c, r.Repetition, v)
		}
	}
	out := make(map[string]stat, len(values))
	for m, reps := range values {
		vs := slices.Sorted(maps.Values(reps))
		n := len(vs)
		// The median, not the mean: one disturbed repetition must not move the reported figure.
		st := stat{med: (vs[(n-1)/2] + vs[n/2]) / 2, min: vs[0], max: vs[n-1], n: n, reps: reps}
		// Intervals only where they are shown: each is 10,000 resamples.
		if m == mBusy || slices.Contains(plotted, m) {
			st.ci, st.hasCI = medianCI(vs)
		}
		out[m] = st
	}
	return out
}

// medianCI is stats.MedianCI's 95% interval of vs (the same in any order), none from fewer than
// minCI values.
func medianCI(vs []float64) (stats.Interval, bool) {
	if len(vs) < minCI {
		return stats.Interval{}, false
	}
	e, err := stats.MedianCI(vs, 0.95)
	return e.CI, err == nil
}

// lookup returns a cell's metric, or why there is none: "invalid" when no repetition was valid,
// "–" when it was not measured at all.
func (s *section) lookup(c cell, metric string) (stat, string) {
	m, ran := s.cells[c]
	st, ok := m[metric]
	switch {
	case ok:
		return st, ""
	case ran && len(m) == 0:
		return st, "invalid"
	default:
		return st, "–"
	}
}

func (s *section) show(c cell, metric string, format func(stat) string) string {
	st, missing := s.lookup(c, metric)
	if missing != "" {
		return missing
	}
	return format(st)
}

func writeHeader(b *strings.Builder, r *bench.Result, variants []string) {
	writeName(b, r)
	b.WriteString("## What was measured\n\n")
	fmt.Fprintf(b, "Variants: %s. Placements: %s. Connections: %s (%s). "+
		"Load: %s; each run lasted %s with a %s-byte payload; %d repetitions per point "+
		"(%s runs valid). Latency and host busy time are medians over valid repetitions with their 95%% "+
		"confidence interval in brackets (percentile bootstrap; no interval from fewer than %d repetitions); ratios "+
		"to %s are medians of paired per-repetition ratios (runs of one repetition measured together); CPU is "+
		"CPU-milliseconds per 1000 requests.\n\n",
		join(variants), join(distinct(r.Runs, func(x bench.Run) string { return x.Placement })),
		join(distinct(r.Runs, func(x bench.Run) int { return x.Connections })),
		join(distinct(r.Runs, func(x bench.Run) string { return modeLabel(x.KeepAlive) })),
		join(distinct(r.Runs, loadLabel)), join(distinct(r.Runs, func(x bench.Run) time.Duration { return x.Duration })),
		join(distinct(r.Runs, func(x bench.Run) int { return x.PayloadBytes })),
		len(distinct(r.Runs, func(x bench.Run) int { return x.Repetition })), validity(r.Runs), minCI, baseline)
	writeEnvironment(b, r)
}

// writeEnvironment writes the variants, machine, versions and lab a result came from.
func writeEnvironment(b *strings.Builder, r *bench.Result) {
	if len(r.Variants) > 0 {
		b.WriteString("## Variants\n\n")
		var rows [][]string
		for _, v := range slices.Sorted(maps.Keys(r.Variants)) {
			rows = append(rows, []string{v, r.Variants[v]})
		}
		writeTable(b, []string{"variant", "data plane (proxy and version, encryption)"}, rows)
	}
	e, c := r.Environment, r.Cluster
	rows := [][]string{
		{"Host", e.Hostname},
		{"OS", e.OS},
		{"Kernel", strings.TrimSpace(e.Kernel + " " + e.KernelVersion)},
		{"Architecture", e.Arch},
		{"CPU", e.CPUModel},
		{"Cores", fmt.Sprint(e.Cores)},
		{"Memory", fmt.Sprintf("%.1f GiB", float64(e.MemoryBytes)/(1<<30))},
		{"Go", e.GoVersion},
	}
	for _, m := range slices.Sorted(maps.Keys(e.Modules)) {
		rows = append(rows, []string{"Module " + m, e.Modules[m]})
	}
	for _, t := range slices.Sorted(maps.Keys(e.Tools)) {
		rows = append(rows, []string{"Tool " + t, e.Tools[t]})
	}
	rows = append(rows,
		[]string{"Git revision", revision(r)},
		[]string{"Cluster", fmt.Sprintf("%s %s, %d nodes, %s", c.Provider, c.Name, c.Nodes, strings.Join(c.IPFamilies, "/"))},
		[]string{"Started", r.StartedAt.UTC().Format(time.RFC3339)},
		[]string{"Ended", r.EndedAt.UTC().Format(time.RFC3339)},
		[]string{"Wall time", r.EndedAt.Sub(r.StartedAt).Round(time.Second).String()},
	)
	b.WriteString("## Environment\n\n")
	writeTable(b, []string{"property", "value"}, rows)
}

func writeSection(b *strings.Builder, s *section, title, base string) {
	fmt.Fprintf(b, "## %s, %s\n\n", s.placement, modeLabel(s.keepAlive))
	fmt.Fprintf(b, "[![%s](%s.png)](%s.svg)\n\n[SVG](%s.svg)\n\n", title, base, base, base)

	median := func(st stat) string { return num(st.med) }
	var rows [][]string
	for _, v := range s.variants {
		for _, c := range s.conns {
			row := []string{v, fmt.Sprint(c)}
			for _, p := range plotted {
				row = append(row, s.show(cell{v, c}, p, withCI))
			}
			qps, _ := s.lookup(cell{v, c}, mQPS)
			rows = append(rows, append(row, s.show(cell{v, c}, mQPS, median), fmt.Sprintf("%d/%d", qps.n, s.runs[cell{v, c}])))
		}
	}
	head := []string{"variant", "connections"}
	for _, p := range plotted {
		head = append(head, p+" µs [95% CI]")
	}
	writeTable(b, append(head, "QPS", "n valid"), rows)

	if slices.Contains(s.variants, baseline) && len(s.variants) > 1 {
		fmt.Fprintf(b, "Ratio to %[1]s, paired: the median over repetitions of the variant's latency / %[1]s's in the "+
			"same repetition (measured seconds apart, so drift of the machine cancels), with its 95%% CI; the "+
			"Mann–Whitney p (unpaired) tests whether the two variants' p50s over repetitions differ:\n\n", baseline)
		rows = nil
		for _, v := range s.variants[1:] {
			for _, c := range s.conns {
				va, vb := cell{v, c}, cell{baseline, c}
				p50, pairs := s.pairedRatio(va, vb, "p50")
				p99, _ := s.pairedRatio(va, vb, "p99")
				rows = append(rows, []string{v, fmt.Sprint(c), p50, p99, s.mannWhitney(va, vb, "p50"), fmt.Sprint(pairs)})
			}
		}
		writeTable(b, []string{"variant", "connections", "p50 ratio [95% CI]", "p99 ratio [95% CI]", "Mann–Whitney p (p50)", "pairs"}, rows)
	}

	// A variant and its accelerated twin (onehop and onehop-sockmap): what the option changes.
	rows = nil
	for _, v := range s.variants {
		if !strings.HasSuffix(v, optionSuffix) || !slices.Contains(s.variants, strings.TrimSuffix(v, optionSuffix)) {
			continue
		}
		for _, c := range s.conns {
			va, vb := cell{v, c}, cell{strings.TrimSuffix(v, optionSuffix), c}
			mean, pairs := s.pairedRatio(va, vb, mMean)
			p50, _ := s.pairedRatio(va, vb, "p50")
			p99, _ := s.pairedRatio(va, vb, "p99")
			qps, _ := s.pairedRatio(va, vb, mQPS)
			busy, _ := s.pairedRatio(va, vb, mBusy)
			rows = append(rows, []string{v + " / " + vb.variant, fmt.Sprint(c), mean, p50, p99, qps, busy, fmt.Sprint(pairs)})
		}
	}
	if len(rows) > 0 {
		fmt.Fprintf(b, "With %s / without, paired per repetition (median with its 95%% CI): latency (mean, p50, p99), "+
			"achieved QPS and host CPU per 1000 requests:\n\n", strings.TrimPrefix(optionSuffix, "-"))
		writeTable(b, []string{"variants", "connections", "mean ratio", "p50 ratio", "p99 ratio", "QPS ratio", "CPU ratio", "pairs"}, rows)
	}

	fmt.Fprintf(b, "CPU-milliseconds per 1000 requests (median over valid repetitions, host busy with its 95%% CI); "+
		"mesh overhead is the variant's median host busy time minus the baseline's at the same point:\n\n")
	head = []string{"variant", "connections", "host busy [95% CI]", "mesh overhead", "host softirq"}
	for _, c := range s.components {
		head = append(head, c)
	}
	overhead := func(v string, c int) string {
		st, m1 := s.lookup(cell{v, c}, mBusy)
		bl, m2 := s.lookup(cell{baseline, c}, mBusy)
		if v == baseline || m1 != "" || m2 != "" {
			return "–"
		}
		return num(st.med - bl.med)
	}
	rows = nil
	for _, v := range s.variants {
		for _, c := range s.conns {
			row := []string{v, fmt.Sprint(c), s.show(cell{v, c}, mBusy, withCI), overhead(v, c), s.show(cell{v, c}, mSoftirq, median)}
			for _, comp := range s.components {
				row = append(row, s.show(cell{v, c}, compPrefix+comp, median))
			}
			rows = append(rows, row)
		}
	}
	writeTable(b, head, rows)
}

// withCI formats a median with its interval, 412 [398, 431], or alone when it has none.
func withCI(st stat) string {
	return numCI(st.med, st.ci, st.hasCI)
}

func numCI(med float64, ci stats.Interval, ok bool) string {
	if !ok {
		return num(med)
	}
	return fmt.Sprintf("%s [%s, %s]", num(med), num(ci.Lo), num(ci.Hi))
}

// paired returns v/base of metric for every repetition where both cells were valid. Pairs
// are what was measured together: one repetition runs every variant seconds apart.
func (s *section) paired(v, base cell, metric string) []float64 {
	a, _ := s.lookup(v, metric)
	b, _ := s.lookup(base, metric)
	var out []float64
	for rep, x := range a.reps {
		if y, ok := b.reps[rep]; ok && y > 0 {
			out = append(out, x/y)
		}
	}
	return out
}

// pairedRatio formats the median of the paired ratios with its interval, and counts the pairs.
func (s *section) pairedRatio(v, base cell, metric string) (string, int) {
	_, amiss := s.lookup(v, metric)
	_, bmiss := s.lookup(base, metric)
	if amiss != "" || bmiss != "" {
		return cmp.Or(amiss, bmiss), 0
	}
	rs := s.paired(v, base, metric)
	if len(rs) == 0 {
		return "–", 0
	}
	ci, ok := medianCI(rs)
	return numCI(stats.Median(rs), ci, ok), len(rs)
}

// mannWhitney is the p-value of the two cells' metric over repetitions, unpaired; none from fewer
// than minCI repetitions a side, where the normal approximation says nothing.
func (s *section) mannWhitney(v, base cell, metric string) string {
	a, amiss := s.lookup(v, metric)
	b, bmiss := s.lookup(base, metric)
	if amiss != "" || bmiss != "" {
		return cmp.Or(amiss, bmiss)
	}
	if a.n < minCI || b.n < minCI {
		return "–"
	}
	_, p, err := stats.MannWhitney(slices.Collect(maps.Values(a.reps)), slices.Collect(maps.Values(b.reps)))
	if err != nil {
		return "–"
	}
	return fmt.Sprintf("%.2g", p)
}

// writeInvalid lists every run kept out of the plots, so an exclusion is always visible.
func writeInvalid(b *strings.Builder, runs []bench.Run) {
	b.WriteString("## Runs flagged invalid\n\n")
	bad := invalid(runs)
	if len(bad) == 0 {
		b.WriteString("None: every run passed the validity checks.\n")
		return
	}
	slices.SortFunc(bad, func(x, y bench.Run) int { return strings.Compare(x.ID, y.ID) })
	for _, r := range bad {
		fmt.Fprintf(b, "- `%s` (%s, %s, %s, %d connections, repetition %d): %s\n", r.ID, r.Variant, r.Placement,
			modeLabel(r.KeepAlive), r.Connections, r.Repetition, cmp.Or(strings.Join(r.Invalid, "; "), "no reason recorded"))
	}
}

// writeTable writes a Markdown table, marking an empty cell "–" so it does not read as a glitch.
func writeTable(b *strings.Builder, head []string, rows [][]string) {
	line := func(cells []string) {
		for i, c := range cells {
			cells[i] = cmp.Or(strings.ReplaceAll(c, "|", `\|`), "–")
		}
		fmt.Fprintf(b, "| %s |\n", strings.Join(cells, " | "))
	}
	line(head)
	line(slices.Repeat([]string{"---"}, len(head)))
	for _, r := range rows {
		line(r)
	}
	b.WriteString("\n")
}

// num keeps three significant figures or so: 1234, 56.7, 0.89.
func num(v float64) string {
	decimals := 2
	if a := math.Abs(v); a >= 100 {
		decimals = 0
	} else if a >= 10 {
		decimals = 1
	}
	return strconv.FormatFloat(v, 'f', decimals, 64)
}

func loadLabel(r bench.Run) string {
	switch r.Mode {
	case "fixed-qps":
		return fmt.Sprintf("%g QPS", r.RequestedQPS)
	case "max-qps":
		return "max QPS"
	}
	return r.Mode
}

// mode names a keep-alive setting for readers and for file names.
func mode(keepAlive bool) (label, file string) {
	if keepAlive {
		return "keep-alive", "keepalive"
	}
	return "new connection per request", "newconn"
}

func modeLabel(keepAlive bool) string { label, _ := mode(keepAlive); return label }

func revision(r *bench.Result) string {
	rev := cmp.Or(r.Environment.GitRevision, "unknown")
	if r.Environment.GitDirty {
		rev += " (dirty)"
	}
	return rev
}

// variantsOf lists variants alphabetically but the baseline first, as the reference the others are
// read against.
func variantsOf(runs []bench.Run) []string {
	vs := distinct(runs, func(r bench.Run) string { return r.Variant })
	if i := slices.Index(vs, baseline); i > 0 {
		vs = slices.Insert(slices.Delete(vs, i, i+1), 0, baseline)
	}
	return vs
}

// fileName keeps names safe as file names and link targets.
func fileName(s string) string { return unsafeChars.ReplaceAllString(s, "-") }

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]`)

func invalid(runs []bench.Run) []bench.Run {
	return slices.DeleteFunc(slices.Clone(runs), func(r bench.Run) bool { return r.Valid })
}

func validity(runs []bench.Run) string {
	return fmt.Sprintf("%d/%d", len(runs)-len(invalid(runs)), len(runs))
}

// distinct returns the sorted distinct values of f over runs.
func distinct[T cmp.Ordered](runs []bench.Run, f func(bench.Run) T) []T {
	var out []T
	for _, r := range runs {
		out = append(out, f(r))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func join[T any](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}

package report

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/stats"
)

// A claim's verdict is read from 95% intervals of paired per-repetition estimates, against a
// region fixed in code before any result exists: at every point the claim is judged on,
// reproduced if the interval lies inside the region, partly if the median does, not reproduced
// if the interval lies wholly outside, inconclusive otherwise (too wide to say). Over several
// points the weakest verdict stands.
const (
	vReproduced    = "reproduced"
	vPartly        = "partly"
	vInconclusive  = "inconclusive"
	vNotReproduced = "not reproduced"
)

// region is what a claim says an estimate is: lo ≤ x ≤ hi (±Inf for an open side).
type region struct{ lo, hi float64 }

func atMost(hi float64) region  { return region{math.Inf(-1), hi} }
func atLeast(lo float64) region { return region{lo, math.Inf(1)} }

func (g region) has(x float64) bool { return g.lo <= x && x <= g.hi }

// pointEstimate is a paired estimate at one point (placement and connections).
type pointEstimate struct {
	where string
	e     stats.Estimate
}

// judge is the verdict over the points' estimates (see above).
func judge(pts []pointEstimate, g region) string {
	if len(pts) == 0 {
		return vInconclusive
	}
	rank := map[string]int{vNotReproduced: 0, vInconclusive: 1, vPartly: 2, vReproduced: 3}
	worst := vReproduced
	for _, p := range pts {
		v := vInconclusive
		switch ci := p.e.CI; {
		case g.has(ci.Lo) && g.has(ci.Hi):
			v = vReproduced
		case g.has(p.e.Median):
			v = vPartly
		case ci.Hi < g.lo || ci.Lo > g.hi:
			v = vNotReproduced
		}
		if rank[v] < rank[worst] {
			worst = v
		}
	}
	return worst
}

// pairedEstimates: at every point of r's runs with keep-alive mode ka, per repetition where all
// of variants ran validly, per(values of val for variants, in order) — skipped when ok is false —
// and the median of those with its bootstrap interval. Needs 3 or more repetitions per point.
func pairedEstimates(r *bench.Result, ka bool, val func(bench.Run) float64, per func(v []float64) (float64, bool), variants ...string) []pointEstimate {
	if r == nil {
		return nil
	}
	type point struct {
		placement string
		conns     int
	}
	type key struct {
		point
		rep int
	}
	got := map[key][]float64{}
	for _, run := range r.Runs {
		i := slices.Index(variants, run.Variant)
		if i < 0 || run.KeepAlive != ka || !run.Valid {
			continue
		}
		k := key{point{run.Placement, run.Connections}, run.Repetition}
		if got[k] == nil {
			got[k] = make([]float64, len(variants))
			for j := range got[k] {
				got[k][j] = math.NaN()
			}
		}
		got[k][i] = val(run)
	}
	byPoint := map[point][]float64{}
	for k, vs := range got {
		if slices.ContainsFunc(vs, math.IsNaN) {
			continue
		}
		if x, ok := per(vs); ok {
			byPoint[k.point] = append(byPoint[k.point], x)
		}
	}
	var out []pointEstimate
	for p, xs := range byPoint {
		if len(xs) < 3 {
			continue
		}
		e, err := stats.MedianCI(xs, 0.95)
		if err == nil {
			out = append(out, pointEstimate{fmt.Sprintf("%s c=%d", p.placement, p.conns), e})
		}
	}
	slices.SortFunc(out, func(a, b pointEstimate) int { return cmp.Compare(a.where, b.where) })
	return out
}

// ratio is the per-repetition a/b of two variants' values.
func ratio(v []float64) (float64, bool) { return v[0] / v[1], v[1] > 0 }

// addedRatio is (a − baseline)/(b − baseline) per repetition, for variants a, b, baseline: the
// share of b's cost over no mesh that a has.
func addedRatio(v []float64) (float64, bool) { return (v[0] - v[2]) / (v[1] - v[2]), v[1]-v[2] > 0 }

// difference is a − b per repetition.
func difference(v []float64) (float64, bool) { return v[0] - v[1], true }

func percentile(p string) func(bench.Run) float64 {
	return func(r bench.Run) float64 { return r.Latency.Percentiles[p] }
}

func hostBusy(r bench.Run) float64 { return r.CPUPer1k.HostBusyMS }

// describePoints prints estimates compactly: "same-node c=1 0.97 [0.95, 1.01]; …".
func describePoints(pts []pointEstimate, format string) string {
	var parts []string
	for _, p := range pts {
		parts = append(parts, fmt.Sprintf("%s "+format+" ["+format+", "+format+"]", p.where, p.e.Median, p.e.CI.Lo, p.e.CI.Hi))
	}
	if len(parts) == 0 {
		return "–"
	}
	return strings.Join(parts, "; ")
}

// reps is the fewest repetitions behind any of the estimates.
func reps(pts ...[]pointEstimate) int {
	n := 0
	for _, ps := range pts {
		for _, p := range ps {
			if n == 0 || p.e.N < n {
				n = p.e.N
			}
		}
	}
	return n
}

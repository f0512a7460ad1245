package report

import (
	"testing"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/stats"
)

func TestJudge(t *testing.T) {
	pt := func(med, lo, hi float64) pointEstimate {
		return pointEstimate{"p", stats.Estimate{Median: med, CI: stats.Interval{Lo: lo, Hi: hi}, N: 10}}
	}
	claim := atMost(1.05)
	for _, c := range []struct {
		pts  []pointEstimate
		want string
	}{
		{[]pointEstimate{pt(1.0, 0.98, 1.02)}, vReproduced},
		{[]pointEstimate{pt(1.04, 1.0, 1.08)}, vPartly},
		{[]pointEstimate{pt(1.07, 1.03, 1.1)}, vInconclusive},
		{[]pointEstimate{pt(1.2, 1.1, 1.3)}, vNotReproduced},
		// The weakest point decides.
		{[]pointEstimate{pt(1.0, 0.98, 1.02), pt(1.04, 1.0, 1.08)}, vPartly},
		{[]pointEstimate{pt(1.0, 0.98, 1.02), pt(1.2, 1.1, 1.3), pt(1.07, 1.03, 1.1)}, vNotReproduced},
		{nil, vInconclusive},
	} {
		if got := judge(c.pts, claim); got != c.want {
			t.Errorf("%v: %s, want %s", c.pts, got, c.want)
		}
	}
}

// Paired per-repetition ratios cancel drift that the variants share within a repetition.
func TestPairedEstimatesPairByRepetition(t *testing.T) {
	r := &bench.Result{}
	for rep := 1; rep <= 10; rep++ {
		drift := float64(rep) // a machine getting slower and slower
		for v, f := range map[string]float64{"a": 1.2, "b": 1} {
			r.Runs = append(r.Runs, bench.Run{Variant: v, Placement: "same-node", Connections: 4, KeepAlive: true, Repetition: rep,
				Valid: rep != 5 || v != "b", Latency: bench.Latency{Percentiles: map[string]float64{"p50": 100 * drift * f}}})
		}
	}
	pts := pairedEstimates(r, true, percentile("p50"), ratio, "a", "b")
	if len(pts) != 1 || pts[0].e.N != 9 || pts[0].e.CI.Lo < 1.1999 || pts[0].e.CI.Hi > 1.2001 || pts[0].where != "same-node c=4" {
		t.Errorf("got %+v, want one point, 9 pairs (repetition 5's b is invalid), 1.2 [1.2, 1.2]", pts)
	}
	if pts := pairedEstimates(r, false, percentile("p50"), ratio, "a", "b"); len(pts) != 0 {
		t.Errorf("new-connection mode has no runs, got %+v", pts)
	}
}

package gate

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/onehop-mesh/onehop/bench"
)

// runs makes 10 repetitions of base, head and anchor in both modes. Every repetition has its own
// drift factor shared by the three (the machine's state while they ran); head is base times
// slowdown, plus jitter.
func runs(slowdown float64) []bench.Run {
	var out []bench.Run
	for rep := 1; rep <= 10; rep++ {
		drift := 1 + 0.3*math.Sin(float64(rep)) // ±30% between repetitions
		jitter := 1 + 0.01*math.Cos(float64(7*rep))
		for _, ka := range []bool{true, false} {
			for v, f := range map[string]float64{"base": 1, "head": slowdown * jitter, "baseline": 0.9} {
				out = append(out, bench.Run{ID: fmt.Sprintf("%s/%v/%d", v, ka, rep), Variant: v, KeepAlive: ka, Repetition: rep, Valid: true,
					Latency: bench.Latency{Percentiles: map[string]float64{"p50": 400 * drift * f, "p99": 1000 * drift * f}}})
			}
		}
	}
	return out
}

func TestEvaluateFlagsAPairedSlowdownDespiteDrift(t *testing.T) {
	checks, err := Evaluate(runs(1.15), "base", "head", "baseline", DefaultThresholds)
	if err != nil {
		t.Fatal(err)
	}
	if len(checks) != 4 {
		t.Fatalf("%d checks, want 4 (2 modes x p50, p99)", len(checks))
	}
	for _, c := range checks {
		// Unpaired, ±30% drift would hide 15%; paired, it cannot.
		if !c.Regressed || c.P >= 0.01 || math.Abs(c.Ratio.Median-1.15) > 0.02 {
			t.Errorf("%s %s: regressed %v, p %v, ratio %v (%s)", c.Mode, c.Percentile, c.Regressed, c.P, c.Ratio, c.Why)
		}
	}
}

func TestEvaluatePassesEqualAndSmallDifferences(t *testing.T) {
	for _, slowdown := range []float64{1, 1.03} { // 3%: significant, but under the 5% floor
		checks, err := Evaluate(runs(slowdown), "base", "head", "baseline", DefaultThresholds)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range checks {
			if c.Regressed {
				t.Errorf("slowdown %v, %s %s: flagged (%s)", slowdown, c.Mode, c.Percentile, c.Why)
			}
		}
	}
}

func TestEvaluateAbsoluteFloor(t *testing.T) {
	rs := runs(1.15)
	for i := range rs { // a fast percentile: 15% of 40 µs is under the 10 µs floor
		rs[i].Latency.Percentiles["p50"] /= 10
	}
	checks, _ := Evaluate(rs, "base", "head", "baseline", DefaultThresholds)
	for _, c := range checks {
		if c.Percentile == "p50" && (c.Regressed || !strings.Contains(c.Why, "µs floor")) {
			t.Errorf("%s p50: %s", c.Mode, c.Why)
		}
	}
}

func TestEvaluateSkipsIncompleteRepetitions(t *testing.T) {
	rs := runs(1)
	for i := range rs {
		if rs[i].Variant == "baseline" && rs[i].Repetition == 3 {
			rs[i].Valid = false // an invalid anchor: the repetition says nothing
		}
	}
	checks, err := Evaluate(rs, "base", "head", "baseline", DefaultThresholds)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range checks {
		if len(c.Head) != 9 {
			t.Errorf("%s %s: %d repetitions used, want 9", c.Mode, c.Percentile, len(c.Head))
		}
	}
	if _, err := Evaluate(nil, "base", "head", "baseline", DefaultThresholds); err == nil {
		t.Error("no runs: no error")
	}
}

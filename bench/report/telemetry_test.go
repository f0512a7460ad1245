package report

import (
	"strings"
	"testing"

	"github.com/onehop-mesh/onehop/bench"
)

// costResult is a telemetry-cost result whose telemetry-on runs cost ratio times the off runs'
// CPU, with a spread of +-spread around it over 10 repetitions, in both keep-alive modes.
func costResult(ratio, spread float64) *bench.Result {
	r := &bench.Result{Scenario: bench.ScenarioInfo{Name: scTelemetry}}
	for rep := 1; rep <= 10; rep++ {
		wiggle := spread * float64(rep%5-2) / 2 // -spread .. +spread
		for _, ka := range []bool{true, false} {
			for v, cpu := range map[string]float64{"onehop-telemetry-off": 400, "onehop": 400 * (ratio + wiggle), "onehop-access-log": 400 * (ratio + 0.1)} {
				r.Runs = append(r.Runs, bench.Run{Variant: v, Placement: "same-node", Connections: 8, KeepAlive: ka, Repetition: rep,
					Valid: true, CPUPer1k: bench.CPUPer1k{HostBusyMS: cpu}})
			}
		}
	}
	return r
}

// The C7 verdict follows the intervals of the paired ratios against the 5% in the claim.
func TestTelemetryCostVerdicts(t *testing.T) {
	for _, c := range []struct {
		ratio, spread float64
		want          string
	}{
		{1.01, 0.01, "reproduced"},
		{1.03, 0.06, "partly"},
		{1.20, 0.01, "not reproduced"},
		{1.06, 0.06, "inconclusive"},
	} {
		measured, verdict := telemetryCost(map[string]*bench.Result{scTelemetry: costResult(c.ratio, c.spread)})
		if !strings.HasPrefix(verdict, c.want) || !strings.Contains(measured, "(Mann-Whitney p = ") {
			t.Errorf("ratio %.2f +- %.2f: %q, %q; want %s", c.ratio, c.spread, measured, verdict, c.want)
		}
	}
	if _, verdict := telemetryCost(map[string]*bench.Result{}); !strings.Contains(verdict, "not measured") {
		t.Errorf("without the scenario: %q", verdict)
	}
}

package report

import (
	"fmt"
	"slices"
	"strings"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/stats"
)

// scTelemetry is the scenario of claim C7.
const scTelemetry = "telemetry-cost"

// writeTelemetry shows the data plane's own counts of the traffic (PromQL) beside fortio's.
func writeTelemetry(b *strings.Builder, t *bench.TelemetryView) {
	if t == nil {
		return
	}
	b.WriteString("## What the data plane's telemetry counted\n\n")
	fmt.Fprintf(b, "Read with PromQL (`sum by (reporter) (istio_tcp_…{destination_service_namespace, destination_service_name})`) "+
		"from %s, over the whole scenario, beside fortio's counts of the same traffic (measured runs, warm-ups, and the one request per "+
		"connection fortio makes before each). Client side: reporter=source; server side: reporter=destination. "+
		"They agree: **%s**.\n\n", t.Prometheus, yesNo(t.Agree))
	var rows [][]string
	for _, s := range t.Services {
		check := "agrees"
		if len(s.Disagreements) > 0 {
			check = strings.Join(s.Disagreements, "; ")
		}
		if !s.TelemetryOn {
			check = "telemetry off: no series (" + check + ")"
		}
		rows = append(rows, []string{s.Service,
			fmt.Sprintf("%d", s.FortioConnections), fmt.Sprintf("%.0f / %.0f", s.SourceOpened, s.SourceClosed), fmt.Sprintf("%.0f / %.0f", s.DestOpened, s.DestClosed),
			fmt.Sprintf("%d", s.FortioResponseBytes), fmt.Sprintf("%.0f / %.0f", s.SourceSentBytes, s.SourceReceivedBytes),
			fmt.Sprintf("%.0f / %.0f", s.DestReceivedBytes, s.DestSentBytes), check})
	}
	writeTable(b, []string{"service", "fortio connections", "client side opened / closed", "server side opened / closed",
		"fortio response bytes", "client side sent / received bytes", "server side received / sent bytes", "check"}, rows)
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "no"
}

// pairedRatios returns, per repetition, variant a's host CPU per 1000 requests over b's, for
// runs that were measured seconds apart with the same settings (the plan interleaves them).
func pairedRatios(r *bench.Result, a, b string, keepAlive bool) []float64 {
	type key struct {
		placement string
		conns     int
		rep       int
	}
	cpu := map[string]map[key]float64{a: {}, b: {}}
	for _, run := range r.Runs {
		if run.KeepAlive != keepAlive || !run.Valid || cpu[run.Variant] == nil {
			continue
		}
		cpu[run.Variant][key{run.Placement, run.Connections, run.Repetition}] = run.CPUPer1k.HostBusyMS
	}
	var out []float64
	for k, va := range cpu[a] {
		if vb := cpu[b][k]; vb > 0 {
			out = append(out, va/vb)
		}
	}
	slices.Sort(out)
	return out
}

// hostCPU lists a variant's host CPU per 1000 requests over its valid runs of one keep-alive mode.
func hostCPU(r *bench.Result, variant string, keepAlive bool) []float64 {
	var out []float64
	for _, run := range r.Runs {
		if run.Variant == variant && run.KeepAlive == keepAlive && run.Valid {
			out = append(out, run.CPUPer1k.HostBusyMS)
		}
	}
	return out
}

// telemetryCost is claim C7's measurement: whole-host CPU with telemetry on over off, the
// median of the paired per-repetition ratios with its 95% bootstrap interval, keep-alive and a
// new connection per request. The verdict is read from the intervals, against 5% fixed here:
// reproduced if every interval lies at or under 1.05, partly if every median does, not
// reproduced if an interval lies wholly above, inconclusive otherwise.
func telemetryCost(rs map[string]*bench.Result) (string, string) {
	r := rs[scTelemetry]
	if r == nil {
		return missing(scTelemetry)
	}
	const limit = 1.05
	var parts []string
	allCI, allMedian, anyAbove, n := true, true, false, 0
	for _, ka := range []bool{true, false} {
		on := pairedRatios(r, "onehop", "onehop-telemetry-off", ka)
		if len(on) < 2 {
			continue
		}
		e, err := stats.MedianCI(on, 0.95)
		if err != nil {
			continue
		}
		n++
		allCI = allCI && e.CI.Hi <= limit
		allMedian = allMedian && e.Median <= limit
		anyAbove = anyAbove || e.CI.Lo > limit
		part := fmt.Sprintf("%s: metrics on/off %s (%d paired runs", modeLabel(ka), e, e.N)
		if _, p, err := stats.MannWhitney(hostCPU(r, "onehop", ka), hostCPU(r, "onehop-telemetry-off", ka)); err == nil {
			part += fmt.Sprintf(", Mann-Whitney p = %.2g", p)
		}
		part += ")"
		if logged := pairedRatios(r, "onehop-access-log", "onehop-telemetry-off", ka); len(logged) >= 2 {
			if le, err := stats.MedianCI(logged, 0.95); err == nil {
				part += fmt.Sprintf(", with access log %s", le)
			}
		}
		parts = append(parts, part)
	}
	if n == 0 {
		return missing(scTelemetry)
	}
	measured := "whole-host CPU per 1000 requests at 1000 QPS, median of per-repetition ratios [95% bootstrap interval]: " + strings.Join(parts, "; ")
	if t := r.Telemetry; t != nil {
		measured += fmt.Sprintf("; reports every 5 s, long connections one by one; Prometheus counts agree with fortio: %s", yesNo(t.Agree))
	}
	switch {
	case allCI:
		return measured, "reproduced"
	case anyAbove:
		return measured, "not reproduced"
	case allMedian:
		return measured, "partly (the medians are under 5%, the intervals reach above)"
	}
	return measured, "inconclusive (the intervals are too wide to say)"
}

package report

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/onehop-mesh/onehop/bench"
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

// telemetryCost is claim C7's measurement: whole-host CPU with telemetry on over off, median
// of the paired per-repetition ratios, keep-alive and new connection per request.
func telemetryCost(rs map[string]*bench.Result) (string, string) {
	r := rs[scTelemetry]
	if r == nil {
		return missing(scTelemetry)
	}
	var parts []string
	worst, n := 0.0, 0
	for _, ka := range []bool{true, false} {
		on := pairedRatios(r, "onehop", "onehop-telemetry-off", ka)
		logged := pairedRatios(r, "onehop-access-log", "onehop-telemetry-off", ka)
		if len(on) == 0 {
			continue
		}
		m := bench.Median(on)
		worst, n = math.Max(worst, m), n+1
		part := fmt.Sprintf("%s: metrics on/off %.3f (%.3f–%.3f, %d paired runs)", modeLabel(ka), m, on[0], on[len(on)-1], len(on))
		if len(logged) > 0 {
			part += fmt.Sprintf(", with access log %.3f", bench.Median(logged))
		}
		parts = append(parts, part)
	}
	if n == 0 {
		return missing(scTelemetry)
	}
	measured := "whole-host CPU per 1000 requests at 1000 QPS, median of per-repetition ratios: " + strings.Join(parts, "; ")
	if t := r.Telemetry; t != nil {
		measured += fmt.Sprintf("; reports every 5 s, long connections one by one; Prometheus counts agree with fortio: %s", yesNo(t.Agree))
	}
	switch {
	case worst <= 1.05:
		return measured, "reproduced"
	case worst <= 1.10:
		return measured, "partly (under 10%, not under 5%)"
	}
	return measured, "not reproduced"
}

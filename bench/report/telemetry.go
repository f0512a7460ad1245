package report

import (
	"fmt"
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

// telemetryCost is claim C7's measurement: whole-host CPU with telemetry on over off, paired per
// repetition, keep-alive and a new connection per request, judged against 5%.
func telemetryCost(rs map[string]*bench.Result) (string, string) {
	r := rs[scTelemetry]
	if r == nil {
		return missing(scTelemetry)
	}
	var parts []string
	var all []pointEstimate
	for _, ka := range []bool{true, false} {
		on := pairedEstimates(r, ka, hostBusy, ratio, "onehop", "onehop-telemetry-off")
		if len(on) == 0 {
			continue
		}
		all = append(all, on...)
		part := fmt.Sprintf("%s: metrics on/off %s", modeLabel(ka), describePoints(on, "%.3f"))
		if _, p, err := stats.MannWhitney(hostCPU(r, "onehop", ka), hostCPU(r, "onehop-telemetry-off", ka)); err == nil {
			part += fmt.Sprintf(" (Mann-Whitney p = %.2g)", p)
		}
		if logged := pairedEstimates(r, ka, hostBusy, ratio, "onehop-access-log", "onehop-telemetry-off"); len(logged) > 0 {
			part += ", with access log " + describePoints(logged, "%.3f")
		}
		parts = append(parts, part)
	}
	if len(all) == 0 {
		return missing(scTelemetry)
	}
	measured := "whole-host CPU per 1000 requests at 1000 QPS (claim: ≤ 1.05): " + strings.Join(parts, "; ") + pairedNote(all)
	if t := r.Telemetry; t != nil {
		measured += fmt.Sprintf("; reports every 5 s, long connections one by one; Prometheus counts agree with fortio: %s", yesNo(t.Agree))
	}
	return measured, verdict(all, atMost(1.05))
}

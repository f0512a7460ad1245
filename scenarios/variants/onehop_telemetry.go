package variants

import (
	"context"

	"github.com/onehop-mesh/onehop/clusters"
)

// OnehopTelemetry is onehop with its pods enrolled with another telemetry setting (the
// namespace's TelemetryLabel): "off", or "access-log" (metrics and an access log line per
// connection event). It shares onehop's agents, so the cost of telemetry (claim C7) is measured
// side by side with onehop (metrics on, the agents' default), interleaved, on the same nodes.
type OnehopTelemetry struct {
	base *Onehop
	mode string
}

func init() {
	for _, mode := range []string{"off", "access-log"} {
		RegisterNetns(func(c clusters.Cluster) NetnsVariant { return &OnehopTelemetry{base: agentsOf(c), mode: mode} })
	}
}

func (v *OnehopTelemetry) Name() string {
	if v.mode == "off" {
		return "onehop-telemetry-off"
	}
	return "onehop-" + v.mode
}

func (v *OnehopTelemetry) Describe() string {
	if v.mode == "off" {
		return v.base.Describe() + "; connection telemetry off"
	}
	return v.base.Describe() + "; connection telemetry and a JSON access log line per connection event"
}

func (v *OnehopTelemetry) Labels() map[string]string {
	return map[string]string{DataplaneModeLabel: "onehop", TelemetryLabel: v.mode}
}

func (v *OnehopTelemetry) Install(ctx context.Context, c clusters.Cluster) error {
	return v.base.Install(ctx, c)
}

func (v *OnehopTelemetry) Uninstall(ctx context.Context, c clusters.Cluster) error {
	return v.base.Uninstall(ctx, c)
}

func (v *OnehopTelemetry) MetricsTargets(c clusters.Cluster) []string {
	return v.base.MetricsTargets(c)
}
func (v *OnehopTelemetry) TelemetryOn() bool { return v.mode != "off" }

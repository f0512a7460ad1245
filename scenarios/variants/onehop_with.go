package variants

import (
	"context"
	"syscall"

	"github.com/onehop-mesh/onehop/clusters"
)

// OnehopWith is onehop with its pods enrolled with other options, which its namespace's labels
// carry: telemetry "off", or "access-log" (metrics and an access log line per connection event);
// or same-node acceleration (SockmapLabel). It shares onehop's agents, so the cost of telemetry
// (claim C7) and the gain of sockmap (claim C5) are measured side by side with onehop,
// interleaved, on the same nodes.
type OnehopWith struct {
	base      *Onehop
	name      string
	describe  string
	labels    map[string]string
	telemetry bool
}

func init() {
	RegisterNetns(func(c clusters.Cluster) NetnsVariant {
		return &OnehopWith{base: agentsOf(c), name: "onehop-telemetry-off", describe: "connection telemetry off",
			labels: map[string]string{TelemetryLabel: "off"}}
	})
	RegisterNetns(func(c clusters.Cluster) NetnsVariant {
		return &OnehopWith{base: agentsOf(c), name: "onehop-access-log", telemetry: true,
			describe: "connection telemetry and a JSON access log line per connection event",
			labels:   map[string]string{TelemetryLabel: "access-log"}}
	})
	RegisterNetns(func(c clusters.Cluster) NetnsVariant {
		return &OnehopWith{base: agentsOf(c), name: "onehop-sockmap", telemetry: true,
			describe: "same-node connections accelerated with sockmap (sk_msg redirects payloads socket to socket)",
			labels:   map[string]string{SockmapLabel: "on"}}
	})
}

func (v *OnehopWith) Name() string     { return v.name }
func (v *OnehopWith) Describe() string { return v.base.Describe() + "; " + v.describe }

func (v *OnehopWith) Labels() map[string]string {
	l := map[string]string{DataplaneModeLabel: "onehop"}
	for k, x := range v.labels {
		l[k] = x
	}
	return l
}

func (v *OnehopWith) Install(ctx context.Context, c clusters.Cluster) error {
	return v.base.Install(ctx, c)
}

func (v *OnehopWith) Uninstall(ctx context.Context, c clusters.Cluster) error {
	return v.base.Uninstall(ctx, c)
}

func (v *OnehopWith) MetricsTargets(c clusters.Cluster) []string {
	return v.base.MetricsTargets(c)
}
func (v *OnehopWith) TelemetryOn() bool { return v.telemetry }

// Restart restarts the shared agents: what restarts is onehop's agent, whatever options the
// pods were enrolled with.
func (v *OnehopWith) Restart(ctx context.Context, c clusters.Cluster, node string, sig syscall.Signal) (RestartEvent, error) {
	return v.base.Restart(ctx, c, node, sig)
}

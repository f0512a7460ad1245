package bench

import (
	"slices"
	"time"

	"github.com/onehop-mesh/onehop/bench/probe"
)

// Survival is one variant's restart-mid-traffic run: its daemon restarted again and again while a
// prober kept long-lived connections and a stream of new connections going through a VIP.
type Survival struct {
	Variant   string         `json:"variant"`
	Describe  string         `json:"describe"`
	Placement string         `json:"placement"`
	Target    string         `json:"target"` // VIP:port probed
	Restarts  []RestartEvent `json:"restarts"`
	// Error says why the run stopped early (a daemon that did not come back, a probe crash).
	Error string        `json:"error,omitempty"`
	Probe *probe.Result `json:"probe"` // per-bucket timeline, per-connection losses
	// ViaServiceRules counts connections to the probed VIP that the lab's kube-proxy rules
	// DNATed during the run (their first packets, on every node). For the baseline that is all
	// of them; for a variant that balances on its own it must stay 0, or traffic fell back to
	// kube-proxy while the variant's daemon was away. -1: not measurable on this cluster.
	ViaServiceRules int64           `json:"connections_via_service_rules"`
	Summary         SurvivalSummary `json:"summary"`
}

// RestartEvent is one daemon restart.
type RestartEvent struct {
	Node   string `json:"node"`
	Signal string `json:"signal"`
	// Daemon is what was restarted, e.g. "onehop-agent (pid 123 -> 456)".
	Daemon    string    `json:"daemon"`
	StoppedAt time.Time `json:"stopped_at"` // the signal was sent (or the re-sync began)
	ReadyAt   time.Time `json:"ready_at"`   // the daemon was ready again
	// ReadyMS is ReadyAt - StoppedAt in milliseconds: how long the data plane was without its
	// daemon (it may well have kept forwarding meanwhile: that is what the traffic shows).
	ReadyMS float64 `json:"ready_ms"`
}

// SurvivalSummary is what the survival table shows.
type SurvivalSummary struct {
	LongLived          int   `json:"long_lived"`
	LongLivedSurviving int   `json:"long_lived_surviving"`
	RequestsOK         int64 `json:"requests_ok"`
	RequestsFailed     int64 `json:"requests_failed"`
	NewConnOK          int64 `json:"new_connections_ok"`
	NewConnFailed      int64 `json:"new_connections_failed"`
	// NewConnFailedDuringRestarts counts failed new connections in the time buckets that
	// overlap a restart window (signal sent to daemon ready).
	NewConnFailedDuringRestarts int64 `json:"new_connections_failed_during_restarts"`
	// ReadyMS is time-to-ready by signal: median and max over the restarts.
	ReadyMS map[string]MedianMax `json:"ready_ms"`
}

// MedianMax is a median and a maximum.
type MedianMax struct {
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// SummarizeSurvival computes the survival table's row from the probe's result and the restarts.
func SummarizeSurvival(p *probe.Result, restarts []RestartEvent) SurvivalSummary {
	m := p.Summary
	s := SurvivalSummary{
		LongLived: m.LongLivedTotal, LongLivedSurviving: m.LongLivedSurviving,
		RequestsOK: m.RequestsOK, RequestsFailed: m.RequestsFailed,
		NewConnOK: m.NewConnOK, NewConnFailed: m.NewConnFailed + m.NewConnSkipped,
		ReadyMS: map[string]MedianMax{},
	}
	bucket := p.Config.Bucket
	for _, b := range p.Buckets {
		from := time.Unix(0, b.StartUnixNs)
		to := from.Add(bucket)
		for _, r := range restarts {
			if from.Before(r.ReadyAt) && to.After(r.StoppedAt) {
				s.NewConnFailedDuringRestarts += b.NewConnFailed + b.NewConnSkipped
				break
			}
		}
	}
	bySignal := map[string][]float64{}
	for _, r := range restarts {
		if !r.ReadyAt.IsZero() {
			bySignal[r.Signal] = append(bySignal[r.Signal], r.ReadyMS)
		}
	}
	for sig, ms := range bySignal {
		slices.Sort(ms)
		s.ReadyMS[sig] = MedianMax{Median: Median(ms), Max: ms[len(ms)-1], N: len(ms)}
	}
	return s
}

// Median of sorted values.
func Median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

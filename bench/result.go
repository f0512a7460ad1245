// Package bench holds what a benchmark produces: the versioned result schema, the validity rules
// that keep a bad run out of a plot, and progress reporting. Load generation, CPU sampling and
// report rendering live in its subpackages.
package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/onehop-mesh/onehop/bench/cpu"
	"github.com/onehop-mesh/onehop/bench/sysinfo"
)

// SchemaVersion is the version of the result JSON this code writes and reads. Bump it on any
// change a reader of older files would misinterpret.
const SchemaVersion = 1

// Result is one scenario run: everything needed to re-plot it and to know where it came from.
type Result struct {
	SchemaVersion int                 `json:"schema_version"`
	Scenario      ScenarioInfo        `json:"scenario"`
	Environment   sysinfo.Environment `json:"environment"`
	Cluster       ClusterInfo         `json:"cluster"`
	// Variants describes each variant that ran: what carries the traffic (proxy and version,
	// or none) and whether it is encrypted.
	Variants  map[string]string `json:"variants,omitempty"`
	StartedAt time.Time         `json:"started_at"`
	EndedAt   time.Time         `json:"ended_at"`
	Runs      []Run             `json:"runs"`
	// Survival holds restart-mid-traffic results, one per variant (Runs is then empty).
	Survival []Survival `json:"survival,omitempty"`
	// Startup holds start-up scenario results, one per new pod (Runs is then empty).
	Startup []StartupRun `json:"startup,omitempty"`
	// Quick marks a result of bench-quick: a first look, too short to conclude from.
	Quick bool `json:"quick,omitempty"`
	// Telemetry is the data plane's own view of the traffic (variants with node agents).
	Telemetry *TelemetryView `json:"telemetry,omitempty"`
}

// ScenarioInfo names the scenario and keeps its fully resolved settings.
type ScenarioInfo struct {
	Name        string          `json:"name"`
	File        string          `json:"file"`
	Description string          `json:"description,omitempty"`
	Settings    json.RawMessage `json:"settings"`
}

// ClusterInfo describes the lab the runs used.
type ClusterInfo struct {
	Provider   string   `json:"provider"`
	Name       string   `json:"name"`
	Nodes      int      `json:"nodes"`
	IPFamilies []string `json:"ip_families"`
}

// Run is one measured load run: one variant, placement, connection count and repetition.
type Run struct {
	ID           string        `json:"id"`
	Variant      string        `json:"variant"`
	Placement    string        `json:"placement"` // same-node or cross-node
	Connections  int           `json:"connections"`
	KeepAlive    bool          `json:"keepalive"`
	Mode         string        `json:"mode"`          // fixed-qps or max-qps
	RequestedQPS float64       `json:"requested_qps"` // 0 in max-qps mode
	Duration     time.Duration `json:"duration_ns"`
	PayloadBytes int           `json:"payload_bytes"`
	Repetition   int           `json:"repetition"`
	Target       string        `json:"target"` // URL through the service VIP
	StartedAt    time.Time     `json:"started_at"`
	EndedAt      time.Time     `json:"ended_at"`

	// Valid is false when the run must not be plotted; Invalid says why.
	Valid   bool     `json:"valid"`
	Invalid []string `json:"invalid,omitempty"`

	Latency  Latency         `json:"latency"`
	CPU      cpu.Usage       `json:"cpu"`
	CPUPer1k CPUPer1k        `json:"cpu_per_1k_requests"`
	Fortio   json.RawMessage `json:"fortio"` // fortio's own HTTPRunnerResults, histograms included
	// Routing is where the run's requests arrived, from the server pods' own counts; nil for
	// results from before the lab counted.
	Routing *Routing `json:"routing,omitempty"`
	// Warmup is the warm-up's summary (not measured, but carried by the data plane: its
	// connections count in the data plane's own telemetry); nil without a warm-up.
	Warmup *Latency `json:"warmup,omitempty"`
}

// Routing counts the requests the lab's server pods received during a run (warm-up included).
type Routing struct {
	// Target is the sum over the pods behind the run's own service.
	Target int64 `json:"target"`
	// Elsewhere is every other server pod that received requests meanwhile, by namespace/name:
	// another variant's or another placement's. Runs go one at a time, so it must be empty.
	Elsewhere map[string]int64 `json:"elsewhere,omitempty"`
}

// Latency summarises fortio's histogram; all durations in microseconds.
type Latency struct {
	Requests    int64              `json:"requests"`
	Errors      int64              `json:"errors"`         // non-2xx answers and socket errors
	Sockets     int64              `json:"sockets"`        // sockets fortio opened during the run
	RespBytes   int64              `json:"response_bytes"` // bytes of the responses, headers included
	ActualQPS   float64            `json:"actual_qps"`
	AvgUS       float64            `json:"avg_us"`
	MinUS       float64            `json:"min_us"`
	MaxUS       float64            `json:"max_us"`
	Percentiles map[string]float64 `json:"percentiles_us"` // "p50", "p90", "p99", "p99.9"
}

// CPUPer1k is CPU-milliseconds spent per 1000 successful requests in the measured window.
type CPUPer1k struct {
	HostBusyMS    float64            `json:"host_busy_ms"`
	HostSoftirqMS float64            `json:"host_softirq_ms"`
	Components    map[string]float64 `json:"components_ms"` // by cgroup component (client, server, ...)
}

// Percentile returns the named percentile (e.g. "p99") in microseconds.
func (l Latency) Percentile(name string) (float64, bool) {
	v, ok := l.Percentiles[name]
	return v, ok
}

// Write stores r as indented JSON at path.
func (r *Result) Write(path string) error {
	r.SchemaVersion = SchemaVersion
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Read loads a result file, refusing versions this code does not understand.
func Read(path string) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// Decode parses a result, checking the schema version before anything else.
func Decode(b []byte) (*Result, error) {
	var head struct {
		SchemaVersion *int `json:"schema_version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("not a onehop result: %w", err)
	}
	switch {
	case head.SchemaVersion == nil:
		return nil, fmt.Errorf("not a onehop result: no schema_version field")
	case *head.SchemaVersion != SchemaVersion:
		return nil, fmt.Errorf("schema_version %d is not supported (this onehop reads version %d); re-run the scenario to regenerate it", *head.SchemaVersion, SchemaVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r Result
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("decode result: %w", err)
	}
	return &r, nil
}

// Package smp writes onehop results in the shape of the Service Mesh Performance (SMP) spec,
// https://smp-spec.io, so tools that read SMP can compare our runs with other meshes'.
//
// The types follow SMP v0.6.1, protos/service_mesh_performance.proto of
// github.com/service-mesh-performance/service-mesh-performance (tag v0.6.1; the file is unchanged
// up to commit 6ecbce7985dddb5577509f25a1ab67959da8ca68): messages PerformanceTestResult,
// PerformanceTestConfig (with Client), ServiceMeshConfig and EnvironmentConfig. They are plain
// structs with the proto's field names as JSON keys (snake_case, as Meshery's PerformanceSpec and
// the spec's sample result use), times in RFC 3339 UTC and enums by name (proto3 JSON mapping),
// rather than a dependency on the spec's generated Go package.
//
// A PerformanceTestResult refers to its test, mesh and environment by id (test_id,
// mesh_config_id, env_id); a Document carries all four kinds so it stands alone. What SMP has no
// field for (validity, errors, sockets, CPU per request, survival and start-up scenarios) is kept
// beside it in objects named "onehop", never folded into SMP fields.
package smp

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/onehop-mesh/onehop/bench"
)

// Version is the SMP spec version these types follow.
const Version = "v0.6.1"

// Source says where the spec was read, for the document's schema note.
const Source = "github.com/service-mesh-performance/service-mesh-performance protos/service_mesh_performance.proto @ v0.6.1 (unchanged at 6ecbce7985dddb5577509f25a1ab67959da8ca68)"

// Document is one export: SMP messages plus onehop's extensions. Merge concatenates documents.
type Document struct {
	Schema       Schema                  `json:"schema"`
	Environments []EnvironmentConfig     `json:"environments"`
	MeshConfigs  []ServiceMeshConfig     `json:"mesh_configs"`
	TestConfigs  []PerformanceTestConfig `json:"test_configs"`
	Results      []PerformanceTestResult `json:"results"`
	OneHop       DocumentExtras          `json:"onehop"`
}

// Schema says what a reader is looking at, so a future change of either side can be detected.
type Schema struct {
	Format              string `json:"format"` // "smp"
	SMPVersion          string `json:"smp_version"`
	SMPSource           string `json:"smp_source"`
	OneHopSchemaVersion int    `json:"onehop_schema_version"` // bench.SchemaVersion of the input
	Note                string `json:"note"`
}

// PerformanceTestResult is SMP's result message, one per measured run.
type PerformanceTestResult struct {
	SMPVersion   string            `json:"smp_version"`
	ID           string            `json:"id"`
	Labels       map[string]string `json:"labels,omitempty"`
	StartTime    time.Time         `json:"start_time"`
	EndTime      time.Time         `json:"end_time"`
	LatenciesMs  Latency           `json:"latencies_ms"`
	ActualQPS    float64           `json:"actual_qps"`
	DetailsURI   string            `json:"details_uri,omitempty"`
	TestID       string            `json:"test_id"`
	MeshConfigID string            `json:"mesh_config_id"`
	EnvID        string            `json:"env_id"`
	// OneHop is not SMP. SMP v0.6.1 declares CPU, Memory and Swap messages inside
	// PerformanceTestResult but no field that carries them, so our CPU figures live here too.
	OneHop RunExtras `json:"onehop"`
}

// Latency is PerformanceTestResult.Latency, in milliseconds.
type Latency struct {
	Min     float64 `json:"min"`
	Average float64 `json:"average"`
	P50     float64 `json:"p50"`
	P90     float64 `json:"p90"`
	P99     float64 `json:"p99"`
	Max     float64 `json:"max"`
}

// PerformanceTestConfig is SMP's test configuration: what the load generator did.
type PerformanceTestConfig struct {
	SMPVersion string            `json:"smp_version"`
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	Labels     map[string]string `json:"labels,omitempty"`
	Clients    []Client          `json:"clients"`
	Duration   string            `json:"duration"` // a Go duration, e.g. "6s"
}

// Client is PerformanceTestConfig.Client.
type Client struct {
	Internal          bool     `json:"internal"`
	LoadGenerator     string   `json:"load_generator"`
	Protocol          string   `json:"protocol"` // enum name, e.g. PROTOCOL_HTTP
	Connections       int      `json:"connections"`
	RPS               int64    `json:"rps"` // requested; 0 = as fast as possible (max-qps mode)
	EndpointURLs      []string `json:"endpoint_urls"`
	AdditionalOptions string   `json:"additional_options,omitempty"`
}

// ServiceMeshConfig is SMP's mesh configuration; one per variant. SMP has no name field, and
// mesh_type's enum lists real meshes only (our "sidecar" and "ambient" are those architectures
// built from HAProxy, not Istio), so the variant's name and description go in labels.
type ServiceMeshConfig struct {
	SMPVersion string            `json:"smp_version"`
	ID         string            `json:"id"`
	Labels     map[string]string `json:"labels"`
	// MTLSEnabled is omitted when the description does not say (proto3 cannot tell unset from
	// false, and claiming plaintext for an encrypted variant would be worse than silence).
	MTLSEnabled *bool `json:"mtls_enabled,omitempty"`
}

// EnvironmentConfig is SMP's environment. Our labs are not Kubernetes (kubernetes_version stays
// empty): their nodes share one host, so nodes carry only their type and the host's cores,
// memory and kernel go in labels.
type EnvironmentConfig struct {
	SMPVersion        string            `json:"smp_version"`
	ID                string            `json:"id"`
	Labels            map[string]string `json:"labels,omitempty"`
	KubernetesVersion string            `json:"kubernetes_version,omitempty"`
	Nodes             []Node            `json:"nodes"`
}

// Node is EnvironmentConfig.Node.
type Node struct {
	Type  string `json:"type"`
	Cores int    `json:"cores,omitempty"`
	MemMB int64  `json:"mem_mb,omitempty"`
}

// RunExtras is what onehop measured of a run beyond SMP's fields.
type RunExtras struct {
	RunID         string   `json:"run_id"`
	Scenario      string   `json:"scenario"`
	Variant       string   `json:"variant"`
	Placement     string   `json:"placement"`
	KeepAlive     bool     `json:"keepalive"`
	Mode          string   `json:"mode"`
	Repetition    int      `json:"repetition"`
	PayloadBytes  int      `json:"payload_bytes"`
	Valid         bool     `json:"valid"` // false: the run must not be compared (see Invalid)
	Invalid       []string `json:"invalid,omitempty"`
	Requests      int64    `json:"requests"`
	Errors        int64    `json:"errors"`  // non-2xx answers and socket errors
	Sockets       int64    `json:"sockets"` // sockets fortio opened: more than connections means resets/reopens
	ResponseBytes int64    `json:"response_bytes"`
	// PercentilesMs has every percentile fortio reported (p75, p99.9, ...), SMP's three included.
	PercentilesMs map[string]float64 `json:"percentiles_ms,omitempty"`
	CPUPer1k      bench.CPUPer1k     `json:"cpu_per_1k_requests"`
}

// DocumentExtras holds one entry per exported scenario result.
type DocumentExtras struct {
	Scenarios []ScenarioExtras `json:"scenarios"`
}

// ScenarioExtras is the scenario itself and the results SMP has no message for:
// restart-mid-traffic survival and pod start-up are not load tests with a latency histogram.
type ScenarioExtras struct {
	ID          string               `json:"id"` // prefix of every id this scenario's entries use
	Name        string               `json:"name"`
	File        string               `json:"file"`
	Description string               `json:"description,omitempty"`
	Settings    json.RawMessage      `json:"settings,omitempty"`
	StartTime   time.Time            `json:"start_time"`
	EndTime     time.Time            `json:"end_time"`
	Survival    []Survival           `json:"survival,omitempty"`
	Startup     []bench.StartupRun   `json:"startup,omitempty"`
	Telemetry   *bench.TelemetryView `json:"telemetry,omitempty"`
}

// Survival is bench.Survival without the prober's per-bucket timeline, which stays in the
// source result (it is most of its size and only feeds the timeline plots).
type Survival struct {
	Variant         string                `json:"variant"`
	MeshConfigID    string                `json:"mesh_config_id"`
	Placement       string                `json:"placement"`
	Target          string                `json:"target"`
	Restarts        []bench.RestartEvent  `json:"restarts"`
	Error           string                `json:"error,omitempty"`
	ViaServiceRules int64                 `json:"connections_via_service_rules"`
	Summary         bench.SurvivalSummary `json:"summary"`
}

// FromResult maps one onehop result to SMP: one PerformanceTestResult (and test config) per run,
// so repetitions and invalid runs stay visible instead of being averaged or dropped.
func FromResult(r *bench.Result) (Document, error) {
	if r == nil {
		return Document{}, errors.New("smp: nil result")
	}
	if r.SchemaVersion != 0 && r.SchemaVersion != bench.SchemaVersion {
		return Document{}, fmt.Errorf("smp: result schema_version %d, this code maps version %d", r.SchemaVersion, bench.SchemaVersion)
	}
	if len(r.Runs)+len(r.Survival)+len(r.Startup) == 0 {
		return Document{}, fmt.Errorf("smp: scenario %q has no runs, survival or startup results", r.Scenario.Name)
	}
	// The result file's own name stem, so every id leads back to the file it came from.
	prefix := r.Scenario.Name + "-" + r.StartedAt.UTC().Format("20060102T150405Z")
	env := environment(r, prefix+"/env")
	d := Document{
		Schema:       NewSchema(),
		Environments: []EnvironmentConfig{env},
	}
	meshID := func(v string) string { return prefix + "/mesh/" + v }

	// Mesh configs: every described variant, and any run's variant that was not (no dangling ids).
	variants := slices.Collect(maps.Keys(r.Variants))
	for _, run := range r.Runs {
		variants = append(variants, run.Variant)
	}
	for _, s := range r.Survival {
		variants = append(variants, s.Variant)
	}
	slices.Sort(variants)
	for _, v := range slices.Compact(variants) {
		d.MeshConfigs = append(d.MeshConfigs, ServiceMeshConfig{
			SMPVersion:  Version,
			ID:          meshID(v),
			Labels:      map[string]string{"mesh": v, "description": r.Variants[v]},
			MTLSEnabled: mtls(r.Variants[v]),
		})
	}

	fortioVersion := r.Environment.Modules["fortio.org/fortio"]
	seen := map[string]bool{}
	for _, run := range r.Runs {
		if seen[run.ID] {
			return Document{}, fmt.Errorf("smp: scenario %q: run id %q appears twice", r.Scenario.Name, run.ID)
		}
		seen[run.ID] = true
		id := prefix + "/" + run.ID
		testID := prefix + "/test/" + run.ID
		labels := map[string]string{"mode": run.Mode}
		if fortioVersion != "" { // load_generator keeps the bare name Meshery matches on
			labels["load_generator_version"] = fortioVersion
		}
		d.TestConfigs = append(d.TestConfigs, PerformanceTestConfig{
			SMPVersion: Version,
			ID:         testID,
			Name:       r.Scenario.Name + " " + run.ID,
			Labels:     labels,
			Clients: []Client{{
				Internal:      true, // fortio runs in a client pod of the lab, its traffic through the mesh
				LoadGenerator: "fortio",
				Protocol:      "PROTOCOL_HTTP", // fortio's HTTP runner
				Connections:   run.Connections,
				RPS:           int64(run.RequestedQPS + 0.5),
				EndpointURLs:  []string{run.Target},
				// In fortio's own flag syntax: SMP has no keep-alive field.
				AdditionalOptions: "-keepalive=" + strconv.FormatBool(run.KeepAlive),
			}},
			Duration: run.Duration.String(),
		})
		l := run.Latency
		d.Results = append(d.Results, PerformanceTestResult{
			SMPVersion: Version,
			ID:         id,
			// Labels repeat the point's coordinates as strings, for SMP readers that drop "onehop".
			Labels: map[string]string{
				"scenario": r.Scenario.Name, "mesh": run.Variant, "placement": run.Placement,
				"connections": strconv.Itoa(run.Connections), "keepalive": strconv.FormatBool(run.KeepAlive),
				"repetition": strconv.Itoa(run.Repetition), "valid": strconv.FormatBool(run.Valid),
			},
			StartTime: run.StartedAt.UTC(),
			EndTime:   run.EndedAt.UTC(),
			LatenciesMs: Latency{
				Min: ms(l.MinUS), Average: ms(l.AvgUS), Max: ms(l.MaxUS),
				P50: ms(l.Percentiles["p50"]), P90: ms(l.Percentiles["p90"]), P99: ms(l.Percentiles["p99"]),
			},
			ActualQPS:    l.ActualQPS,
			TestID:       testID,
			MeshConfigID: meshID(run.Variant),
			EnvID:        env.ID,
			OneHop: RunExtras{
				RunID: run.ID, Scenario: r.Scenario.Name, Variant: run.Variant, Placement: run.Placement,
				KeepAlive: run.KeepAlive, Mode: run.Mode, Repetition: run.Repetition, PayloadBytes: run.PayloadBytes,
				Valid: run.Valid, Invalid: run.Invalid,
				Requests: l.Requests, Errors: l.Errors, Sockets: l.Sockets, ResponseBytes: l.RespBytes,
				PercentilesMs: msMap(l.Percentiles),
				CPUPer1k:      run.CPUPer1k,
			},
		})
	}

	sc := ScenarioExtras{
		ID: prefix, Name: r.Scenario.Name, File: r.Scenario.File, Description: r.Scenario.Description,
		Settings: r.Scenario.Settings, StartTime: r.StartedAt.UTC(), EndTime: r.EndedAt.UTC(),
		Startup: r.Startup, Telemetry: r.Telemetry,
	}
	for _, s := range r.Survival {
		sc.Survival = append(sc.Survival, Survival{
			Variant: s.Variant, MeshConfigID: meshID(s.Variant), Placement: s.Placement, Target: s.Target,
			Restarts: s.Restarts, Error: s.Error, ViaServiceRules: s.ViaServiceRules, Summary: s.Summary,
		})
	}
	d.OneHop.Scenarios = []ScenarioExtras{sc}
	return d, nil
}

// NewSchema is the schema note every exported document carries.
func NewSchema() Schema {
	return Schema{
		Format:              "smp",
		SMPVersion:          Version,
		SMPSource:           Source,
		OneHopSchemaVersion: bench.SchemaVersion,
		Note: "results are SMP PerformanceTestResult messages (proto field names, times in UTC, latencies in ms), " +
			"one per measured run; test_id, mesh_config_id and env_id refer to test_configs, mesh_configs and " +
			"environments here. Objects named onehop are onehop's own fields, not SMP: run validity, errors, " +
			"sockets, CPU per 1000 requests, and the survival and startup scenarios SMP has no message for.",
	}
}

// Merge appends o's entries to d; ids stay unique since each carries its result's file stem.
func (d *Document) Merge(o Document) {
	if d.Schema.Format == "" {
		d.Schema = o.Schema
	}
	d.Environments = append(d.Environments, o.Environments...)
	d.MeshConfigs = append(d.MeshConfigs, o.MeshConfigs...)
	d.TestConfigs = append(d.TestConfigs, o.TestConfigs...)
	d.Results = append(d.Results, o.Results...)
	d.OneHop.Scenarios = append(d.OneHop.Scenarios, o.OneHop.Scenarios...)
}

func environment(r *bench.Result, id string) EnvironmentConfig {
	e := r.Environment
	env := EnvironmentConfig{
		SMPVersion: Version,
		ID:         id,
		Labels: map[string]string{
			"provider": r.Cluster.Provider, "cluster": r.Cluster.Name,
			"node_count":  strconv.Itoa(r.Cluster.Nodes),
			"ip_families": strings.Join(r.Cluster.IPFamilies, ","),
			"kernel":      e.Kernel, "os": e.OS, "arch": e.Arch, "cpu_model": e.CPUModel,
			"host_cores":     strconv.Itoa(e.Cores),
			"host_memory_mb": strconv.FormatUint(e.MemoryBytes>>20, 10),
			"go_version":     e.GoVersion, "git_revision": e.GitRevision, "git_dirty": strconv.FormatBool(e.GitDirty),
		},
	}
	for range r.Cluster.Nodes {
		env.Nodes = append(env.Nodes, Node{Type: r.Cluster.Provider})
	}
	return env
}

// mtls reads encryption from a variant's description, the only place a result records it
// (descriptions end in "(plaintext)" or name mTLS).
func mtls(describe string) *bool {
	d := strings.ToLower(describe)
	switch {
	case strings.Contains(d, "mtls") || strings.Contains(d, "mutual tls"):
		return new(true)
	case strings.Contains(d, "plaintext"):
		return new(false)
	}
	return nil
}

func ms(us float64) float64 { return us / 1000 }

func msMap(us map[string]float64) map[string]float64 {
	if len(us) == 0 {
		return nil
	}
	out := make(map[string]float64, len(us))
	for k, v := range us {
		out[k] = ms(v)
	}
	return out
}

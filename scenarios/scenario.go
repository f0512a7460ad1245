// Package scenarios defines scenario files (which variants, placements and load to measure) and
// runs them: cluster up, variants installed, fortio load driven through service VIPs, CPU
// sampled, results written. Scenario files live beside this package as *.yaml.
package scenarios

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/scenarios/variants"
)

// Placements of server pods relative to the client pod.
const (
	SameNode  = "same-node"
	CrossNode = "cross-node"
)

// Scenario is one scenario file.
type Scenario struct {
	Name        string   `yaml:"name" json:"name"`
	Description string   `yaml:"description" json:"description"`
	Cluster     Cluster  `yaml:"cluster" json:"cluster"`
	Variants    []string `yaml:"variants" json:"variants"`
	Placements  []string `yaml:"placements" json:"placements"`
	// Servers is the number of endpoints behind each service.
	// Kind is what the scenario measures: "latency" (default: fortio load per connection
	// count) or "restart-mid-traffic" (connection survival while the variants' daemons restart).
	Kind    string       `yaml:"kind" json:"kind"`
	Restart *RestartSpec `yaml:"restart" json:"restart,omitempty"`
	Startup *StartupSpec `yaml:"startup" json:"startup,omitempty"`
	Servers int          `yaml:"servers" json:"servers"`
	// BackgroundServices adds that many more services per variant namespace, each selecting
	// the same-node servers, so the data planes hold a cluster-sized service table (kube-proxy's
	// service chain grows linearly with it; onehop's maps are hash lookups).
	BackgroundServices int  `yaml:"backgroundServices" json:"backgroundServices"`
	Load               Load `yaml:"load" json:"load"`

	File string `yaml:"-" json:"-"`
	// Quick marks a scenario shortened for a first look (bench-quick): too few repetitions
	// and too short runs to conclude from.
	Quick bool `yaml:"-" json:"quick,omitempty"`
}

// Cluster is the part of the cluster spec a scenario may set.
// Scenario kinds.
const (
	KindLatency = "latency"
	KindRestart = "restart-mid-traffic"
	KindStartup = "startup"
)

// StartupSpec drives a start-up scenario (claim C8): Pods times per variant, a new pod is created
// in the variant's namespace, onboarded by the variant, and requests the same-node service until
// the first success.
type StartupSpec struct {
	Pods    int      `yaml:"pods" json:"pods"`
	Timeout Duration `yaml:"timeout" json:"timeout"` // per pod, to its first success
}

// RestartSpec drives a restart-mid-traffic scenario: a prober in the variant's client pod keeps
// long-lived connections and a stream of new connections going through the service VIP while
// the variant's daemon on Node is restarted Restarts times, Interval apart, with Signals in turn.
type RestartSpec struct {
	Restarts          int      `yaml:"restarts" json:"restarts"`
	Interval          Duration `yaml:"interval" json:"interval"`
	Signals           []string `yaml:"signals" json:"signals"`
	Node              string   `yaml:"node" json:"node"`
	LongLived         int      `yaml:"longLived" json:"longLived"`
	RequestInterval   Duration `yaml:"requestInterval" json:"requestInterval"`
	NewConnectionRate float64  `yaml:"newConnectionRate" json:"newConnectionRate"`
	Lead              Duration `yaml:"lead" json:"lead"` // traffic before the first restart
	Tail              Duration `yaml:"tail" json:"tail"` // traffic after the last restart is ready
	Bucket            Duration `yaml:"bucket" json:"bucket"`
}

// Signal numbers of the names RestartSpec.Signals may use.
var restartSignals = map[string]syscall.Signal{"SIGTERM": syscall.SIGTERM, "SIGKILL": syscall.SIGKILL}

// SignalNumbers returns the restart signals in order.
func (r *RestartSpec) SignalNumbers() []syscall.Signal {
	var out []syscall.Signal
	for _, s := range r.Signals {
		out = append(out, restartSignals[s])
	}
	return out
}

type Cluster struct {
	Nodes      int      `yaml:"nodes" json:"nodes"`
	IPFamilies []string `yaml:"ipFamilies" json:"ipFamilies"`
}

// Load is the fortio load of every run.
type Load struct {
	Mode         string       `yaml:"mode" json:"mode"` // fixed-qps or max-qps
	QPS          float64      `yaml:"qps" json:"qps"`
	Connections  []int        `yaml:"connections" json:"connections"`
	KeepAlive    []bool       `yaml:"keepalive" json:"keepalive"`
	Duration     Duration     `yaml:"duration" json:"duration"`
	Warmup       *Duration    `yaml:"warmup" json:"warmup"` // nil: default; 0s: none
	Repetitions  int          `yaml:"repetitions" json:"repetitions"`
	PayloadBytes *int         `yaml:"payloadBytes" json:"payloadBytes"` // nil: default; 0: GET
	Resolution   Duration     `yaml:"resolution" json:"resolution"`
	CatchUp      *bool        `yaml:"catchup" json:"catchup"`
	Limits       bench.Limits `yaml:"validity" json:"validity"`
	Timeout      Duration     `yaml:"timeout" json:"timeout"`
}

// Duration reads "10s"-style strings.
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (like 10s or 500ms)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Duration(d).String() + `"`), nil
}

// D returns the time.Duration (0 for nil).
func (d *Duration) D() time.Duration {
	if d == nil {
		return 0
	}
	return time.Duration(*d)
}

// SetDefaults fills what the file leaves out; the defaults follow Istio's own benchmark
// (fortio at 1000 QPS over 1..64 connections, 1 KB payload).
func (s *Scenario) SetDefaults() {
	if s.Cluster.Nodes == 0 {
		s.Cluster.Nodes = 2
	}
	if len(s.Cluster.IPFamilies) == 0 {
		s.Cluster.IPFamilies = []string{"ipv4"}
	}
	if len(s.Variants) == 0 {
		s.Variants = []string{"baseline"}
	}
	if len(s.Placements) == 0 {
		s.Placements = []string{SameNode, CrossNode}
	}
	if s.Servers == 0 {
		s.Servers = 1
	}
	if s.Kind == "" {
		s.Kind = KindLatency
	}
	if s.Startup != nil || s.Kind == KindStartup {
		if s.Startup == nil {
			s.Startup = &StartupSpec{}
		}
		if s.Startup.Pods == 0 {
			s.Startup.Pods = 10
		}
		if s.Startup.Timeout == 0 {
			s.Startup.Timeout = Duration(30 * time.Second)
		}
	}
	if r := s.Restart; r != nil || s.Kind == KindRestart {
		if r == nil {
			r = &RestartSpec{}
			s.Restart = r
		}
		defInt := func(v *int, d int) {
			if *v == 0 {
				*v = d
			}
		}
		defDur := func(v *Duration, d time.Duration) {
			if *v == 0 {
				*v = Duration(d)
			}
		}
		defInt(&r.Restarts, 10)
		defInt(&r.LongLived, 16)
		defDur(&r.Interval, 3*time.Second)
		defDur(&r.RequestInterval, 20*time.Millisecond)
		defDur(&r.Lead, 2*time.Second)
		defDur(&r.Tail, 3*time.Second)
		defDur(&r.Bucket, 100*time.Millisecond)
		if len(r.Signals) == 0 {
			r.Signals = []string{"SIGTERM", "SIGKILL"}
		}
		if r.Node == "" {
			r.Node = "n1"
		}
		if r.NewConnectionRate == 0 {
			r.NewConnectionRate = 200
		}
	}
	l := &s.Load
	if l.Mode == "" {
		l.Mode = "fixed-qps"
	}
	if l.QPS == 0 && l.Mode == "fixed-qps" {
		l.QPS = 1000
	}
	if len(l.Connections) == 0 {
		l.Connections = []int{1, 2, 4, 8, 16, 32, 64}
	}
	if len(l.KeepAlive) == 0 {
		l.KeepAlive = []bool{true}
	}
	if l.Duration == 0 {
		l.Duration = Duration(10 * time.Second)
	}
	if l.Warmup == nil {
		d := Duration(2 * time.Second)
		l.Warmup = &d
	}
	if l.Repetitions == 0 {
		l.Repetitions = 1
	}
	if l.PayloadBytes == nil {
		n := 1024
		l.PayloadBytes = &n
	}
	if l.Resolution == 0 {
		l.Resolution = Duration(10 * time.Microsecond)
	}
	if l.CatchUp == nil {
		t := true
		l.CatchUp = &t
	}
	if l.Limits.MinQPSRatio == 0 {
		l.Limits.MinQPSRatio = 0.95
	}
	if l.Timeout == 0 {
		l.Timeout = Duration(5 * time.Second)
	}
}

// Validate returns every problem of a defaulted scenario, each naming its field.
func (s *Scenario) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if s.Name == "" || strings.ContainsAny(s.Name, "/ \t") {
		bad("name", "%q must be a non-empty name without spaces or slashes", s.Name)
	}
	if s.Cluster.Nodes < 1 || s.Cluster.Nodes > 32 {
		bad("cluster.nodes", "%d must be between 1 and 32", s.Cluster.Nodes)
	}
	for i, f := range s.Cluster.IPFamilies {
		if f != "ipv4" && f != "ipv6" {
			bad(fmt.Sprintf("cluster.ipFamilies[%d]", i), "%q must be ipv4 or ipv6", f)
		}
	}
	for i, v := range s.Variants {
		if _, err := variants.Get(v); err != nil {
			bad(fmt.Sprintf("variants[%d]", i), "%v", err)
		}
	}
	for i, p := range s.Placements {
		switch {
		case p != SameNode && p != CrossNode:
			bad(fmt.Sprintf("placements[%d]", i), "%q must be %s or %s", p, SameNode, CrossNode)
		case p == CrossNode && s.Cluster.Nodes < 2:
			bad(fmt.Sprintf("placements[%d]", i), "cross-node needs cluster.nodes >= 2")
		}
	}
	if s.Restart != nil && s.Kind != KindRestart {
		bad("restart", "only for kind %s", KindRestart)
	}
	if s.Startup != nil && s.Kind != KindStartup {
		bad("startup", "only for kind %s", KindStartup)
	}
	switch s.Kind {
	case KindLatency:
	case KindRestart:
		s.validateRestart(bad)
	case KindStartup:
		if p := s.Startup.Pods; p < 1 || p > 100 {
			bad("startup.pods", "%d must be between 1 and 100", p)
		}
		if d := s.Startup.Timeout.D(); d < time.Second || d > 10*time.Minute {
			bad("startup.timeout", "%v must be between 1s and 10m", d)
		}
		if !slices.Contains(s.Placements, SameNode) {
			bad("placements", "a %s scenario requests the same-node service: list same-node", KindStartup)
		}
		for i, name := range s.Variants {
			if v, err := variants.Get(name); err == nil && len(v.Labels()) > 0 {
				if !variants.Supports[variants.Onboarder](netns.ProviderName, name) {
					bad(fmt.Sprintf("variants[%d]", i), "%s cannot onboard a new pod", name)
				}
			}
		}
	default:
		bad("kind", "%q must be %s, %s or %s", s.Kind, KindLatency, KindRestart, KindStartup)
	}
	if s.Servers < 1 || s.Servers > 50 {
		bad("servers", "%d must be between 1 and 50", s.Servers)
	}
	if s.BackgroundServices < 0 || s.BackgroundServices > 20000 {
		bad("backgroundServices", "%d must be between 0 and 20000", s.BackgroundServices)
	}
	l := s.Load
	switch l.Mode {
	case "fixed-qps":
		if l.QPS <= 0 || l.QPS > 1e6 {
			bad("load.qps", "%g must be above 0 and at most 1000000 in fixed-qps mode", l.QPS)
		}
	case "max-qps":
		if l.QPS != 0 {
			bad("load.qps", "must be left out in max-qps mode (fortio sends as fast as each connection allows)")
		}
	default:
		bad("load.mode", "%q must be fixed-qps or max-qps", l.Mode)
	}
	for i, c := range l.Connections {
		if c < 1 || c > 1024 {
			bad(fmt.Sprintf("load.connections[%d]", i), "%d must be between 1 and 1024", c)
		}
	}
	if d := l.Duration.D(); d < 100*time.Millisecond || d > time.Hour {
		bad("load.duration", "%v must be between 100ms and 1h", d)
	}
	if d := l.Warmup.D(); d < 0 || d > 10*time.Minute {
		bad("load.warmup", "%v must be between 0 and 10m", d)
	}
	if l.Repetitions < 1 || l.Repetitions > 100 {
		bad("load.repetitions", "%d must be between 1 and 100", l.Repetitions)
	}
	if *l.PayloadBytes < 0 || *l.PayloadBytes > 1<<20 {
		bad("load.payloadBytes", "%d must be between 0 and 1048576", *l.PayloadBytes)
	}
	if d := l.Timeout.D(); d < time.Millisecond || d > time.Minute {
		bad("load.timeout", "%v must be between 1ms and 1m", d)
	}
	dupes := func(field string, list []string) {
		seen := map[string]bool{}
		for i, x := range list {
			if seen[x] {
				bad(fmt.Sprintf("%s[%d]", field, i), "%q is listed twice", x)
			}
			seen[x] = true
		}
	}
	dupes("variants", s.Variants)
	dupes("placements", s.Placements)
	if r := l.Resolution.D(); r < time.Microsecond || r > 10*time.Millisecond {
		bad("load.resolution", "%v must be between 1us and 10ms", r)
	}
	if r := l.Limits.MinQPSRatio; r <= 0 || r > 1 {
		bad("load.validity.minQPSRatio", "%g must be in (0, 1]", r)
	}
	return errors.Join(errs...)
}

func (s *Scenario) validateRestart(bad func(field, format string, a ...any)) {
	r := s.Restart
	if r.Restarts < 1 || r.Restarts > 1000 {
		bad("restart.restarts", "%d must be between 1 and 1000", r.Restarts)
	}
	if d := r.Interval.D(); d < 500*time.Millisecond || d > 10*time.Minute {
		bad("restart.interval", "%v must be between 500ms and 10m", d)
	}
	for i, sig := range r.Signals {
		if _, ok := restartSignals[sig]; !ok {
			bad(fmt.Sprintf("restart.signals[%d]", i), "%q must be SIGTERM or SIGKILL", sig)
		}
	}
	if n := s.Cluster.Nodes; !slices.Contains(s.Spec("x").NodeNames(), r.Node) {
		bad("restart.node", "%q is not a node of this %d-node lab (n1..n%d)", r.Node, n, n)
	}
	if r.LongLived < 1 || r.LongLived > 1000 {
		bad("restart.longLived", "%d must be between 1 and 1000", r.LongLived)
	}
	if d := r.RequestInterval.D(); d < time.Millisecond || d > 10*time.Second {
		bad("restart.requestInterval", "%v must be between 1ms and 10s", d)
	}
	if r.NewConnectionRate <= 0 || r.NewConnectionRate > 5000 {
		bad("restart.newConnectionRate", "%g must be above 0 and at most 5000 per second", r.NewConnectionRate)
	}
	if d := r.Lead.D(); d < 0 || d > 10*time.Minute {
		bad("restart.lead", "%v must be between 0 and 10m", d)
	}
	if d := r.Tail.D(); d < 0 || d > 10*time.Minute {
		bad("restart.tail", "%v must be between 0 and 10m", d)
	}
	if d := r.Bucket.D(); d < 10*time.Millisecond || d > 10*time.Second {
		bad("restart.bucket", "%v must be between 10ms and 10s", d)
	}
	if len(s.Placements) != 1 {
		bad("placements", "a %s scenario probes one service: list one placement", KindRestart)
	}
	for i, name := range s.Variants {
		if _, err := variants.Get(name); err == nil {
			if !variants.Supports[variants.Restarter](netns.ProviderName, name) {
				bad(fmt.Sprintf("variants[%d]", i), "%s has no daemon the lab can restart", name)
			}
		}
	}
}

// Parse decodes a scenario strictly (unknown fields are errors), applies defaults and validates.
func Parse(name string, b []byte) (*Scenario, error) {
	var s Scenario
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s.File = name
	s.SetDefaults()
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%s: invalid scenario:\n%w", name, err)
	}
	return &s, nil
}

// Load reads a scenario file.
func LoadFile(path string) (*Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, b)
}

// Files lists the scenario files in dir.
func Files(dir string) ([]string, error) {
	return filepath.Glob(filepath.Join(dir, "*.yaml"))
}

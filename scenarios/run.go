package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/cpu"
	"github.com/onehop-mesh/onehop/bench/loadgen"
	"github.com/onehop-mesh/onehop/bench/sysinfo"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/scenarios/variants"
)

// Runner runs scenarios on a fresh lab cluster.
type Runner struct {
	Provider   clusters.Provider
	Binary     string // onehop executable for pod workloads
	ResultsDir string
	Lab        string    // lab name (default "bench")
	Progress   io.Writer // progress lines; nil is silent
	// KeepCluster leaves the lab up after the run (for inspection with `onehop cluster status`).
	KeepCluster bool
	// NoTelemetry skips the Prometheus that checks the agents' telemetry against fortio (the
	// gate times builds; the tests and bench-all check their counts).
	NoTelemetry bool
}

const serverPort = 8080

// clientPod names a variant's fortio client pod; its namespace is the variant's name.
func clientPod(variant string) string { return variant + "-client" }

// Spec returns the lab a scenario runs on. Every variant gets a namespace of its own (labelled
// to enroll it in that variant's data plane) holding a client pod on the first node and, per
// placement, a service whose server pods sit on the client's node (same-node) or on the second
// (cross-node). Variants thus share nodes, links and load but never each other's data plane.
func (s *Scenario) Spec(lab string) clusters.Spec {
	spec := clusters.Spec{Name: lab, Nodes: s.Cluster.Nodes, IPFamilies: s.Cluster.IPFamilies}
	for _, name := range s.Variants {
		v, _ := variants.Get(name)
		ns := name
		spec.Namespaces = append(spec.Namespaces, clusters.Namespace{Name: ns, Labels: v.Labels()})
		spec.Pods = append(spec.Pods, clusters.PodSpec{Name: clientPod(name), Namespace: ns, Node: "n1",
			Labels: map[string]string{"app": "fortio-client"}, Component: "client"})
		for _, pl := range s.Placements {
			node := "n1"
			if pl == CrossNode {
				node = "n2"
			}
			for i := 0; i < s.Servers; i++ {
				spec.Pods = append(spec.Pods, clusters.PodSpec{
					Name: fmt.Sprintf("%s-server-%s-%d", name, pl, i), Namespace: ns, Node: node,
					Labels: map[string]string{"app": "server-" + pl}, Component: "server",
					Workload: &clusters.Workload{Kind: "fortio-server", Port: serverPort},
				})
			}
			spec.Services = append(spec.Services, clusters.ServiceDef{Name: "fortio-" + pl, Namespace: ns,
				Selector: map[string]string{"app": "server-" + pl},
				Ports:    []clusters.ServicePort{{Name: "http", Port: serverPort, TargetPort: serverPort}}})
		}
		// Named to sort before "fortio-": kube-proxy rules go in service order, so a measured
		// service sits behind its own namespace's background services in the chain.
		for i := 0; i < s.BackgroundServices; i++ {
			spec.Services = append(spec.Services, clusters.ServiceDef{Name: fmt.Sprintf("bg-%05d", i), Namespace: ns,
				Selector: map[string]string{"app": "server-" + s.Placements[0]},
				Ports:    []clusters.ServicePort{{Name: "http", Port: serverPort, TargetPort: serverPort}}})
		}
	}
	spec.SetDefaults()
	return spec
}

// plannedRun is one entry of the run plan.
type plannedRun struct {
	variant, placement string
	connections        int
	keepAlive          bool
	rep                int
}

// plan orders runs so that variants alternate innermost: every variant is measured within
// seconds of the others at the same settings, which keeps drift on a shared machine out of the
// comparison. A run's position measures a few percent differently on this kind of machine (in
// 160 A/A gate pairs, the p99 of whichever onehop build ran first was ~5% higher), so the order
// rotates with each repetition and every other cycle of n rotations runs reversed: over 2n
// repetitions each variant runs before each other one exactly n times. Rotation alone put one
// variant before the next in 2 of 3 repetitions.
func (s *Scenario) plan() []plannedRun {
	var out []plannedRun
	for rep := 1; rep <= s.Load.Repetitions; rep++ {
		order := repOrder(s.Variants, rep)
		for _, ka := range s.Load.KeepAlive {
			for _, c := range s.Load.Connections {
				for _, pl := range s.Placements {
					for _, v := range order {
						out = append(out, plannedRun{v, pl, c, ka, rep})
					}
				}
			}
		}
	}
	return out
}

// repOrder is the variants' order in repetition rep (from 1): rotated by rep-1, and reversed in
// every other cycle of len(variants) repetitions.
func repOrder(variants []string, rep int) []string {
	n := len(variants)
	order := make([]string, n)
	for i := range variants {
		order[i] = variants[(i+rep-1)%n]
	}
	if ((rep-1)/n)%2 == 1 {
		slices.Reverse(order)
	}
	return order
}

func (r *Runner) say(format string, a ...any) {
	if r.Progress != nil {
		fmt.Fprintf(r.Progress, format+"\n", a...)
	}
}

// Run executes a scenario and writes its result JSON, returning the result and its path.
func (r *Runner) Run(ctx context.Context, s *Scenario) (*bench.Result, string, error) {
	lab := r.Lab
	if lab == "" {
		lab = "bench"
	}
	res := &bench.Result{SchemaVersion: bench.SchemaVersion, StartedAt: time.Now().UTC(), Quick: s.Quick}
	settings, _ := json.Marshal(s)
	res.Scenario = bench.ScenarioInfo{Name: s.Name, File: s.File, Description: s.Description, Settings: settings}
	res.Environment = sysinfo.Collect(ctx, sysinfo.DefaultTools)

	switch s.Kind {
	case KindRestart:
		r.say("== scenario %s: %d variants x %d restarts, lab %q", s.Name, len(s.Variants), s.Restart.Restarts, lab)
	case KindStartup:
		r.say("== scenario %s: %d variants x %d new pods, lab %q", s.Name, len(s.Variants), s.Startup.Pods, lab)
	default:
		r.say("== scenario %s: %d runs, lab %q", s.Name, len(s.plan()), lab)
	}
	// Start from nothing: a lab left by a killed run must not leak into these numbers.
	if err := r.Provider.Down(ctx, lab); err != nil {
		return nil, "", fmt.Errorf("remove leftover lab %q: %w", lab, err)
	}
	spec := s.Spec(lab)
	t0 := time.Now()
	c, err := r.Provider.Up(ctx, spec)
	if err != nil {
		return nil, "", err
	}
	r.say("   cluster up in %.1fs", time.Since(t0).Seconds())
	defer func() {
		c.Close()
		if !r.KeepCluster {
			// The run's context may be cancelled; teardown must still happen.
			if err := r.Provider.Down(context.Background(), lab); err != nil {
				r.say("   warning: cluster down: %v", err)
			}
		}
	}()
	res.Cluster = bench.ClusterInfo{Provider: c.Provider(), Name: lab, Nodes: spec.Nodes, IPFamilies: spec.IPFamilies}

	res.Variants = map[string]string{}
	deps := deployed{}
	for _, name := range s.Variants {
		v, _ := variants.Get(name)
		res.Variants[name] = v.Describe()
		d, err := variants.Install(ctx, name, c)
		if err != nil {
			return nil, "", fmt.Errorf("install variant %s: %w", name, err)
		}
		deps[name] = d
		if dd, ok := d.(interface{ Describe() string }); ok { // what carries it on this provider
			res.Variants[name] = dd.Describe()
		}
		defer d.Uninstall(context.Background(), c)
	}
	switch s.Kind {
	case KindRestart:
		err = r.runRestart(ctx, c, s, deps, res)
	case KindStartup:
		err = r.runStartup(ctx, c, s, deps, res)
	default:
		err = r.runMeasured(ctx, c, s, deps, res)
	}
	if err != nil {
		return nil, "", err
	}
	res.EndedAt = time.Now().UTC()
	path, err := r.write(s, res)
	if err != nil {
		return nil, "", err
	}
	return res, path, nil
}

// deployed are the scenario's variants as installed on its cluster, by name.
type deployed map[string]variants.Deployment

// runMeasured measures the planned latency runs with a Prometheus scraping the variants' node
// agents throughout, and then records what their telemetry counted beside fortio's counts.
func (r *Runner) runMeasured(ctx context.Context, c clusters.Cluster, s *Scenario, deps deployed, res *bench.Result) error {
	if r.NoTelemetry {
		return r.runPlan(ctx, c, s, res)
	}
	ps, err := r.startPrometheus(ctx, c, s, deps)
	if err != nil {
		return err
	}
	if ps != nil {
		defer ps.Close()
	}
	if err := r.runPlan(ctx, c, s, res); err != nil {
		return err
	}
	if ps == nil {
		return nil
	}
	if res.Telemetry, err = telemetryView(ctx, ps, s, deps, res); err != nil {
		return err
	}
	for _, st := range res.Telemetry.Services {
		if len(st.Disagreements) > 0 {
			r.say("   telemetry of %s disagrees with fortio: %s", st.Service, strings.Join(st.Disagreements, "; "))
		}
	}
	r.say("   telemetry of %d services read from Prometheus; agrees with fortio: %v", len(res.Telemetry.Services), res.Telemetry.Agree)
	return nil
}

// runPlan measures every planned latency run.
func (r *Runner) runPlan(ctx context.Context, c clusters.Cluster, s *Scenario, res *bench.Result) error {
	targets := c.CPUTargets()
	plan := s.plan()
	start := time.Now()
	for i, p := range plan {
		if err := ctx.Err(); err != nil {
			return err
		}
		elapsed := time.Since(start)
		eta := "?"
		if i > 0 {
			eta = (elapsed / time.Duration(i) * time.Duration(len(plan)-i)).Round(time.Second).String()
		}
		r.say("[%d/%d] %s %s c=%d keepalive=%v rep %d/%d — elapsed %s, ETA %s", i+1, len(plan), p.variant, p.placement,
			p.connections, p.keepAlive, p.rep, s.Load.Repetitions, elapsed.Round(time.Second), eta)
		run, err := r.measure(ctx, c, targets, s, p)
		if err != nil {
			return err
		}
		if !run.Valid {
			r.say("        flagged invalid: %v", run.Invalid)
		} else {
			r.say("        p50 %.0fus p99 %.0fus, %.1f qps", run.Latency.Percentiles["p50"], run.Latency.Percentiles["p99"], run.Latency.ActualQPS)
		}
		res.Runs = append(res.Runs, run)
	}
	return nil
}

// write saves the result JSON.
func (r *Runner) write(s *Scenario, res *bench.Result) (string, error) {
	if err := os.MkdirAll(r.ResultsDir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(r.ResultsDir, fmt.Sprintf("%s-%s.json", s.Name, res.StartedAt.Format("20060102T150405Z")))
	if err := res.Write(path); err != nil {
		return "", err
	}
	r.say("   wrote %s (%s)", path, time.Since(res.StartedAt).Round(time.Second))
	return path, nil
}

// Plan lists the IDs of a scenario's runs in the order they will be measured.
func Plan(s *Scenario) []string {
	var out []string
	for _, p := range s.plan() {
		out = append(out, p.id())
	}
	return out
}

func (p plannedRun) id() string {
	return fmt.Sprintf("%s/%s/c%d/%s/r%d", p.variant, p.placement, p.connections, map[bool]string{true: "keepalive", false: "newconn"}[p.keepAlive], p.rep)
}

// cpuWindow samples CPU between the load's measure-start and measure-end markers.
type cpuWindow struct {
	s     *cpu.Sampler
	usage cpu.Usage
}

func (w *cpuWindow) Start() error { return w.s.Start() }
func (w *cpuWindow) Stop() (err error) {
	w.usage, err = w.s.Stop()
	return err
}

func (r *Runner) measure(ctx context.Context, c clusters.Cluster, targets []cpu.Target, s *Scenario, p plannedRun) (bench.Run, error) {
	snap := c.Services().Snapshot()
	svc, ok := snap.Service(p.variant, "fortio-"+p.placement)
	if !ok || len(svc.ClusterIPs) == 0 {
		return bench.Run{}, fmt.Errorf("service %s/fortio-%s has no cluster IP", p.variant, p.placement)
	}
	d := &loadgen.Driver{Cluster: c, ClientPod: clientPod(p.variant), Binary: r.Binary}
	url := "http://" + net.JoinHostPort(svc.ClusterIPs[0].String(), strconv.Itoa(serverPort)) + "/echo"
	o := loadgen.Options{URL: url, QPS: s.Load.QPS, Connections: p.connections, Duration: s.Load.Duration.D(),
		Warmup: s.Load.Warmup.D(), KeepAlive: p.keepAlive, PayloadBytes: *s.Load.PayloadBytes,
		Resolution: s.Load.Resolution.D(), CatchUp: *s.Load.CatchUp, Uniform: true, Timeout: s.Load.Timeout.D()}
	run := bench.Run{
		ID:      p.id(),
		Variant: p.variant, Placement: p.placement, Connections: p.connections, KeepAlive: p.keepAlive,
		Mode: s.Load.Mode, RequestedQPS: s.Load.QPS, Duration: s.Load.Duration.D(), PayloadBytes: *s.Load.PayloadBytes,
		Repetition: p.rep, Target: url, StartedAt: time.Now().UTC(),
	}
	// Every fortio server answers alike: only the servers' own counts show where requests went.
	before, countErr := serverCounts(ctx, c)
	w := &cpuWindow{s: cpu.NewSampler(targets)}
	out, err := d.Run(ctx, o, w)
	run.EndedAt = time.Now().UTC()
	if countErr == nil && err == nil {
		var after map[string]int64
		if after, countErr = serverCounts(ctx, c); countErr == nil {
			run.Routing = routing(c, before, after, p.variant, "server-"+p.placement)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return run, ctx.Err()
		}
		// A failed load is a result, not a crash of the whole scenario.
		run.Invalid, run.Fortio = []string{err.Error()}, json.RawMessage("null")
		return run, nil
	}
	run.Fortio = out.Fortio
	if run.Latency, err = bench.Summarize(out.Fortio); err != nil {
		return run, err
	}
	if out.Warmup != nil {
		wl, err := bench.Summarize(out.Warmup)
		if err != nil {
			return run, fmt.Errorf("warm-up: %w", err)
		}
		run.Warmup = &wl
	}
	run.CPU = w.usage
	ok200 := run.Latency.Requests - run.Latency.Errors
	run.CPUPer1k = bench.CPUPer1k{
		HostBusyMS:    cpu.PerThousand(w.usage.Host.BusyMS, ok200),
		HostSoftirqMS: cpu.PerThousand(w.usage.Host.SoftirqMS, ok200),
		Components:    map[string]float64{},
	}
	for comp, ms := range w.usage.ByComponent() {
		run.CPUPer1k.Components[comp] = cpu.PerThousand(ms, ok200)
	}
	run.Check(s.Load.Limits)
	if countErr != nil {
		run.Valid, run.Invalid = false, append(run.Invalid, "where the requests went is unknown: "+countErr.Error())
	}
	return run, nil
}

package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/report"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/kind"
	"github.com/onehop-mesh/onehop/clusters/kube"
	"github.com/onehop-mesh/onehop/clusters/localkube"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/deploy/image"
	"github.com/onehop-mesh/onehop/deploy/install"
	"github.com/onehop-mesh/onehop/internal/kubetest"
	"github.com/onehop-mesh/onehop/scenarios"
)

// overrides let a user (or a test) shrink a scenario without editing its file.
type overrides struct {
	duration, warmup time.Duration
	connections      []int
	repetitions      int
	lab              string
	resultsDir       string
	keep             bool
	quick            bool
	provider         string
	kubeconfig       string
	imageTag         string
	serviceCIDR      string
	chartSet         []string
	kindImage        string
	kindConfig       string
}

// Quick settings: a first look at every scenario in a few minutes (bench-quick); results and
// reports say they are quick. Three repetitions are the fewest an interval can come from.
const (
	quickRepetitions = 3
	quickDuration    = time.Second
	quickWarmup      = 200 * time.Millisecond
	quickRestarts    = 4
	quickPods        = 3
)

func (o *overrides) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.DurationVar(&o.duration, "duration", 0, "override load.duration of every scenario")
	f.DurationVar(&o.warmup, "warmup", 0, "override load.warmup")
	f.IntSliceVar(&o.connections, "connections", nil, "override load.connections (e.g. 1,8,64)")
	f.IntVar(&o.repetitions, "repetitions", 0, "override load.repetitions")
	f.StringVar(&o.lab, "lab", "bench", "name of the lab cluster the run creates and removes")
	f.StringVar(&o.resultsDir, "results", "results", "directory for result JSON files")
	f.BoolVar(&o.keep, "keep", false, "leave the lab up after the run")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "--provider kube: the cluster's kubeconfig")
	f.StringVar(&o.imageTag, "image-tag", "", "--provider kube: tag of onehop.local/onehop-agent and onehop.local/onehop-workload, already on every node (see e2e/README.md)")
	f.StringVar(&o.serviceCIDR, "service-cidr", "10.96.0.0/12", "--provider kube: the cluster's service CIDR")
	f.StringSliceVar(&o.chartSet, "chart-set", nil, "--provider kube or kind: more helm --set values for the onehop chart (e.g. host.cgroup=/sys/fs/cgroup/unified)")
	f.StringVar(&o.kindImage, "kind-image", "", "--provider kind: the node image (e.g. onehop.local/kind-node:v1.37.2, built offline by clusters/kind/nodeimage); empty: kind's default")
	f.StringVar(&o.kindConfig, "kind-config", "", "--provider kind: a kind cluster config file (e.g. clusters/kind/nodeimage/kind-config.yaml); empty: one node per scenario node, kind's defaults")
	f.StringVar(&o.provider, "provider", netns.ProviderName, "where the lab runs: netns (network namespaces on this host) localkube (a real single-node Kubernetes on this host, built from the module proxy) kind (needs Docker or Podman) or kube (any cluster: --kubeconfig, --image-tag); on Kubernetes the variants are baseline and onehop; run from the onehop checkout")
	f.BoolVar(&o.quick, "quick", false, fmt.Sprintf("a first look: %d repetitions of %s, %d restarts, %d new pods; reports are marked quick",
		quickRepetitions, quickDuration, quickRestarts, quickPods))
}

func (o *overrides) load(path string) (*scenarios.Scenario, error) {
	s, err := scenarios.LoadFile(path)
	if err != nil {
		return nil, err
	}
	if o.quick {
		s.Quick = true
		s.Load.Repetitions, s.Load.Duration = quickRepetitions, scenarios.Duration(quickDuration)
		w := scenarios.Duration(quickWarmup)
		s.Load.Warmup = &w
		if s.Restart != nil {
			s.Restart.Restarts = quickRestarts
		}
		if s.Startup != nil {
			s.Startup.Pods = quickPods
		}
	}
	if o.duration > 0 {
		s.Load.Duration = scenarios.Duration(o.duration)
	}
	if o.warmup > 0 {
		w := scenarios.Duration(o.warmup)
		s.Load.Warmup = &w
	}
	if len(o.connections) > 0 {
		s.Load.Connections = o.connections
	}
	if o.repetitions > 0 {
		s.Load.Repetitions = o.repetitions
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%s with overrides: %w", path, err)
	}
	return s, nil
}

func (o *overrides) runner() (*scenarios.Runner, error) {
	var (
		p      clusters.Provider
		binary = kube.Binary // on Kubernetes, the lab's binary in the workload image
		err    error
	)
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	switch o.provider {
	case netns.ProviderName, "":
		np, err := newProvider()
		if err != nil {
			return nil, err
		}
		p, binary = np, np.Binary
	case localkube.ProviderName, kind.ProviderName:
		if _, err := os.Stat(filepath.Join("cmd", "onehop-agent")); err != nil {
			return nil, fmt.Errorf("--provider %s builds the agent's and the workload's images from source: run it from the onehop checkout (%v)", o.provider, err)
		}
		p = &localkube.Provider{Source: ".", Logf: logf}
		if o.provider == kind.ProviderName {
			p = &kind.Provider{Source: ".", Logf: logf, NodeImage: o.kindImage, Config: o.kindConfig, ChartSet: o.chartSet}
		}
	case kube.ProviderName:
		if p, err = o.kubeProvider(logf); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("--provider %q: netns, localkube, kind or kube", o.provider)
	}
	return &scenarios.Runner{Provider: p, Binary: binary, ResultsDir: o.resultsDir, Lab: o.lab, Progress: os.Stderr, KeepCluster: o.keep}, nil
}

func runCmd() *cobra.Command {
	var o overrides
	cmd := &cobra.Command{
		Use:   "run <scenario.yaml>...",
		Short: "Run scenarios on a fresh lab and write results/<scenario>-<time>.json",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := o.runner()
			if err != nil {
				return err
			}
			for _, path := range args {
				s, err := o.load(path)
				if err != nil {
					return err
				}
				if _, _, err := r.Run(cmd.Context(), s); err != nil {
					return fmt.Errorf("scenario %s: %w", s.Name, err)
				}
			}
			return nil
		},
	}
	o.register(cmd)
	return cmd
}

func reportCmd() *cobra.Command {
	var resultsDir, outDir string
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Render the newest result of each scenario into Markdown and plots",
		RunE: func(*cobra.Command, []string) error {
			return renderReports(resultsDir, outDir)
		},
	}
	cmd.Flags().StringVar(&resultsDir, "results", "results", "directory of result JSON files")
	cmd.Flags().StringVar(&outDir, "out", "reports", "output directory")
	return cmd
}

// renderReports renders the newest result per scenario and copies it beside its report, so every
// committed figure can be traced to the data it came from.
func renderReports(resultsDir, outDir string) error {
	newest, err := newestResults(resultsDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	var names []string
	var all []*bench.Result
	for n := range newest {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		r := newest[n]
		written, err := report.Render(r, outDir)
		if err != nil {
			return fmt.Errorf("render %s: %w", n, err)
		}
		if err := r.Write(filepath.Join(outDir, n+".result.json")); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "report %s: %v\n", n, written)
		all = append(all, r)
	}
	return report.Index(all, outDir)
}

// newestResults reads dir/*.json and keeps the newest result of each scenario, by scenario name.
// Unreadable files are skipped with a note on stderr; finding none at all is an error.
func newestResults(dir string) (map[string]*bench.Result, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	newest := map[string]*bench.Result{}
	for _, f := range files {
		r, err := bench.Read(f)
		if err != nil {
			fmt.Fprintf(os.Stderr, "skip %v\n", err)
			continue
		}
		if old, ok := newest[r.Scenario.Name]; !ok || r.StartedAt.After(old.StartedAt) {
			newest[r.Scenario.Name] = r
		}
	}
	if len(newest) == 0 {
		return nil, fmt.Errorf("no results in %s: run `onehop run scenarios/<name>.yaml` first", dir)
	}
	return newest, nil
}

func benchAllCmd() *cobra.Command {
	var o overrides
	var dir, outDir string
	cmd := &cobra.Command{
		Use:   "bench-all",
		Short: "Run every scenario in scenarios/ and render reports/",
		RunE: func(cmd *cobra.Command, _ []string) error {
			files, err := scenarios.Files(dir)
			if err != nil || len(files) == 0 {
				return fmt.Errorf("no scenario files in %s", dir)
			}
			// Parse all first: a bad file fails before any lab is built.
			var all []*scenarios.Scenario
			for _, f := range files {
				s, err := o.load(f)
				if err != nil {
					return err
				}
				all = append(all, s)
			}
			r, err := o.runner()
			if err != nil {
				return err
			}
			start := time.Now()
			for i, s := range all {
				fmt.Fprintf(os.Stderr, "== [%d/%d] %s (elapsed %s)\n", i+1, len(all), s.Name, time.Since(start).Round(time.Second))
				if _, _, err := r.Run(cmd.Context(), s); err != nil {
					return fmt.Errorf("scenario %s: %w", s.Name, err)
				}
			}
			if err := renderReports(o.resultsDir, outDir); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "bench-all done in %s\n", time.Since(start).Round(time.Second))
			return nil
		},
	}
	o.register(cmd)
	cmd.Flags().StringVar(&dir, "scenarios", "scenarios", "directory of scenario files")
	cmd.Flags().StringVar(&outDir, "out", "reports", "report directory")
	return cmd
}

// kubeProvider is the lab on the cluster of --kubeconfig, with images already on its nodes.
func (o *overrides) kubeProvider(logf func(string, ...any)) (*kube.Provider, error) {
	if o.kubeconfig == "" || o.imageTag == "" {
		return nil, fmt.Errorf("--provider kube needs --kubeconfig and --image-tag (load onehop.local/onehop-agent:<tag> and onehop.local/onehop-workload:<tag> on every node first, see e2e/README.md)")
	}
	cidr, err := netip.ParsePrefix(o.serviceCIDR)
	if err != nil {
		return nil, fmt.Errorf("--service-cidr: %w", err)
	}
	ctx := context.Background()
	helm, err := kubetest.Helm(ctx, logf)
	if err != nil {
		return nil, err
	}
	node, err := kubetest.NodeBinaries(ctx, logf) // kubectl
	if err != nil {
		return nil, err
	}
	agent, wl := image.Repository+":"+o.imageTag, image.WorkloadRepository+":"+o.imageTag
	return &kube.Provider{Kubeconfig: o.kubeconfig, Kubectl: node.Kubectl, WorkloadImage: wl, ServiceCIDR: cidr,
		Install: install.Options{Helm: helm, Chart: install.ChartDir("."), AgentImage: agent, WorkloadImage: wl, ServiceCIDR: cidr.String(),
			Set: o.chartSet}}, nil
}

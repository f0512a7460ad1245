package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/onehop-mesh/onehop/bench/gate"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/scenarios"
	"github.com/onehop-mesh/onehop/scenarios/variants"
)

// errRegression makes the gate exit 1 after it has printed its table.
var errRegression = errors.New("latency regression: head is slower than base (see the table above)")

type gateOptions struct {
	base, head, baseTags, headTags string
	repetitions, connections       int
	qps                            float64
	duration, warmup               time.Duration
	lab, resultsDir, out           string
}

func gateCmd() *cobra.Command {
	var o gateOptions
	cmd := &cobra.Command{
		Use:   "gate --base REV [--head REV]",
		Short: "Fail (exit 1) when the agent built at head is slower than at base, measured side by side in one lab",
		Long: `gate builds onehop-agent at two revisions (head defaults to the working tree, uncommitted
changes included), runs both in one netns lab next to the no-mesh baseline, interleaved repetition
by repetition, with keep-alive connections and with a new connection per request, and fails when
head is slower at p50 or p99 with p < 0.01 (one-sided Wilcoxon signed-rank test of the paired
per-repetition differences) and by more than both a relative
and an absolute floor. It prints a table and writes a JSON result.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runGate(cmd.Context(), o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.base, "base", "", "revision to compare against (required)")
	f.StringVar(&o.head, "head", "", "revision to test (default: the working tree)")
	f.StringVar(&o.baseTags, "base-tags", "", "Go build tags for the base agent")
	f.StringVar(&o.headTags, "head-tags", "", "Go build tags for the head agent (onehop_planted_regression plants a slower connect path)")
	// 20 pairs of 1 s rather than 10 of 2 s, in about the same time: the noise between base and
	// head is drift between runs, not too few requests per run, and with 10 pairs p < 0.01
	// allows at most one or two pairs the wrong way: a planted +12-13% slipped through 2 of 8
	// runs at 10 x 2 s.
	f.IntVar(&o.repetitions, "repetitions", 20, "interleaved repetitions per mode")
	f.IntVar(&o.connections, "connections", 4, "fortio connections")
	f.Float64Var(&o.qps, "qps", 1000, "fixed request rate")
	f.DurationVar(&o.duration, "duration", time.Second, "length of each measured run")
	f.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "warm-up before each run")
	f.StringVar(&o.lab, "lab", "gate", "name of the lab cluster the gate creates and removes")
	f.StringVar(&o.resultsDir, "results", "results/gate", "directory for the runs' and the gate's result JSON (apart from results/, which reports are rendered from)")
	f.StringVar(&o.out, "json", "", "gate result JSON (default <results>/gate-<time>.json)")
	cmd.MarkFlagRequired("base")
	return cmd
}

// gateScenario is what the gate measures: the two builds and the baseline on one node, the
// connect path (a new connection per request) and the established path (keep-alive).
const gateScenario = `name: gate
description: onehop-agent at two revisions and the no-mesh baseline, interleaved; same-node, keep-alive and a new connection per request
variants: [baseline, onehop-base, onehop-head]
placements: [same-node]
servers: 1
load:
  mode: fixed-qps
  qps: %g
  connections: [%d]
  keepalive: [true, false]
  duration: %s
  warmup: %s
  repetitions: %d
  payloadBytes: 1024
  resolution: 10us
  catchup: true
  validity:
    minQPSRatio: 0.95
`

func runGate(ctx context.Context, o gateOptions) error {
	if o.repetitions < 5 {
		return fmt.Errorf("--repetitions %d: the gate needs at least 5 (10 or more to reach p < 0.01 with room)", o.repetitions)
	}
	// Two deployments of the agent side by side, each with its own ports, sockets and pins.
	baseAgents := &variants.Onehop{Instance: "base", PortOffset: 100}
	headAgents := &variants.Onehop{Instance: "head", PortOffset: 200}
	variants.RegisterNetns(func(clusters.Cluster) variants.NetnsVariant { return baseAgents })
	variants.RegisterNetns(func(clusters.Cluster) variants.NetnsVariant { return headAgents })
	s, err := scenarios.Parse("gate", fmt.Appendf(nil, gateScenario, o.qps, o.connections, o.duration, o.warmup, o.repetitions))
	if err != nil {
		return fmt.Errorf("gate scenario: %w", err)
	}
	root, err := git(ctx, "", "rev-parse", "--show-toplevel")
	if err != nil {
		return fmt.Errorf("the gate builds from the onehop git repository: run it inside a clone: %w", err)
	}
	work, err := os.MkdirTemp("", "onehop-gate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	started := time.Now().UTC()
	base, baseBin, err := buildAgent(ctx, root, o.base, o.baseTags, filepath.Join(work, "base"))
	if err != nil {
		return err
	}
	head, headBin, err := buildAgent(ctx, root, o.head, o.headTags, filepath.Join(work, "head"))
	if err != nil {
		return err
	}
	baseAgents.AgentBinary, headAgents.AgentBinary = baseBin, headBin
	p, err := newProvider()
	if err != nil {
		return err
	}
	r := &scenarios.Runner{Provider: p, Binary: p.Binary, ResultsDir: o.resultsDir, Lab: o.lab, Progress: os.Stderr, NoTelemetry: true}
	res, path, err := r.Run(ctx, s)
	if err != nil {
		return fmt.Errorf("gate runs: %w", err)
	}
	g := &gate.Result{SchemaVersion: gate.SchemaVersion, Base: base, Head: head, Thresholds: gate.DefaultThresholds,
		Repetitions: o.repetitions, Environment: res.Environment, StartedAt: started, Scenario: path}
	for _, run := range res.Runs {
		if !run.Valid {
			g.Invalid = append(g.Invalid, run.ID+": "+strings.Join(run.Invalid, "; "))
		}
	}
	if g.Checks, err = gate.Evaluate(res.Runs, "onehop-base", "onehop-head", "baseline", g.Thresholds); err != nil {
		return fmt.Errorf("gate: %w", err)
	}
	// Too few usable repetitions cannot reach p < 0.01: say so rather than pass by default.
	for _, c := range g.Checks {
		if len(c.Head) < o.repetitions*8/10 {
			return fmt.Errorf("gate: only %d of %d %s repetitions had all three runs valid (%s); the lab is too disturbed to judge",
				len(c.Head), o.repetitions, c.Mode, strings.Join(g.Invalid, " | "))
		}
		g.Regression = g.Regression || c.Regressed
	}
	g.EndedAt = time.Now().UTC()
	out := cmp.Or(o.out, filepath.Join(o.resultsDir, "gate-"+started.Format("20060102T150405Z")+".json"))
	b, _ := json.MarshalIndent(g, "", "  ")
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		return err
	}
	g.Table(os.Stdout)
	fmt.Printf("gate result: %s (%s)\n", out, g.EndedAt.Sub(started).Round(time.Second))
	if g.Regression {
		return errRegression
	}
	fmt.Println("gate: no regression")
	return nil
}

// buildAgent builds cmd/onehop-agent at rev, from a `git archive` of it in dir, or from the
// working tree when rev is empty. -trimpath makes the build cache serve both alike.
func buildAgent(ctx context.Context, root, rev, tags, dir string) (gate.Build, string, error) {
	b := gate.Build{Ref: cmp.Or(rev, "working tree"), Tags: tags}
	src := root
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return b, "", err
	}
	if rev == "" {
		commit, err := git(ctx, root, "rev-parse", "HEAD")
		if err != nil {
			return b, "", err
		}
		status, err := git(ctx, root, "status", "--porcelain", "--untracked-files=no")
		if err != nil {
			return b, "", err
		}
		b.Commit, b.Dirty = commit, status != ""
	} else {
		commit, err := git(ctx, root, "rev-parse", "--verify", "--quiet", rev+"^{commit}")
		if err != nil {
			return b, "", fmt.Errorf("revision %q is not in this clone (a shallow clone lacks history: git fetch --unshallow): %w", rev, err)
		}
		b.Commit = commit
		src = filepath.Join(dir, "src")
		tarball := filepath.Join(dir, "src.tar")
		if _, err := git(ctx, root, "archive", "--format=tar", "-o", tarball, commit); err != nil {
			return b, "", err
		}
		if err := os.MkdirAll(src, 0o755); err != nil {
			return b, "", err
		}
		if out, err := exec.CommandContext(ctx, "tar", "-xf", tarball, "-C", src).CombinedOutput(); err != nil {
			return b, "", fmt.Errorf("unpack %s: %w: %s", commit, err, out)
		}
	}
	bin := filepath.Join(dir, "onehop-agent")
	args := []string{"build", "-trimpath", "-o", bin}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	fmt.Fprintf(os.Stderr, "== gate: building onehop-agent at %s\n", b.Ref)
	cmd := exec.CommandContext(ctx, cmp.Or(os.Getenv("GO"), "go"), append(args, "./cmd/onehop-agent")...)
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return b, "", fmt.Errorf("build onehop-agent at %s: %w:\n%s", b.Ref, err, out)
	}
	return b, bin, nil
}

func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

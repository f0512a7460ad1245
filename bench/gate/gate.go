// Package gate decides whether one build of the agent is slower than another, from runs
// measured side by side in one lab: the two builds and the baseline interleaved repetition by
// repetition. A regression needs all three of: statistical evidence (one-sided Wilcoxon
// signed-rank p of the paired differences below Alpha), a relative floor (the median of paired per-repetition ratios head/base) and
// an absolute floor (the median of paired differences, µs): evidence alone flags differences
// too small to matter, floors alone flag noise.
package gate

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/stats"
	"github.com/onehop-mesh/onehop/bench/sysinfo"
)

// SchemaVersion of the gate's JSON result.
const SchemaVersion = 1

// Floor is what a percentile must worsen by, at least, to count as a regression.
type Floor struct {
	Relative float64 `json:"relative"` // head/base - 1, e.g. 0.05
	AbsUS    float64 `json:"abs_us"`   // head - base, µs
}

// Thresholds are fixed before any result exists. DefaultThresholds says where they come from.
type Thresholds struct {
	Alpha  float64          `json:"alpha"` // one-sided p below which head is called slower
	Floors map[string]Floor `json:"floors"`
}

// DefaultThresholds, and why (README, "Latency gate"): in 10 A/A runs of the gate (40 checks,
// identical builds) the smallest p was 0.014, while median paired ratios ranged 0.92–1.04 at p50
// and 0.90–1.18 at p99. So the test, not the floors, keeps identical builds passing; the floors
// keep a consistent but small slowdown from failing CI: 5% at p50 is the smallest change worth
// acting on, p99 of 2000 requests is about twice as noisy (10%), and the absolute floors keep a
// few µs at a fast percentile from counting.
var DefaultThresholds = Thresholds{
	Alpha: 0.01,
	Floors: map[string]Floor{
		"p50": {Relative: 0.05, AbsUS: 10},
		"p99": {Relative: 0.10, AbsUS: 30},
	},
}

// Build is one side of the comparison.
type Build struct {
	Ref    string `json:"ref"`    // what the user asked for (a revision, or "working tree")
	Commit string `json:"commit"` // resolved commit
	Dirty  bool   `json:"dirty,omitempty"`
	Tags   string `json:"tags,omitempty"` // Go build tags
}

// Check is one mode and percentile compared.
type Check struct {
	Mode       string         `json:"mode"` // keep-alive, new connection per request
	Percentile string         `json:"percentile"`
	Base       []float64      `json:"base_us"` // per repetition, in repetition order
	Head       []float64      `json:"head_us"`
	Anchor     []float64      `json:"anchor_us"` // the baseline's, same repetitions
	Ratio      stats.Estimate `json:"ratio"`     // median of paired head/base ratios [95% CI]
	DiffUS     float64        `json:"diff_us"`   // median of paired head - base
	P          float64        `json:"p"`         // one-sided Wilcoxon signed-rank: head slower than base
	Regressed  bool           `json:"regressed"`
	Why        string         `json:"why"`
}

// Result is the gate's JSON output.
type Result struct {
	SchemaVersion int                 `json:"schema_version"`
	Base          Build               `json:"base"`
	Head          Build               `json:"head"`
	Thresholds    Thresholds          `json:"thresholds"`
	Repetitions   int                 `json:"repetitions"`
	Environment   sysinfo.Environment `json:"environment"`
	StartedAt     time.Time           `json:"started_at"`
	EndedAt       time.Time           `json:"ended_at"`
	Checks        []Check             `json:"checks"`
	Invalid       []string            `json:"invalid_runs,omitempty"`
	Regression    bool                `json:"regression"`
	// Scenario is the result file of the runs the checks come from.
	Scenario string `json:"scenario_result"`
}

// Evaluate compares variant head against base in runs, for each keep-alive mode and percentile
// with a floor, with anchor (the baseline) alongside. Only repetitions where all three runs are
// valid count: a pair with an invalid side says nothing.
func Evaluate(runs []bench.Run, base, head, anchor string, th Thresholds) ([]Check, error) {
	type key struct {
		keepAlive bool
		rep       int
	}
	byVariant := map[string]map[key]bench.Run{base: {}, head: {}, anchor: {}}
	for _, r := range runs {
		if m := byVariant[r.Variant]; m != nil && r.Valid {
			m[key{r.KeepAlive, r.Repetition}] = r
		}
	}
	var out []Check
	for _, ka := range []bool{true, false} {
		var reps []int
		for k := range byVariant[head] {
			_, inBase := byVariant[base][k]
			_, inAnchor := byVariant[anchor][k]
			if k.keepAlive == ka && inBase && inAnchor {
				reps = append(reps, k.rep)
			}
		}
		if len(reps) == 0 {
			continue
		}
		slices.Sort(reps)
		for _, pct := range slices.Sorted(maps.Keys(th.Floors)) {
			c := Check{Mode: modeName(ka), Percentile: pct}
			for _, rep := range reps {
				k := key{ka, rep}
				c.Base = append(c.Base, byVariant[base][k].Latency.Percentiles[pct])
				c.Head = append(c.Head, byVariant[head][k].Latency.Percentiles[pct])
				c.Anchor = append(c.Anchor, byVariant[anchor][k].Latency.Percentiles[pct])
			}
			if err := c.decide(th.Alpha, th.Floors[pct]); err != nil {
				return nil, fmt.Errorf("%s %s: %w", c.Mode, pct, err)
			}
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no repetition where base, head and anchor were all valid")
	}
	return out, nil
}

func (c *Check) decide(alpha float64, f Floor) error {
	ratios, err := stats.PairedRatios(c.Head, c.Base)
	if err != nil {
		return err
	}
	if c.Ratio, err = stats.MedianCI(ratios, 0.95); err != nil {
		return err
	}
	diffs := make([]float64, len(c.Head))
	for i := range diffs {
		diffs[i] = c.Head[i] - c.Base[i]
	}
	c.DiffUS = stats.Median(diffs)
	if c.P, err = stats.SignedRankGreater(diffs); err != nil {
		return err
	}
	significant := c.P < alpha
	overRel := c.Ratio.Median > 1+f.Relative
	overAbs := c.DiffUS > f.AbsUS
	c.Regressed = significant && overRel && overAbs
	switch {
	case c.Regressed:
		c.Why = fmt.Sprintf("slower: p %.2g < %g, +%.1f%% > %.0f%%, +%.0f µs > %.0f µs", c.P, alpha, 100*(c.Ratio.Median-1), 100*f.Relative, c.DiffUS, f.AbsUS)
	case !significant:
		c.Why = fmt.Sprintf("no evidence head is slower (p %.2g ≥ %g)", c.P, alpha)
	case !overRel:
		c.Why = fmt.Sprintf("slower by %+.1f%%, under the %.0f%% floor", 100*(c.Ratio.Median-1), 100*f.Relative)
	default:
		c.Why = fmt.Sprintf("slower by %+.0f µs, under the %.0f µs floor", c.DiffUS, f.AbsUS)
	}
	return nil
}

// Table writes the checks as a short text table.
func (r *Result) Table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "mode\tpct\tbaseline µs\tbase µs\thead µs\thead/base [95% CI]\thead−base µs\tp (head slower)\tverdict")
	for _, c := range r.Checks {
		verdict := "ok"
		if c.Regressed {
			verdict = "REGRESSION"
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.0f\t%s\t%+.0f\t%.2g\t%s: %s\n", c.Mode, c.Percentile, stats.Median(c.Anchor),
			stats.Median(c.Base), stats.Median(c.Head), c.Ratio, c.DiffUS, c.P, verdict, c.Why)
	}
	tw.Flush()
	fmt.Fprintf(w, "base %s, head %s; %d repetitions per mode, medians over repetitions\n", describe(r.Base), describe(r.Head), r.Repetitions)
}

func describe(b Build) string {
	s := cmp.Or(b.Ref, "?")
	if b.Commit != "" && b.Commit != b.Ref {
		s += " (" + b.Commit[:min(12, len(b.Commit))] + ")"
	}
	if b.Dirty {
		s += " with uncommitted changes"
	}
	if b.Tags != "" {
		s += " -tags " + b.Tags
	}
	return s
}

func modeName(keepAlive bool) string {
	if keepAlive {
		return "keep-alive"
	}
	return "new connection"
}

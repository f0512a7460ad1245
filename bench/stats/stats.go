// Package stats holds the few statistics the reports rest on: medians with bootstrap confidence
// intervals, ratios of paired measurements, and the Mann–Whitney U test. Runs on a shared
// machine drift; a ratio of two variants measured seconds apart in the same repetition cancels
// most of the drift, so paired ratios are the estimate wherever runs are paired.
package stats

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Resamples is how many bootstrap resamples an interval is computed from.
const Resamples = 10000

// Interval is a confidence interval.
type Interval struct {
	Lo, Hi float64
}

// Contains says whether x lies in the interval.
func (i Interval) Contains(x float64) bool { return i.Lo <= x && x <= i.Hi }

// Estimate is a median with its confidence interval, from N values.
type Estimate struct {
	Median float64
	CI     Interval
	N      int
}

func (e Estimate) String() string {
	return fmt.Sprintf("%.3f [%.3f, %.3f]", e.Median, e.CI.Lo, e.CI.Hi)
}

// Median of xs (not changed); NaN if xs is empty.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return sortedMedian(s)
}

func sortedMedian(s []float64) float64 {
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// MedianCI is the median of xs with a percentile-bootstrap confidence interval at level (0.95
// for 95%). The resampling is seeded: the same values give the same interval, run after run.
func MedianCI(xs []float64, level float64) (Estimate, error) {
	if len(xs) == 0 {
		return Estimate{}, errors.New("median of no values")
	}
	if level <= 0 || level >= 1 {
		return Estimate{}, fmt.Errorf("confidence level %v: want between 0 and 1", level)
	}
	// Sorted first: the same values in any order give the same resamples.
	xs = slices.Clone(xs)
	slices.Sort(xs)
	rng := rand.New(rand.NewPCG(uint64(len(xs)), 0x6f6e65686f70)) // fixed seed, see above
	meds := make([]float64, Resamples)
	sample := make([]float64, len(xs))
	for r := range meds {
		for i := range sample {
			sample[i] = xs[rng.IntN(len(xs))]
		}
		slices.Sort(sample)
		meds[r] = sortedMedian(sample)
	}
	slices.Sort(meds)
	tail := (1 - level) / 2
	return Estimate{
		Median: Median(xs),
		CI:     Interval{Lo: quantile(meds, tail), Hi: quantile(meds, 1-tail)},
		N:      len(xs),
	}, nil
}

// quantile of sorted values, interpolating linearly between order statistics.
func quantile(sorted []float64, q float64) float64 {
	pos := q * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	if lo >= len(sorted)-1 {
		return sorted[len(sorted)-1]
	}
	frac := pos - float64(lo)
	return sorted[lo] + frac*(sorted[lo+1]-sorted[lo])
}

// PairedRatios returns a[i]/b[i]: a and b are measurements paired by index (the same
// repetition). A pair whose b is not positive is an error: no ratio can stand for it.
func PairedRatios(a, b []float64) ([]float64, error) {
	if len(a) != len(b) {
		return nil, fmt.Errorf("paired ratios of %d and %d values", len(a), len(b))
	}
	out := make([]float64, len(a))
	for i := range a {
		if !(b[i] > 0) {
			return nil, fmt.Errorf("pair %d: denominator %v", i, b[i])
		}
		out[i] = a[i] / b[i]
	}
	return out, nil
}

// MannWhitney tests whether a and b come from distributions of equal median (two-sided) and
// returns U of a and the p-value, from the normal approximation with the correction for ties
// and for continuity (what scipy's mannwhitneyu gives with method="asymptotic"). It suits the
// 10 or more repetitions the reports use.
func MannWhitney(a, b []float64) (u, p float64, err error) {
	n1, n2 := len(a), len(b)
	if n1 == 0 || n2 == 0 {
		return 0, 0, errors.New("Mann-Whitney U of an empty sample")
	}
	type obs struct {
		v     float64
		fromA bool
	}
	all := make([]obs, 0, n1+n2)
	for _, v := range a {
		all = append(all, obs{v, true})
	}
	for _, v := range b {
		all = append(all, obs{v, false})
	}
	slices.SortFunc(all, func(x, y obs) int {
		switch {
		case x.v < y.v:
			return -1
		case x.v > y.v:
			return 1
		}
		return 0
	})
	// Mid-ranks for ties; the tie term t^3 - t of each group corrects the variance.
	var rankA, ties float64
	for i := 0; i < len(all); {
		j := i
		for j < len(all) && all[j].v == all[i].v {
			j++
		}
		rank := float64(i+j+1) / 2 // ranks i+1 .. j, averaged
		for k := i; k < j; k++ {
			if all[k].fromA {
				rankA += rank
			}
		}
		t := float64(j - i)
		ties += t*t*t - t
		i = j
	}
	f1, f2 := float64(n1), float64(n2)
	n := f1 + f2
	u = rankA - f1*(f1+1)/2
	mean := f1 * f2 / 2
	variance := f1 * f2 / 12 * ((n + 1) - ties/(n*(n-1)))
	if variance <= 0 { // every value equal: no evidence of a difference
		return u, 1, nil
	}
	z := (math.Abs(u-mean) - 0.5) / math.Sqrt(variance)
	if z < 0 {
		z = 0
	}
	p = math.Erfc(z / math.Sqrt2) // two-sided: 2 * (1 - Phi(z))
	return u, math.Min(p, 1), nil
}

// SignedRankGreater is the one-sided p-value of the Wilcoxon signed-rank test that paired
// differences d (head − base of the same repetition) tend to be positive. Pairing cancels the
// drift between repetitions that an unpaired test counts as noise. Zero differences are
// dropped (Wilcoxon's convention). Exact when the |d| are distinct, which is the rule for
// latencies; with ties, the normal approximation with the tie correction.
func SignedRankGreater(d []float64) (p float64, err error) {
	var nz []float64
	for _, x := range d {
		if x != 0 {
			nz = append(nz, x)
		}
	}
	n := len(nz)
	if n == 0 {
		return 1, nil // no pair differs: no evidence
	}
	slices.SortFunc(nz, func(a, b float64) int { return cmpFloat(math.Abs(a), math.Abs(b)) })
	var wPlus, ties float64
	tied := false
	for i := 0; i < n; {
		j := i
		for j < n && math.Abs(nz[j]) == math.Abs(nz[i]) {
			j++
		}
		rank := float64(i+j+1) / 2
		for k := i; k < j; k++ {
			if nz[k] > 0 {
				wPlus += rank
			}
		}
		t := float64(j - i)
		ties += t*t*t - t
		tied = tied || j-i > 1
		i = j
	}
	if !tied && n <= 50 {
		// counts[s]: how many of the 2^n sign patterns give W+ = s (ranks 1..n).
		maxSum := n * (n + 1) / 2
		counts := make([]float64, maxSum+1)
		counts[0] = 1
		for r := 1; r <= n; r++ {
			for s := maxSum; s >= r; s-- {
				counts[s] += counts[s-r]
			}
		}
		var tail float64
		for s := int(wPlus); s <= maxSum; s++ {
			tail += counts[s]
		}
		return tail / math.Pow(2, float64(n)), nil
	}
	fn := float64(n)
	mean := fn * (fn + 1) / 4
	variance := fn*(fn+1)*(2*fn+1)/24 - ties/48
	if variance <= 0 {
		return 1, nil
	}
	z := (wPlus - mean - 0.5) / math.Sqrt(variance)
	return 0.5 * math.Erfc(z/math.Sqrt2), nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

package stats

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		xs   []float64
		want float64
	}{{[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}, {[]float64{7}, 7}} {
		if got := Median(c.xs); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.xs, got, c.want)
		}
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("Median(nil) is not NaN")
	}
}

// The interval is reproducible, holds the median, is a point for constant data, and covers the
// true median about as often as its level says: 400 experiments of 10 draws from a uniform
// distribution (true median 0.5). A percentile bootstrap of a median from 10 values covers a
// little less than its nominal 95%.
func TestMedianCI(t *testing.T) {
	xs := []float64{1.02, 0.97, 1.10, 0.99, 1.05, 1.01, 0.93, 1.04, 1.00, 1.08}
	e1, err := MedianCI(xs, 0.95)
	if err != nil {
		t.Fatal(err)
	}
	e2, _ := MedianCI(xs, 0.95)
	if e1 != e2 || !e1.CI.Contains(e1.Median) || e1.N != 10 || e1.CI.Lo >= e1.CI.Hi {
		t.Errorf("MedianCI = %v then %v", e1, e2)
	}
	if e, _ := MedianCI([]float64{2, 2, 2, 2}, 0.95); e.CI != (Interval{2, 2}) {
		t.Errorf("constant data: %v", e)
	}
	narrow, _ := MedianCI(xs, 0.5)
	if narrow.CI.Lo < e1.CI.Lo || narrow.CI.Hi > e1.CI.Hi {
		t.Errorf("50%% interval %v is not inside the 95%% one %v", narrow.CI, e1.CI)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	covered := 0
	const experiments = 400
	for range experiments {
		sample := make([]float64, 10)
		for i := range sample {
			sample[i] = rng.Float64()
		}
		e, _ := MedianCI(sample, 0.95)
		if e.CI.Contains(0.5) {
			covered++
		}
	}
	if rate := float64(covered) / experiments; rate < 0.85 || rate > 0.99 {
		t.Errorf("a 95%% interval covered the true median in %.1f%% of experiments", 100*rate)
	}
	if _, err := MedianCI(nil, 0.95); err == nil {
		t.Error("MedianCI of nothing: no error")
	}
	if _, err := MedianCI(xs, 95); err == nil {
		t.Error("level 95: no error")
	}
}

func TestPairedRatios(t *testing.T) {
	r, err := PairedRatios([]float64{2, 3}, []float64{4, 3})
	if err != nil || r[0] != 0.5 || r[1] != 1 {
		t.Errorf("PairedRatios = %v, %v", r, err)
	}
	if _, err := PairedRatios([]float64{1}, []float64{1, 2}); err == nil {
		t.Error("unequal lengths: no error")
	}
	if _, err := PairedRatios([]float64{1}, []float64{0}); err == nil {
		t.Error("zero denominator: no error")
	}
}

// U is the count of pairs where a wins (ties half), as counted pair by pair; the p-value of
// fully separated samples of 5 is the textbook normal approximation's (z = 2.507, p = 0.0122);
// equal samples give p = 1; swapping the samples changes nothing but U.
func TestMannWhitney(t *testing.T) {
	a, b := []float64{1, 2, 3, 4, 5}, []float64{6, 7, 8, 9, 10}
	u, p, err := MannWhitney(a, b)
	if err != nil || u != 0 || math.Abs(p-0.01219) > 0.00005 {
		t.Errorf("separated samples: U = %v, p = %v (%v); want 0, 0.01219", u, p, err)
	}
	if _, p, _ := MannWhitney(a, a); p != 1 {
		t.Errorf("equal samples: p = %v, want 1", p)
	}
	if _, p, _ := MannWhitney([]float64{3, 3}, []float64{3, 3, 3}); p != 1 {
		t.Errorf("all values equal: p = %v, want 1", p)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 50 {
		x, y := make([]float64, 12), make([]float64, 9)
		for i := range x {
			x[i] = float64(rng.IntN(6)) // small integers: many ties
		}
		for i := range y {
			y[i] = float64(rng.IntN(6))
		}
		want := 0.0
		for _, xv := range x {
			for _, yv := range y {
				switch {
				case xv > yv:
					want++
				case xv == yv:
					want += 0.5
				}
			}
		}
		u, p, err := MannWhitney(x, y)
		u2, p2, _ := MannWhitney(y, x)
		if err != nil || u != want || u+u2 != 12*9 || math.Abs(p-p2) > 1e-12 || p <= 0 || p > 1 {
			t.Fatalf("x %v y %v: U = %v (pairs say %v), swapped %v; p %v vs %v (%v)", x, y, u, want, u2, p, p2, err)
		}
	}
	if _, _, err := MannWhitney(nil, b); err == nil {
		t.Error("empty sample: no error")
	}
}

func TestSignedRankGreater(t *testing.T) {
	// All ten differences positive: the exact one-sided p is 1/1024.
	pos := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if p, err := SignedRankGreater(pos); err != nil || math.Abs(p-1.0/1024) > 1e-12 {
		t.Errorf("all positive: p = %v (%v), want 1/1024", p, err)
	}
	// W+ = 10+9+8 = 27: 552 of the 1024 sign patterns reach 27 or more (counted by brute force).
	mixed := []float64{-1, -2, -3, -4, -5, -6, -7, 8, 9, 10}
	if p, _ := SignedRankGreater(mixed); math.Abs(p-552.0/1024) > 1e-12 {
		t.Errorf("mixed: p = %v, want 552/1024", p)
	}
	neg := []float64{-1, -2, -3, -4, -5, -6, -7, -8, -9, -10}
	if p, _ := SignedRankGreater(neg); p != 1 {
		t.Errorf("all negative: p = %v, want 1", p)
	}
	if p, _ := SignedRankGreater([]float64{0, 0}); p != 1 {
		t.Errorf("no differences: p = %v, want 1", p)
	}
	// Ties: the normal approximation, still small for ten positive differences.
	if p, _ := SignedRankGreater([]float64{1, 1, 2, 2, 3, 3, 4, 4, 5, 5}); p > 0.005 {
		t.Errorf("tied positives: p = %v, want < 0.005", p)
	}
}

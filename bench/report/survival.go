package report

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/onehop-mesh/onehop/bench"
)

// renderSurvival writes the report of a restart-mid-traffic result: a survival table, and per
// variant a timeline of requests and latency with the restarts marked.
func renderSurvival(r *bench.Result, name, outDir string) ([]string, error) {
	var b strings.Builder
	if err := writeTitle(&b, r, outDir); err != nil {
		return nil, err
	}
	first := r.Survival[0]
	b.WriteString("## What was measured\n\n")
	if p := first.Probe; p != nil {
		fmt.Fprintf(&b, "For each variant in turn, a prober in its client pod kept %d long-lived keep-alive "+
			"connections to the %s service VIP, each sending a request every %v, and opened %g new "+
			"connections per second (one request each), while the variant's daemon on node %s was "+
			"restarted %d times. The prober is not fortio: fortio's client silently reopens a dead "+
			"keep-alive socket, so a broken connection would not show as an error. Here a long-lived "+
			"connection that fails once is **lost** (the prober opens a replacement and counts it), "+
			"and every request and connection attempt lands in a %v time bucket.\n\n",
			p.Config.LongLived, first.Placement, p.Config.Interval, p.Config.NewConnRate, nodeOf(first), len(first.Restarts), p.Config.Bucket)
	}
	b.WriteString("## Survival\n\n")
	var rows [][]string
	for _, sv := range r.Survival {
		m := sv.Summary
		rows = append(rows, []string{sv.Variant,
			fmt.Sprintf("%d/%d", m.LongLivedSurviving, m.LongLived),
			fmt.Sprintf("%d of %d", m.RequestsFailed, m.RequestsOK+m.RequestsFailed),
			fmt.Sprintf("%d of %d (%d)", m.NewConnFailed, m.NewConnOK+m.NewConnFailed, m.NewConnFailedDuringRestarts),
			readyCell(m, "SIGTERM"), readyCell(m, "SIGKILL"), fmt.Sprint(len(sv.Restarts)), viaCell(sv), p99Cell(sv)})
	}
	writeTable(&b, []string{"variant", "long-lived connections surviving", "requests failed",
		"new connections failed (of them during restarts)", "time to ready after SIGTERM, ms (median / max)",
		"after SIGKILL", "restarts", "connections through kube-proxy rules",
		"p99 per bucket, µs: median of other buckets / median and max of restart buckets"}, rows)
	b.WriteString("A restart window runs from the signal to the new daemon's readiness; new connections failed " +
		"during restarts are those in time buckets overlapping one. The last column counts connections to the " +
		"probed VIP that the lab's kube-proxy rules DNATed: all of them for the baseline; for a variant that " +
		"balances on its own, anything above 0 means traffic fell back to kube-proxy while its daemon was away.\n\n")

	var files []string
	for vi, sv := range r.Survival {
		fmt.Fprintf(&b, "## %s\n\n%s\n\n", sv.Variant, sv.Describe)
		if sv.Error != "" {
			fmt.Fprintf(&b, "**The run stopped early:** %s\n\n", sv.Error)
		}
		if sv.Probe != nil && len(sv.Probe.Buckets) > 0 {
			base := fmt.Sprintf("%s-%s-timeline", name, fileName(sv.Variant))
			written, err := writeTimeline(sv, vi, filepath.Join(outDir, base))
			files = append(files, written...)
			if err != nil {
				return files, err
			}
			fmt.Fprintf(&b, "![timeline of %s](%s.svg)\n\n![p99 latency of %s](%s-p99.svg)\n\n", sv.Variant, base, sv.Variant, base)
		}
		var rr [][]string
		for i, ev := range sv.Restarts {
			rr = append(rr, []string{fmt.Sprint(i + 1), ev.Signal, ev.Daemon, num(ev.ReadyMS)})
		}
		writeTable(&b, []string{"restart", "signal", "daemon", "ready after (ms)"}, rr)
		if p := sv.Probe; p != nil && len(p.Summary.LongLivedLost) > 0 {
			b.WriteString("Long-lived connections lost:\n\n")
			var lr [][]string
			for i, l := range p.Summary.LongLivedLost {
				if i == 20 {
					lr = append(lr, []string{"…", fmt.Sprintf("%d more", len(p.Summary.LongLivedLost)-20), "", ""})
					break
				}
				at := time.Unix(0, l.LostAtUnixNs).Sub(p.Start).Seconds()
				lr = append(lr, []string{fmt.Sprintf("%d (gen %d, %s)", l.Conn, l.Gen, l.LocalAddr), fmt.Sprintf("%.2f", at), l.ErrorClass, l.Error})
			}
			writeTable(&b, []string{"connection", "lost at (s)", "class", "error"}, lr)
		}
	}
	writeEnvironment(&b, r)
	md := filepath.Join(outDir, name+".md")
	if err := os.WriteFile(md, []byte(b.String()), 0o644); err != nil {
		return files, err
	}
	return append([]string{md}, files...), nil
}

// p99Cell compares the per-bucket p99 of buckets overlapping a restart window with the others.
func p99Cell(sv bench.Survival) string {
	p := sv.Probe
	if p == nil {
		return "–"
	}
	var during, other []float64
	for _, b := range p.Buckets {
		from := time.Unix(0, b.StartUnixNs)
		if b.P99Us == 0 || from.Add(p.Config.Bucket).After(p.End) {
			continue
		}
		hit := false
		for _, r := range sv.Restarts {
			hit = hit || from.Before(r.ReadyAt) && from.Add(p.Config.Bucket).After(r.StoppedAt)
		}
		if hit {
			during = append(during, float64(b.P99Us))
		} else {
			other = append(other, float64(b.P99Us))
		}
	}
	if len(during) == 0 || len(other) == 0 {
		return "–"
	}
	slices.Sort(during)
	slices.Sort(other)
	return fmt.Sprintf("%s / %s and %s", num(bench.Median(other)), num(bench.Median(during)), num(during[len(during)-1]))
}

// writeTitle makes outDir and starts a report with the scenario's name and description.
func writeTitle(b *strings.Builder, r *bench.Result, outDir string) error {
	writeName(b, r)
	return os.MkdirAll(outDir, 0o755)
}

// writeName starts a report: the scenario, what it is, and whether it was a quick run.
func writeName(b *strings.Builder, r *bench.Result) {
	fmt.Fprintf(b, "# %s\n\n", r.Scenario.Name)
	if r.Scenario.Description != "" {
		fmt.Fprintf(b, "%s\n\n", r.Scenario.Description)
	}
	if r.Quick {
		b.WriteString(quickBanner + "\n\n")
	}
}

const quickBanner = "> **Quick run** (`make bench-quick`): a first look with 3 repetitions of 1 s. Too few and too short to " +
	"conclude from; `make bench-all` gives the figures to rely on."

func viaCell(sv bench.Survival) string {
	switch {
	case sv.Variant == baseline:
		return "all (kube-proxy is its data plane)"
	case sv.ViaServiceRules < 0:
		return "not measured"
	}
	return fmt.Sprint(sv.ViaServiceRules)
}

func nodeOf(sv bench.Survival) string {
	if len(sv.Restarts) > 0 {
		return sv.Restarts[0].Node
	}
	return "?"
}

func readyCell(m bench.SurvivalSummary, sig string) string {
	d, ok := m.ReadyMS[sig]
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%s / %s", num(d.Median), num(d.Max))
}

// survivalLine is a result's line in the report index.
func survivalLine(svs []bench.Survival) string {
	var parts []string
	for _, sv := range svs {
		parts = append(parts, fmt.Sprintf("%s %d/%d connections survived, %d requests failed",
			sv.Variant, sv.Summary.LongLivedSurviving, sv.Summary.LongLived, sv.Summary.RequestsFailed))
	}
	return strings.Join(parts, "; ")
}

// writeTimeline draws requests per second (ok and failed), failed new connections and p99
// latency over time, with a vertical line at each restart's signal.
func writeTimeline(sv bench.Survival, vi int, base string) ([]string, error) {
	p := sv.Probe
	t0 := p.Start
	perSec := 1 / p.Config.Bucket.Seconds()
	var ok, failed, newFailed, p99 plotter.XYs
	for _, b := range p.Buckets {
		if time.Unix(0, b.StartUnixNs).Add(p.Config.Bucket).After(p.End) {
			continue // the last, partial bucket would show as a drop in traffic
		}
		x := time.Unix(0, b.StartUnixNs).Sub(t0).Seconds()
		ok = append(ok, plotter.XY{X: x, Y: float64(b.RequestsOK) * perSec})
		failed = append(failed, plotter.XY{X: x, Y: float64(b.RequestsFailed) * perSec})
		newFailed = append(newFailed, plotter.XY{X: x, Y: float64(b.NewConnFailed+b.NewConnSkipped) * perSec})
		if b.P99Us > 0 {
			p99 = append(p99, plotter.XY{X: x, Y: float64(b.P99Us)})
		}
	}
	rate := plot.New()
	rate.Title.Text = fmt.Sprintf("%s: requests through daemon restarts (dashed: restart signal)", sv.Variant)
	rate.X.Label.Text = "seconds"
	rate.Y.Label.Text = "per second"
	lat := plot.New()
	lat.Title.Text = fmt.Sprintf("%s: p99 latency per %v", sv.Variant, p.Config.Bucket)
	lat.X.Label.Text = "seconds"
	lat.Y.Label.Text = "µs"
	legends := map[*plot.Plot]*plot.Legend{}
	for _, pl := range []*plot.Plot{rate, lat} {
		l := plot.NewLegend()
		legends[pl] = &l
	}
	for i, s := range []struct {
		name string
		xys  plotter.XYs
		c    color.Color
		pl   *plot.Plot
	}{
		{"requests ok", ok, palette[vi%len(palette)], rate},
		{"requests failed", failed, color.RGBA{0xD5, 0x00, 0x00, 0xFF}, rate},
		{"new connections failed", newFailed, color.Black, rate},
		{"p99 latency", p99, palette[vi%len(palette)], lat},
	} {
		if len(s.xys) == 0 {
			continue
		}
		l, err := plotter.NewLine(s.xys)
		if err != nil {
			return nil, err
		}
		l.Color, l.Width = s.c, vg.Points(1.2)
		if i == 2 {
			l.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
		}
		s.pl.Add(l)
		legends[s.pl].Add(s.name, l)
	}
	for _, pl := range []*plot.Plot{rate, lat} {
		pl.Add(plotter.NewGrid())
		pl.Y.Min = 0
		pl.Y.Max = max(pl.Y.Max*1.1, 1)
		for _, ev := range sv.Restarts {
			x := ev.StoppedAt.Sub(t0).Seconds()
			l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: pl.Y.Max}})
			if err != nil {
				return nil, err
			}
			l.Color, l.Dashes = color.Gray{0x80}, []vg.Length{vg.Points(4), vg.Points(3)}
			pl.Add(l)
		}
	}
	var files []string
	for _, part := range []struct {
		suffix string
		pl     *plot.Plot
	}{{"", rate}, {"-p99", lat}} {
		for _, format := range []string{"svg", "png"} {
			path := base + part.suffix + "." + format
			if err := save(part.pl, *legends[part.pl], format, path); err != nil {
				return files, fmt.Errorf("write %s: %w", path, err)
			}
			files = append(files, path)
		}
	}
	return files, nil
}

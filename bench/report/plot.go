package report

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

var plotW, plotH = 7 * vg.Inch, 4.5 * vg.Inch

// palette is Okabe–Ito: variants stay distinguishable with red–green colour blindness.
var palette = []color.Color{
	color.RGBA{0x00, 0x72, 0xB2, 0xFF}, color.RGBA{0xD5, 0x5E, 0x00, 0xFF}, color.RGBA{0x00, 0x9E, 0x73, 0xFF},
	color.RGBA{0xCC, 0x79, 0xA7, 0xFF}, color.RGBA{0xE6, 0x9F, 0x00, 0xFF}, color.RGBA{0x56, 0xB4, 0xE9, 0xFF},
	color.Black,
}

// writePlots draws the section's latency plot and saves it as <base>.svg and <base>.png.
// variants is the scenario-wide list so a variant keeps its colour across plots.
func writePlots(s *section, variants []string, title, base string) ([]string, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "connections (log₂ scale)"
	p.Y.Label.Text = "latency (µs, median of valid repetitions)"
	p.X.Scale = plot.LogScale{}
	var ticks plot.ConstantTicks
	for _, c := range s.conns {
		ticks = append(ticks, plot.Tick{Value: float64(c), Label: fmt.Sprint(c)})
	}
	p.X.Tick.Marker = ticks
	p.Add(plotter.NewGrid())

	legend := plot.NewLegend()
	legend.Top, legend.Left = true, true
	for vi, v := range variants {
		if !slices.Contains(s.variants, v) {
			continue
		}
		for pi, pct := range plotted {
			var xys plotter.XYs
			for _, c := range s.conns {
				if st, missing := s.lookup(cell{v, c}, pct); missing == "" {
					xys = append(xys, plotter.XY{X: float64(c), Y: st.med})
				}
			}
			if len(xys) == 0 {
				continue
			}
			line, points, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, fmt.Errorf("plot %s %s: %w", v, pct, err)
			}
			// Colour tells variants apart, dashes tell percentiles apart, glyphs survive greyscale.
			line.Color, points.Color = palette[vi%len(palette)], palette[vi%len(palette)]
			line.Dashes, line.Width = plotutil.Dashes(pi), vg.Points(1.5)
			points.Shape = plotutil.Shape(vi)
			p.Add(line, points)
			legend.Add(v+" "+pct, line, points)
		}
	}
	// Latency from zero so a visual gap is proportional to the real one; half an octave of margin on
	// x so the end points are not drawn on the axis (and a single connection count still has a range).
	p.Y.Min = 0
	p.Y.Max = max(p.Y.Max*1.05, 1)
	p.X.Min, p.X.Max = float64(s.conns[0])/math.Sqrt2, float64(s.conns[len(s.conns)-1])*math.Sqrt2

	var files []string
	for _, format := range []string{"svg", "png"} {
		path := base + "." + format
		if err := save(p, legend, format, path); err != nil {
			return files, fmt.Errorf("write %s: %w", path, err)
		}
		files = append(files, path)
	}
	return files, nil
}

// save draws the legend in a strip right of the plot: with up to three lines per variant, a
// legend inside the data area would hide points.
func save(p *plot.Plot, legend plot.Legend, format, path string) error {
	c, err := draw.NewFormattedCanvas(plotW, plotH, format)
	if err != nil {
		return err
	}
	dc := draw.New(c)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	pad := vg.Points(8)
	stripW := legend.Rectangle(dc).Size().X + 2*pad
	p.Draw(draw.Crop(dc, pad/2, -stripW, pad/2, -pad))
	legend.Draw(draw.Crop(dc, plotW-stripW+pad, 0, 0, -4*pad))
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

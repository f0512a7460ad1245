package report

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"os"
	"slices"
	"strconv"

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

// figW, figH size a section's figure: three panels side by side and the legend strip.
var figW, figH = 11 * vg.Inch, 4 * vg.Inch

// writePlots draws the section's latency as small multiples, a panel per percentile, and saves it
// as <base>.svg and <base>.png. variants is the scenario-wide list so a variant keeps its colour
// across plots.
func writePlots(s *section, variants []string, title, base string) ([]string, error) {
	legend := plot.NewLegend()
	var panels []*plot.Plot
	bars := false // whether any point has an interval
	for pi, pct := range plotted {
		p := plot.New()
		p.Title.Text = pct
		p.X.Label.Text = "connections (log₂ scale)"
		if pi == 0 {
			p.Y.Label.Text = "latency (µs)"
		}
		p.X.Scale = plot.LogScale{}
		var ticks plot.ConstantTicks
		for _, c := range s.conns {
			ticks = append(ticks, plot.Tick{Value: float64(c), Label: fmt.Sprint(c)})
		}
		p.X.Tick.Marker = ticks
		p.Y.Tick.Marker = plainTicks{}
		p.Add(plotter.NewGrid())
		k := 0 // index among the variants of this section
		for vi, v := range variants {
			if !slices.Contains(s.variants, v) {
				continue
			}
			// Nudge variants apart by 0.07 octave each so their CI bars do not overlap; ticks
			// stay at the true connection counts.
			nudge := math.Exp2(0.07 * (float64(k) - float64(len(s.variants)-1)/2))
			k++
			var xys plotter.XYs
			errs := plotter.YErrors{}
			anyCI := false
			for _, c := range s.conns {
				st, missing := s.lookup(cell{v, c}, pct)
				if missing != "" {
					continue
				}
				xys = append(xys, plotter.XY{X: float64(c) * nudge, Y: st.med})
				// A point without an interval gets a bar of length zero, hidden under its glyph.
				e := struct{ Low, High float64 }{}
				if st.hasCI {
					e.Low, e.High, anyCI = st.med-st.ci.Lo, st.ci.Hi-st.med, true
				}
				errs = append(errs, e)
			}
			if len(xys) == 0 {
				continue
			}
			line, points, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, fmt.Errorf("plot %s %s: %w", v, pct, err)
			}
			// Colour tells variants apart, glyphs survive greyscale.
			col := palette[vi%len(palette)]
			line.Color, points.Color, line.Width = col, col, vg.Points(1.5)
			points.Shape = plotutil.Shape(vi)
			p.Add(line, points)
			if anyCI {
				eb, err := plotter.NewYErrorBars(struct {
					plotter.XYs
					plotter.YErrors
				}{xys, errs})
				if err != nil {
					return nil, fmt.Errorf("plot %s %s: %w", v, pct, err)
				}
				eb.Color, eb.Width = col, vg.Points(1)
				p.Add(eb)
				bars = true
			}
			if pi == 0 {
				legend.Add(v, line, points)
			}
		}
		// Latency from zero so a visual gap is proportional to the real one; half an octave of
		// margin on x so the end points are not drawn on the axis (and a single connection count
		// still has a range).
		p.Y.Min = 0
		p.Y.Max = max(p.Y.Max*1.05, 1)
		p.X.Min, p.X.Max = float64(s.conns[0])/math.Sqrt2, float64(s.conns[len(s.conns)-1])*math.Sqrt2
		panels = append(panels, p)
	}

	note := "points: median over\nvalid repetitions\nbars: 95% CI"
	if !bars {
		note = fmt.Sprintf("points: median over\nvalid repetitions\n(no CI: fewer than\n%d repetitions)", minCI)
	}
	var files []string
	for _, format := range []string{"svg", "png"} {
		path := base + "." + format
		if err := saveFigure(panels, legend, title, note, format, path); err != nil {
			return files, fmt.Errorf("write %s: %w", path, err)
		}
		files = append(files, path)
	}
	return files, nil
}

// saveFigure draws the panels side by side, aligned, under the figure title, with the legend and
// a note on what points and bars are in a strip to their right, where they cannot cover data.
func saveFigure(panels []*plot.Plot, legend plot.Legend, title, note, format, path string) error {
	c, dc, err := whiteCanvas(figW, figH, format)
	if err != nil {
		return err
	}
	pad := vg.Points(8)

	head := plot.New().Title.TextStyle
	head.XAlign, head.YAlign = draw.XCenter, draw.YTop
	dc.FillText(head, vg.Point{X: figW / 2, Y: figH - pad/2}, title)
	headH := head.Height(title) + 2*pad

	legend.Top, legend.Left = true, true
	noteSty := legend.TextStyle
	noteSty.Font.Size = 10
	noteSty.XAlign, noteSty.YAlign = draw.XLeft, draw.YTop
	stripW := max(legend.Rectangle(dc).Size().X, noteSty.Width(note)) + 2*pad
	body := draw.Crop(dc, pad/2, -stripW, pad/2, -headH)
	tiles := draw.Tiles{Rows: 1, Cols: len(panels), PadX: 2 * pad}
	for i, tc := range plot.Align([][]*plot.Plot{panels}, tiles, body)[0] {
		panels[i].Draw(tc)
	}
	// The legend's top lines up with the panels' titles; the note says what a point and a bar are.
	strip := draw.Crop(dc, figW-stripW+pad, 0, 0, -headH-2*pad)
	legend.Draw(strip)
	dc.FillText(noteSty, vg.Point{X: strip.Min.X, Y: strip.Max.Y - legend.Rectangle(strip).Size().Y - 2*pad}, note)
	return writeCanvas(c, path)
}

// plainTicks are gonum's default ticks labelled without trailing zeros: 250, not 250.00.
type plainTicks struct{}

func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i, t := range ticks {
		if t.Label != "" {
			// Rounded first: a step of 0.1 sums to 0.30000000000000004.
			ticks[i].Label = strconv.FormatFloat(math.Round(t.Value*1e6)/1e6, 'f', -1, 64)
		}
	}
	return ticks
}

// save draws one plot with its legend in a strip to its right, where the legend cannot hide
// points.
func save(p *plot.Plot, legend plot.Legend, format, path string) error {
	c, dc, err := whiteCanvas(plotW, plotH, format)
	if err != nil {
		return err
	}
	pad := vg.Points(8)
	stripW := legend.Rectangle(dc).Size().X + 2*pad
	p.Draw(draw.Crop(dc, pad/2, -stripW, pad/2, -pad))
	legend.Draw(draw.Crop(dc, plotW-stripW+pad, 0, 0, -4*pad))
	return writeCanvas(c, path)
}

// whiteCanvas is a w×h canvas in format (svg, png) with a white background.
func whiteCanvas(w, h vg.Length, format string) (vg.CanvasWriterTo, draw.Canvas, error) {
	c, err := draw.NewFormattedCanvas(w, h, format)
	if err != nil {
		return nil, draw.Canvas{}, err
	}
	dc := draw.New(c)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	return c, dc, nil
}

func writeCanvas(c vg.CanvasWriterTo, path string) error {
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

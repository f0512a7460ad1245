package prom

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Sample is one element of an instant query's result.
type Sample struct {
	Labels map[string]string // includes __name__ when the expression keeps it
	Value  float64
	Time   time.Time
}

// Series is one element of a range query's result.
type Series struct {
	Labels map[string]string
	Points []Point
}

// Point is one value of a Series.
type Point struct {
	Time  time.Time
	Value float64
}

// TargetHealth is what Prometheus knows about one scrape target.
type TargetHealth struct {
	Job        string
	Instance   string // host:port unless the target's labels set instance
	ScrapeURL  string
	Health     string // "up", "down" or "unknown" (not scraped yet)
	LastError  string
	LastScrape time.Time
}

func (t TargetHealth) String() string {
	s := fmt.Sprintf("%s/%s %s", t.Job, t.Instance, t.Health)
	if t.LastError != "" {
		s += ": " + t.LastError
	}
	return s
}

// Query evaluates an instant PromQL query at time at (the zero time means now). Vector and
// scalar results are returned as samples; a scalar has no labels.
func (s *Server) Query(ctx context.Context, promql string, at time.Time) ([]Sample, error) {
	if at.IsZero() {
		at = time.Now()
	}
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	params := url.Values{"query": {promql}, "time": {apiTime(at)}}
	if err := s.get(ctx, "/api/v1/query", params, &data); err != nil {
		return nil, fmt.Errorf("query %q: %w", promql, err)
	}
	switch data.ResultType {
	case "vector":
		var v []struct {
			Metric map[string]string `json:"metric"`
			Value  pair              `json:"value"`
		}
		if err := json.Unmarshal(data.Result, &v); err != nil {
			return nil, fmt.Errorf("query %q on prometheus %s: decode vector: %w", promql, s.addr, err)
		}
		out := make([]Sample, 0, len(v))
		for _, e := range v {
			out = append(out, Sample{Labels: e.Metric, Value: e.Value.Value, Time: e.Value.Time})
		}
		return out, nil
	case "scalar":
		var p pair
		if err := json.Unmarshal(data.Result, &p); err != nil {
			return nil, fmt.Errorf("query %q on prometheus %s: decode scalar: %w", promql, s.addr, err)
		}
		return []Sample{{Labels: map[string]string{}, Value: p.Value, Time: p.Time}}, nil
	default:
		return nil, fmt.Errorf("query %q on prometheus %s: result is a %s, want a vector or scalar", promql, s.addr, data.ResultType)
	}
}

// QueryRange evaluates a PromQL query at every step from start to end.
func (s *Server) QueryRange(ctx context.Context, promql string, start, end time.Time, step time.Duration) ([]Series, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Values []pair            `json:"values"`
		} `json:"result"`
	}
	params := url.Values{"query": {promql}, "start": {apiTime(start)}, "end": {apiTime(end)},
		"step": {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)}}
	if err := s.get(ctx, "/api/v1/query_range", params, &data); err != nil {
		return nil, fmt.Errorf("range query %q: %w", promql, err)
	}
	out := make([]Series, 0, len(data.Result))
	for _, r := range data.Result {
		pts := make([]Point, len(r.Values))
		for i, p := range r.Values {
			pts[i] = Point(p)
		}
		out = append(out, Series{Labels: r.Metric, Points: pts})
	}
	return out, nil
}

// Targets lists the active scrape targets and their health, sorted by job and instance.
func (s *Server) Targets(ctx context.Context) ([]TargetHealth, error) {
	var data struct {
		Active []struct {
			Labels     map[string]string `json:"labels"`
			ScrapePool string            `json:"scrapePool"`
			ScrapeURL  string            `json:"scrapeUrl"`
			LastError  string            `json:"lastError"`
			LastScrape time.Time         `json:"lastScrape"`
			Health     string            `json:"health"`
		} `json:"activeTargets"`
	}
	if err := s.get(ctx, "/api/v1/targets", url.Values{"state": {"active"}}, &data); err != nil {
		return nil, fmt.Errorf("list targets: %w", err)
	}
	out := make([]TargetHealth, 0, len(data.Active))
	for _, t := range data.Active {
		out = append(out, TargetHealth{Job: t.ScrapePool, Instance: t.Labels["instance"], ScrapeURL: t.ScrapeURL,
			Health: t.Health, LastError: t.LastError, LastScrape: t.LastScrape})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Job != out[j].Job {
			return out[i].Job < out[j].Job
		}
		return out[i].Instance < out[j].Instance
	})
	return out, nil
}

// WaitScraped waits until n targets of job have up == 1 (their latest scrape succeeded and is
// queryable); n <= 0 means every target configured for the job. Run it before load starts, so
// that a scenario knows its metrics are being collected. Prometheus hands discovered targets to
// its scrapers every 5s, so the first scrape comes up to 5s after Start: give ctx 10s or more.
// On timeout the error lists the job's targets with their last scrape errors.
func (s *Server) WaitScraped(ctx context.Context, job string, n int) error {
	configured, ok := s.jobs[job]
	if !ok {
		return fmt.Errorf("prometheus %s: no scrape job %q configured", s.addr, job)
	}
	if n <= 0 {
		n = configured
	}
	if n > configured {
		return fmt.Errorf("prometheus %s: job %q has %d targets, cannot wait for %d", s.addr, job, configured, n)
	}
	q := "up{job=" + strconv.Quote(job) + "} == 1"
	var up int
	var last error
	for {
		samples, err := s.Query(ctx, q, time.Time{})
		switch {
		case err == nil:
			if up, last = len(samples), nil; up >= n {
				return nil
			}
		case ctx.Err() == nil: // not the query that the deadline cut short
			last = err
		}
		select {
		case <-s.exited:
			return fmt.Errorf("prometheus %s exited (%v) while waiting for job %q; log %s:\n%s", s.addr, s.waitErr, job, s.logName, s.tail)
		case <-ctx.Done():
			// A fresh context: ctx is done, but the error should still say why.
			tctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			msg := fmt.Sprintf("job %q: %d of %d targets scraped successfully", job, up, n)
			if last != nil {
				msg += fmt.Sprintf(" (last query error: %v)", last)
			}
			return fmt.Errorf("%s: %w; targets: %s", msg, ctx.Err(), s.describeTargets(tctx, job))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *Server) describeTargets(ctx context.Context, job string) string {
	ts, err := s.Targets(ctx)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, t := range ts {
		if t.Job == job {
			out = append(out, t.String())
		}
	}
	if len(out) == 0 {
		return "none active yet (Prometheus applies new targets every 5s)"
	}
	return strings.Join(out, "; ")
}

// get calls an API endpoint and decodes the "data" of its JSON envelope. (client_golang's
// api/prometheus/v1 would need json-iterator, which this module does not otherwise depend on.)
func (s *Server) get(ctx context.Context, path string, params url.Values, data any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.addr+path+"?"+params.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("prometheus %s: %w", s.addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("prometheus %s: %s: %w", s.addr, path, err)
	}
	// Errors come as {"status":"error","errorType":"bad_data","error":"..."} with a 4xx/5xx.
	var env struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("prometheus %s: %s: %s: %.200s", s.addr, path, resp.Status, body)
	}
	if env.Status != "success" {
		return fmt.Errorf("prometheus %s: %s: %s: %s", s.addr, path, env.ErrorType, env.Error)
	}
	if err := json.Unmarshal(env.Data, data); err != nil {
		return fmt.Errorf("prometheus %s: %s: decode: %w", s.addr, path, err)
	}
	return nil
}

// apiTime formats t as the API's Unix seconds with millisecond precision.
func apiTime(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixMilli())/1e3, 'f', 3, 64)
}

// pair decodes the API's [unix seconds, "value"]; values are strings so that NaN and ±Inf
// survive JSON.
type pair Point

func (p *pair) UnmarshalJSON(b []byte) error {
	var raw [2]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	var ts float64
	var v string
	if err := json.Unmarshal(raw[0], &ts); err != nil {
		return fmt.Errorf("sample time %s: %w", raw[0], err)
	}
	if err := json.Unmarshal(raw[1], &v); err != nil {
		return fmt.Errorf("sample value %s: %w", raw[1], err)
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return fmt.Errorf("sample value: %w", err)
	}
	p.Time, p.Value = time.UnixMilli(int64(math.Round(ts*1e3))), f
	return nil
}

package bench

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// fortioResult is the part of fortio's HTTPRunnerResults JSON that summaries and validity need.
type fortioResult struct {
	ActualQPS         float64
	ActualDuration    int64 // ns
	NumThreads        int
	SocketCount       int64
	RetCodes          map[string]int64
	Sizes             struct{ Sum float64 } // response sizes, headers included
	DurationHistogram struct {
		Count       int64
		Min, Max    float64
		Avg         float64
		Percentiles []struct{ Percentile, Value float64 }
	}
}

// Summarize extracts the latency summary from fortio's result (seconds become microseconds).
func Summarize(fortio json.RawMessage) (Latency, error) {
	var f fortioResult
	if err := json.Unmarshal(fortio, &f); err != nil {
		return Latency{}, fmt.Errorf("fortio result: %w", err)
	}
	h := f.DurationHistogram
	l := Latency{
		Requests:    h.Count,
		Errors:      h.Count - f.RetCodes["200"],
		Sockets:     f.SocketCount,
		RespBytes:   int64(f.Sizes.Sum),
		ActualQPS:   f.ActualQPS,
		AvgUS:       h.Avg * 1e6,
		MinUS:       h.Min * 1e6,
		MaxUS:       h.Max * 1e6,
		Percentiles: map[string]float64{},
	}
	for _, p := range h.Percentiles {
		l.Percentiles["p"+strconv.FormatFloat(p.Percentile, 'f', -1, 64)] = p.Value * 1e6
	}
	return l, nil
}

// Limits say when a run is too far from what was asked to be plotted.
type Limits struct {
	// MinQPSRatio is the lowest acceptable actual/requested QPS in fixed-QPS mode. fortio is
	// closed-loop per connection: a slow target lowers the rate it achieves instead of queueing.
	MinQPSRatio float64 `yaml:"minQPSRatio" json:"minQPSRatio"`
}

// Check fills run.Valid and run.Invalid from its latency summary.
func (run *Run) Check(lim Limits) {
	var why []string
	l := run.Latency
	if l.Requests == 0 {
		why = append(why, "no request completed")
	}
	if l.Errors > 0 {
		why = append(why, fmt.Sprintf("%d of %d requests failed (non-200 or socket error)", l.Errors, l.Requests))
	}
	if run.Mode == "fixed-qps" && run.RequestedQPS > 0 {
		if ratio := l.ActualQPS / run.RequestedQPS; ratio < lim.MinQPSRatio {
			why = append(why, fmt.Sprintf("actual QPS %.1f is %.1f%% of the requested %.0f (below %.0f%%): fortio could not hold the rate with %d connection(s)",
				l.ActualQPS, 100*ratio, run.RequestedQPS, 100*lim.MinQPSRatio, run.Connections))
		}
		if planned := run.RequestedQPS * run.Duration.Seconds(); float64(l.Requests) < planned*lim.MinQPSRatio {
			why = append(why, fmt.Sprintf("%d requests done of %.0f planned", l.Requests, planned))
		}
	}
	// fortio's client silently reopens a dead keep-alive socket, so a broken connection shows up
	// only as an extra socket.
	if run.KeepAlive && l.Sockets > int64(run.Connections) {
		why = append(why, fmt.Sprintf("%d sockets opened for %d keep-alive connections: %d connection(s) broke and were reopened",
			l.Sockets, run.Connections, l.Sockets-int64(run.Connections)))
	}
	if rt := run.Routing; rt != nil {
		if len(rt.Elsewhere) > 0 {
			var where []string
			for pod, n := range rt.Elsewhere {
				where = append(where, fmt.Sprintf("%s %d", pod, n))
			}
			sort.Strings(where)
			why = append(why, fmt.Sprintf("misrouted: requests reached servers outside the run's service (%s)", strings.Join(where, ", ")))
		}
		if rt.Target < l.Requests {
			why = append(why, fmt.Sprintf("misrouted: the service's own servers received %d requests of the %d fortio made", rt.Target, l.Requests))
		}
	}
	sort.Strings(why)
	run.Invalid, run.Valid = why, len(why) == 0
}

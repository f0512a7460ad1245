package loadgen

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/onehop-mesh/onehop/clusters"
)

// Window is told when the measured part of a run starts and ends (CPU samplers hook in here).
type Window interface {
	Start() error
	Stop() error
}

// Driver runs fortio load from a client pod of a cluster.
type Driver struct {
	Cluster   clusters.Cluster
	ClientPod string
	Binary    string // the onehop executable, run as `onehop workload fortio-load`
}

// Outcome is what one load process reports: fortio's full result of the measured run, and of
// the warm-up (its counts; nil without one).
type Outcome struct {
	Fortio json.RawMessage
	Warmup json.RawMessage
}

// Run starts one load process in the client pod and returns fortio's results. The window's
// Start and Stop are called as the measured run (after warm-up) begins and ends.
func (d *Driver) Run(ctx context.Context, o Options, w Window) (Outcome, error) {
	opts, err := json.Marshal(o)
	if err != nil {
		return Outcome{}, err
	}
	pr, pw := io.Pipe()
	proc, err := d.Cluster.Start(ctx, d.ClientPod, clusters.Command{
		Name:   "fortio-load",
		Argv:   []string{d.Binary, "workload", "fortio-load", "--options", string(opts)},
		Stdout: pw,
	})
	if err != nil {
		return Outcome{}, err
	}
	type outcome struct {
		Outcome
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		var out outcome
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 64<<20) // fortio's result with histograms is one long line
		for sc.Scan() {
			var e Event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				continue // not ours
			}
			switch e.Event {
			case "measure-start":
				out.err = errors.Join(out.err, w.Start())
			case "measure-end":
				out.err = errors.Join(out.err, w.Stop())
			case "warmup":
				out.Warmup = e.Fortio
			case "result":
				out.Fortio = e.Fortio
			case "error":
				out.err = errors.Join(out.err, errors.New(e.Error))
			}
		}
		io.Copy(io.Discard, pr)
		done <- out
	}()
	werr := proc.Wait()
	pw.Close()
	out := <-done
	if out.err == nil && werr != nil {
		out.err = fmt.Errorf("%w; log %s:\n%s", werr, proc.LogPath, proc.LogTail(1500))
	}
	if out.err == nil && out.Fortio == nil {
		out.err = errors.New("the load process ended without a result")
	}
	if out.err != nil {
		return Outcome{}, fmt.Errorf("fortio load from pod %s to %s: %w", d.ClientPod, o.URL, out.err)
	}
	return out.Outcome, nil
}

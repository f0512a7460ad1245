package scenarios

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/probe"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/kubeproxy"
	"github.com/onehop-mesh/onehop/scenarios/variants"
)

// runRestart runs a restart-mid-traffic scenario: one variant after the other (their daemons
// share the nodes), each with its own prober and its own restarts.
func (r *Runner) runRestart(ctx context.Context, c clusters.Cluster, s *Scenario, deps deployed, res *bench.Result) error {
	for i, name := range s.Variants {
		r.say("[%d/%d] %s: %d restarts of its daemon on %s, %v apart, signals %v", i+1, len(s.Variants), name,
			s.Restart.Restarts, s.Restart.Node, s.Restart.Interval.D(), s.Restart.Signals)
		sv, err := r.survive(ctx, c, s, deps[name], name)
		if err != nil {
			return err
		}
		if sv.Error != "" {
			r.say("        stopped early: %s", sv.Error)
		}
		m := sv.Summary
		r.say("        long-lived surviving %d/%d, requests failed %d of %d, new connections failed %d of %d",
			m.LongLivedSurviving, m.LongLived, m.RequestsFailed, m.RequestsOK+m.RequestsFailed, m.NewConnFailed, m.NewConnOK+m.NewConnFailed)
		res.Survival = append(res.Survival, sv)
	}
	return nil
}

// survive probes one variant's service through its restarts. Errors of the variant (a daemon
// that does not come back) are recorded in the result; only a broken lab is returned as error.
func (r *Runner) survive(ctx context.Context, c clusters.Cluster, s *Scenario, d variants.Deployment, name string) (bench.Survival, error) {
	v, _ := variants.Get(name)
	rs, ok := d.(variants.Restarter) // checked by Validate for the netns lab
	if !ok {
		return bench.Survival{}, fmt.Errorf("variant %s on a %s cluster has no daemon the lab can restart", name, c.Provider())
	}
	spec := s.Restart
	pl := s.Placements[0]
	sv := bench.Survival{Variant: name, Describe: v.Describe(), Placement: pl}
	svc, ok := c.Services().Snapshot().Service(name, "fortio-"+pl)
	if !ok || len(svc.ClusterIPs) == 0 {
		return sv, fmt.Errorf("service %s/fortio-%s has no cluster IP", name, pl)
	}
	sv.Target = net.JoinHostPort(svc.ClusterIPs[0].String(), strconv.Itoa(serverPort))
	cfg := probe.Config{Target: sv.Target, Path: "/echo", LongLived: spec.LongLived, Interval: spec.RequestInterval.D(),
		NewConnRate: spec.NewConnectionRate, Bucket: spec.Bucket.D(), Timeout: s.Load.Timeout.D()}
	via0 := serviceRulePackets(ctx, c, svc.ClusterIPs[0].String())
	p, err := startProbe(ctx, c, clientPod(name), r.Binary, cfg)
	if err != nil {
		return sv, err
	}
	defer p.kill()
	sleepCtx(ctx, spec.Lead.D())
	start := time.Now()
	sigs := spec.SignalNumbers()
	for i := 0; i < spec.Restarts && ctx.Err() == nil; i++ {
		// Restarts on a fixed schedule, so a slow one does not stretch the run's pace.
		sleepCtx(ctx, time.Until(start.Add(time.Duration(i)*spec.Interval.D())))
		ev, err := rs.Restart(ctx, c, spec.Node, sigs[i%len(sigs)])
		sv.Restarts = append(sv.Restarts, ev)
		if err != nil {
			sv.Error = fmt.Sprintf("restart %d (%s): %v", i+1, ev.Signal, err)
			break
		}
		r.say("        restart %d/%d %s: %s ready after %.0f ms", i+1, spec.Restarts, ev.Signal, ev.Daemon, ev.ReadyMS)
	}
	sleepCtx(ctx, spec.Tail.D())
	if ctx.Err() != nil {
		return sv, ctx.Err()
	}
	if sv.Probe, err = p.stop(); err != nil {
		return sv, fmt.Errorf("%s: %w", name, err)
	}
	sv.ViaServiceRules = -1
	// The baseline is kube-proxy: its re-syncs reset the counters, and all its traffic goes there.
	if _, kubeProxy := v.(variants.Baseline); !kubeProxy && via0 >= 0 {
		if via1 := serviceRulePackets(ctx, c, svc.ClusterIPs[0].String()); via1 >= 0 {
			sv.ViaServiceRules = via1 - via0
		}
	}
	sv.Summary = bench.SummarizeSurvival(sv.Probe, sv.Restarts)
	return sv, nil
}

// serviceRulePackets sums, over the nodes, the packets the lab's kube-proxy rules matched for
// the VIP; -1 when the cluster's nodes are not the lab's.
func serviceRulePackets(ctx context.Context, c clusters.Cluster, vip string) int64 {
	nr, ok := c.(clusters.NodeRunner)
	if !ok {
		return -1
	}
	var total int64
	for _, node := range c.Spec().NodeNames() {
		run := func(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
			return nr.RunOnNode(ctx, node, stdin, argv...)
		}
		n, err := kubeproxy.VIPPackets(ctx, run, kubeproxy.IPv4, vip)
		if err != nil {
			return -1
		}
		total += n
	}
	return total
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// probeProc is a running `onehop workload probe`.
type probeProc struct {
	proc   *clusters.Process
	lines  chan []byte
	waited chan error
	pw     *io.PipeWriter
}

// startProbe starts the prober in the client pod and waits until its long-lived connections
// are up.
func startProbe(ctx context.Context, c clusters.Cluster, pod, binary string, cfg probe.Config) (*probeProc, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	proc, err := c.Start(ctx, pod, clusters.Command{Name: "probe", Argv: []string{binary, "workload", "probe", "--config", string(b)}, Stdout: pw})
	if err != nil {
		return nil, err
	}
	p := &probeProc{proc: proc, lines: make(chan []byte, 4), waited: make(chan error, 1), pw: pw}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 256<<20) // the result is one long line
		for sc.Scan() {
			p.lines <- append([]byte(nil), sc.Bytes()...)
		}
		io.Copy(io.Discard, pr)
		close(p.lines)
	}()
	go func() {
		err := proc.Wait()
		pw.Close()
		p.waited <- err
	}()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				return nil, fmt.Errorf("probe in pod %s ended before it started: %v; log %s:\n%s", pod, <-p.waited, proc.LogPath, proc.LogTail(2000))
			}
			var e struct{ Event string }
			if json.Unmarshal(line, &e) == nil && e.Event == "started" {
				return p, nil
			}
		case <-timeout:
			p.kill()
			return nil, fmt.Errorf("probe in pod %s: long-lived connections to %s not up within 30s; log %s:\n%s", pod, cfg.Target, proc.LogPath, proc.LogTail(2000))
		case <-ctx.Done():
			p.kill()
			return nil, ctx.Err()
		}
	}
}

// stop ends the probe (SIGTERM, or its cluster's way) and returns its result.
func (p *probeProc) stop() (*probe.Result, error) {
	p.proc.Term()
	var res *probe.Result
	for line := range p.lines {
		var r probe.Result
		if json.Unmarshal(line, &r) == nil && r.SchemaVersion > 0 {
			res = &r
		}
	}
	err := <-p.waited
	p.waited <- err // for kill
	if res == nil {
		return nil, errors.Join(errors.New("the probe ended without a result"), err, fmt.Errorf("log %s:\n%s", p.proc.LogPath, p.proc.LogTail(2000)))
	}
	return res, nil
}

// kill makes sure the probe is gone (after an error).
func (p *probeProc) kill() {
	select {
	case err := <-p.waited:
		p.waited <- err
	default:
		p.proc.Process.Kill()
	}
}

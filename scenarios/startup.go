package scenarios

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/scenarios/variants"
)

// runStartup measures, Pods times per variant (variants interleaved, order balanced), how long
// a new pod takes from the start of its creation to its first successful request through the
// variant's data plane to the same-node service.
func (r *Runner) runStartup(ctx context.Context, c clusters.Cluster, s *Scenario, deps deployed, res *bench.Result) error {
	for rep := 1; rep <= s.Startup.Pods; rep++ {
		for _, name := range repOrder(s.Variants, rep) {
			run, err := r.startOnePod(ctx, c, s, deps[name], name, rep)
			if err != nil {
				return err
			}
			if run.Error != "" {
				r.say("[%d/%d] %s: %s", rep, s.Startup.Pods, name, run.Error)
			} else {
				r.say("[%d/%d] %s: first success after %.0f ms (create %.0f ms, onboard %.0f ms, %d attempts)",
					rep, s.Startup.Pods, name, run.FirstSuccessMS, run.CreateMS, run.OnboardMS, run.Attempts)
			}
			res.Startup = append(res.Startup, run)
		}
	}
	return nil
}

// startOnePod creates, onboards and probes one new pod, then removes it. A variant's failure is
// recorded in the run; only a broken lab is an error.
func (r *Runner) startOnePod(ctx context.Context, c clusters.Cluster, s *Scenario, d variants.Deployment, variant string, rep int) (bench.StartupRun, error) {
	run := bench.StartupRun{Variant: variant, Pod: fmt.Sprintf("%s-new-%d", variant, rep), Repetition: rep}
	svc, ok := c.Services().Snapshot().Service(variant, "fortio-"+SameNode)
	if !ok || len(svc.ClusterIPs) == 0 {
		return run, fmt.Errorf("service %s/fortio-%s has no cluster IP", variant, SameNode)
	}
	target := net.JoinHostPort(svc.ClusterIPs[0].String(), strconv.Itoa(serverPort))
	ob, _ := d.(variants.Onboarder)

	t0 := time.Now()
	pod, err := c.CreatePod(ctx, clusters.PodSpec{Name: run.Pod, Namespace: variant, Node: "n1",
		Labels: map[string]string{"app": "startup"}, Component: "client"})
	if err != nil {
		return run, fmt.Errorf("create pod %s: %w", run.Pod, err)
	}
	defer func() {
		if ob != nil {
			ob.RemovePod(context.Background(), c, pod)
		}
		c.DeletePod(context.Background(), pod.Name)
	}()
	run.CreateMS = ms(time.Since(t0))
	if ob != nil {
		t1 := time.Now()
		if err := ob.AddPod(ctx, c, pod); err != nil {
			run.Error = fmt.Sprintf("onboard: %v", err)
			return run, nil
		}
		run.OnboardMS = ms(time.Since(t1))
	}
	var out bytes.Buffer
	proc, err := c.Start(ctx, pod.Name, clusters.Command{Name: "first-request", Stdout: &out,
		Argv: []string{r.Binary, "workload", "first-request", "--target", target, "--timeout", s.Startup.Timeout.D().String()}})
	if err != nil {
		return run, err
	}
	if err := proc.Wait(); err != nil {
		run.Error = fmt.Sprintf("no successful request: %v; log %s:\n%s", err, proc.LogPath, proc.LogTail(500))
		return run, nil
	}
	var got struct {
		At       int64 `json:"first_success_unix_ns"`
		Attempts int   `json:"attempts"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		return run, fmt.Errorf("first-request output %q: %w", out.String(), err)
	}
	run.FirstSuccessMS = ms(time.Unix(0, got.At).Sub(t0))
	run.Attempts = got.Attempts
	return run, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

package istiod

import (
	"context"
	"fmt"

	"net/http"
	"regexp"
	"sort"
	"strconv"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

const vipFlip = "10.96.130.50"

// TestPushToProgrammed is the figure "istiod push to programmed": 40 endpoint changes (one pod
// leaves a service's EndpointSlice, then comes back, alternating), each timed from the
// Kubernetes API call to the agent reporting the new endpoint count on GET /status (polled
// every ~1 ms), in sidecar (SotW) and workload API modes. istio's fake pushes without
// debounce (istiod's default PILOT_DEBOUNCE_AFTER is 100 ms), so this is istiod's generation,
// the xDS round trip and the agent's translation and map programming.
func TestPushToProgrammed(t *testing.T) {
	if testing.Short() {
		t.Skip("figure: skipped with -short")
	}
	pods := []podDef{
		{Name: "client", Namespace: "shop", Node: "n1", Labels: app("client")},
		{Name: "flip-1", Namespace: "shop", Node: "n1", Labels: app("flip"), Serve: []int{7300}},
		{Name: "flip-2", Namespace: "shop", Node: "n2", Labels: app("flip"), Serve: []int{7300}},
	}
	l := newLab(t, pods)
	for _, m := range []agentMode{sidecarSotW, workloadAPI} {
		t.Run(m.name, func(t *testing.T) { pushToProgrammed(t, l, m, pods) })
	}
}

func pushToProgrammed(t *testing.T, l *lab, m agentMode, pods []podDef) {
	b := labKube(l, pods)
	svc := svcDef{Name: "flip", Namespace: "shop", VIP: vipFlip, Selector: app("flip"), Ports: []portDef{{Name: "tcp", Port: 7300, Target: 7300}}}
	objs := []runtime.Object{kubeNamespace("shop", nil), kubeNamespace(agentNamespace, nil), b.node("n1"), b.node("n2"), b.agentPod("n1"), b.agentPod("n2")}
	for _, p := range pods {
		objs = append(objs, b.kubePod(p))
	}
	objs = append(objs, b.service(svc), b.endpointSlice(svc, b.selected(svc)))
	fake, addr := startIstiod(t, toYAML(t, objs), "", m.workload())
	a := startAgent(t, l, "n1", addr, m)
	a.waitUp(t, 15*time.Second)
	a.enroll(t, l.c.NetnsPath("client"))
	e := &env{l: l, m: m, fake: fake, a: a, b: b}
	a.waitReady(t, 30*time.Second, func() { e.logShapes(t) })
	target := vipFlip + ":7300"

	// Both endpoints must be programmed before the first change.
	if _, r, ok := e.waitFor(t, target, 10*time.Second, func(r connectResult) bool { return r.OK == 1 }); !ok {
		e.logShapes(t)
		t.Fatalf("%s not answered within 10 s of the agent being ready: %s", target, r)
	}
	count, src, err := a.endpointCount()
	if err != nil {
		t.Fatalf("no endpoint count from the agent: %v", err)
	}
	t.Logf("endpoint count from %s: %d", src, count)

	ctx := context.Background()
	kube := fake.KubeClient().Kube()
	slices := kube.DiscoveryV1().EndpointSlices("shop")
	flip2 := pods[2]
	var lat []time.Duration
	for i := 0; i < 40; i++ {
		remove := i%2 == 0
		before, _, err := a.endpointCount()
		if err != nil {
			t.Fatal(err)
		}
		cur, err := slices.Get(ctx, "flip-x7k2p", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var start time.Time
		if remove {
			cur.Endpoints = b.endpointSlice(svc, pods[1:2]).Endpoints
			start = time.Now()
			if _, err := slices.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := kube.CoreV1().Pods("shop").Delete(ctx, flip2.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		} else {
			start = time.Now()
			if _, err := kube.CoreV1().Pods("shop").Create(ctx, b.kubePod(flip2), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			cur.Endpoints = b.endpointSlice(svc, pods[1:3]).Endpoints
			if _, err := slices.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		var took time.Duration
		for {
			n, _, err := a.endpointCount()
			if err == nil && n != before {
				took = time.Since(start)
				break
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("change %d (remove %v): the agent's endpoint count stayed %d for 10 s; /status: %s", i, remove, before, statusBody(a))
			}
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, took)
		// The count moved; connections must agree.
		r := l.connect(t, "client", target, 20, 2*time.Second)
		if remove && r.Answers["flip-2"] > 0 {
			t.Errorf("change %d: flip-2 removed, but it answered %d of 20 connections after the count moved: %s", i, r.Answers["flip-2"], r)
		}
		if !remove && r.Answers["flip-2"] == 0 {
			t.Errorf("change %d: flip-2 added, but it answered none of 20 connections after the count moved: %s", i, r)
		}
		if r.failed() > 0 {
			t.Errorf("change %d: %d of 20 connections failed: %s", i, r.failed(), r)
		}
	}
	sorted := append([]time.Duration(nil), lat...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	pct := func(p float64) time.Duration { return sorted[int(p*float64(len(sorted)-1)+0.5)] }
	t.Logf("FIGURE push-to-programmed %s (%d endpoint changes, from the Kubernetes API call to the agent's count): median %v, p90 %v, min %v, max %v",
		m.name, len(lat), pct(0.5).Round(10*time.Microsecond), pct(0.9).Round(10*time.Microsecond), sorted[0].Round(10*time.Microsecond), sorted[len(sorted)-1].Round(10*time.Microsecond))
	t.Logf("all (ms): %v", fmtMs(lat))
}

func fmtMs(ds []time.Duration) string {
	s := ""
	for i, d := range ds {
		if i > 0 {
			s += " "
		}
		s += strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64)
	}
	return s
}

func statusBody(a *agent) string {
	_, b, err := a.status()
	if err != nil {
		return fmt.Sprintf("%s (%v)", b, err)
	}
	return clip(string(b), 4000)
}

var programmedEndpoints = regexp.MustCompile(`(?m)^onehop_agent_programmed_endpoints(?:\{[^}]*\})? ([0-9.e+]+)$`)

// endpointCount is the number of endpoints the agent has programmed: from /status ("endpoints",
// under "programmed" or at the top), else from the onehop_agent_programmed_endpoints metric.
func (a *agent) endpointCount() (int, string, error) {
	st, _, err := a.status()
	if err != nil {
		return 0, "", err
	}
	if n, ok := numberAt(st, "programmed", "endpoints"); ok {
		return n, "/status .programmed.endpoints", nil
	}
	if n, ok := numberAt(st, "endpoints"); ok {
		return n, "/status .endpoints", nil
	}
	code, body, err := a.do(http.MethodGet, "/metrics", nil)
	if err != nil || code != http.StatusOK {
		return 0, "", fmt.Errorf("no endpoint count in /status and GET /metrics: %d %v", code, err)
	}
	m := programmedEndpoints.FindSubmatch(body)
	if m == nil {
		return 0, "", fmt.Errorf("no endpoint count in /status or /metrics")
	}
	f, err := strconv.ParseFloat(string(m[1]), 64)
	return int(f), "/metrics onehop_agent_programmed_endpoints", err
}

func numberAt(v any, path ...string) (int, bool) {
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return 0, false
		}
		v = m[k]
	}
	f, ok := v.(float64)
	return int(f), ok
}

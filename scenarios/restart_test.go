package scenarios

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/onehop-mesh/onehop/bench/report"
)

// TestRestartMidTraffic: 20 restarts of the onehop agent (SIGTERM and SIGKILL in turn) while a
// prober keeps long-lived and new connections going through a VIP: not one request or
// connection fails, every long-lived connection survives, and none of the connections fell
// back to the lab's kube-proxy rules (onehop itself balanced them all, restarts included).
// The baseline's restart (a full rule re-sync) runs too, and the report renders.
func TestRestartMidTraffic(t *testing.T) {
	r := testRunner(t, "trrestart")
	res, _ := runYAML(t, r, `
name: restart-test
kind: restart-mid-traffic
variants: [onehop, baseline]
placements: [cross-node]
restart:
  restarts: 20
  interval: 500ms
  lead: 500ms
  tail: 1s
  longLived: 8
  newConnectionRate: 100
`)
	if len(res.Survival) != 2 {
		t.Fatalf("%d survival results, want 2", len(res.Survival))
	}
	for _, sv := range res.Survival {
		m := sv.Summary
		t.Logf("%s: %+v, via kube-proxy rules %d", sv.Variant, m, sv.ViaServiceRules)
		if sv.Error != "" || len(sv.Restarts) != 20 {
			t.Errorf("%s: %d restarts, error %q", sv.Variant, len(sv.Restarts), sv.Error)
		}
		if m.LongLived != 8 || m.LongLivedSurviving != 8 {
			t.Errorf("%s: %d of %d long-lived connections survived", sv.Variant, m.LongLivedSurviving, m.LongLived)
		}
		if m.RequestsFailed != 0 || m.NewConnFailed != 0 {
			t.Errorf("%s: %d requests and %d new connections failed", sv.Variant, m.RequestsFailed, m.NewConnFailed)
		}
		if m.NewConnOK < 500 {
			t.Errorf("%s: only %d new connections made in a run of about 11 s at 100/s", sv.Variant, m.NewConnOK)
		}
		if sv.Variant == "onehop" && sv.ViaServiceRules != 0 {
			t.Errorf("onehop: %d connections went through kube-proxy's rules: the agent's programs were not serving them", sv.ViaServiceRules)
		}
		for _, sig := range []string{"SIGTERM", "SIGKILL"} {
			if d, ok := m.ReadyMS[sig]; !ok || d.N != 10 || d.Max <= 0 {
				t.Errorf("%s: time to ready after %s: %+v", sv.Variant, sig, d)
			}
		}
	}
	out := t.TempDir()
	files, err := report.Render(res, out)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := os.ReadFile(filepath.Join(out, "restart-test.md"))
	for _, want := range []string{"## Survival", "| onehop | 8/8 |", "restart-test-onehop-timeline.svg"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if len(files) < 5 {
		t.Errorf("report wrote %v", files)
	}
}

// TestRestartMidTrafficSockmap: with same-node connections redirected by sockmap, 10 agent
// restarts (SIGTERM and SIGKILL in turn) lose no long-lived connection, request or new
// connection: the sockhash and its sk_msg link are pinned and adopted like the rest.
func TestRestartMidTrafficSockmap(t *testing.T) {
	r := testRunner(t, "trsockmap")
	res, _ := runYAML(t, r, `
name: restart-sockmap-test
kind: restart-mid-traffic
variants: [onehop-sockmap]
placements: [same-node]
restart:
  restarts: 10
  interval: 500ms
  lead: 500ms
  tail: 1s
  longLived: 8
  newConnectionRate: 100
`)
	if len(res.Survival) != 1 {
		t.Fatalf("%d survival results, want 1", len(res.Survival))
	}
	sv := res.Survival[0]
	m := sv.Summary
	t.Logf("%s: %+v", sv.Variant, m)
	if sv.Error != "" || len(sv.Restarts) != 10 || m.LongLived != 8 || m.LongLivedSurviving != 8 ||
		m.RequestsFailed != 0 || m.NewConnFailed != 0 || m.NewConnOK < 300 || sv.ViaServiceRules != 0 {
		t.Errorf("%s: %d restarts (error %q), %d of %d long-lived survived, %d requests and %d new connections failed (%d ok), %d via kube-proxy rules",
			sv.Variant, len(sv.Restarts), sv.Error, m.LongLivedSurviving, m.LongLived, m.RequestsFailed, m.NewConnFailed, m.NewConnOK, sv.ViaServiceRules)
	}
}

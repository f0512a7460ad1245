package report

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/onehop-mesh/onehop/bench"
)

// renderStartup writes the report of a start-up result: per variant, the time from a new pod's
// creation to its first successful request, and how it splits.
func renderStartup(r *bench.Result, name, outDir string) ([]string, error) {
	var b strings.Builder
	if err := writeTitle(&b, r, outDir); err != nil {
		return nil, err
	}
	creation := "netns, veth, cgroup"
	if r.Cluster.Provider != "" && r.Cluster.Provider != "netns" {
		// On Kubernetes the request's process starts through kubectl exec, after creation.
		creation = "the Deployment's pod scheduled, its sandbox and container started, ready; the request's process then " +
			"starts through `kubectl exec`, which the time after creation includes"
	}
	fmt.Fprintf(&b, "## What was measured\n\nFor each variant in turn (order rotating), a new pod is created in the variant's "+
		"namespace, onboarded by the variant (a sidecar injected, the pod enrolled with the agent, its traffic captured), and "+
		"requests the same-node service's VIP every millisecond, each time on a new connection, until the first HTTP 200. "+
		"Times are from the start of the pod's creation; creation itself (%s) is the lab's and the same for "+
		"every variant, so the time after creation is where variants differ.\n\n", creation)
	var variants []string
	for _, s := range r.Startup {
		if !slices.Contains(variants, s.Variant) {
			variants = append(variants, s.Variant)
		}
	}
	slices.Sort(variants)
	med := map[string]float64{}
	var rows [][]string
	for _, v := range variants {
		var first, create, after, onboard, attempts []float64
		failed := 0
		for _, s := range r.Startup {
			if s.Variant != v {
				continue
			}
			if s.Error != "" {
				failed++
				continue
			}
			first = append(first, s.FirstSuccessMS)
			create = append(create, s.CreateMS)
			after = append(after, s.FirstSuccessMS-s.CreateMS)
			onboard = append(onboard, s.OnboardMS)
			attempts = append(attempts, float64(s.Attempts))
		}
		if len(first) == 0 {
			rows = append(rows, []string{v, "–", "–", "–", "–", "–", fmt.Sprint(failed)})
			continue
		}
		for _, xs := range [][]float64{first, create, after, onboard, attempts} {
			slices.Sort(xs)
		}
		med[v] = bench.Median(first)
		rows = append(rows, []string{v,
			fmt.Sprintf("%s (%s–%s)", num(med[v]), num(first[0]), num(first[len(first)-1])),
			num(bench.Median(create)), num(bench.Median(after)), num(bench.Median(onboard)), num(bench.Median(attempts)), fmt.Sprint(failed)})
	}
	b.WriteString("## Start-up\n\n")
	writeTable(&b, []string{"variant", "to first success, ms: median (min–max)", "pod creation, ms", "after creation, ms", "onboarding, ms", "attempts", "failed"}, rows)
	for _, ref := range []string{"sidecar", baseline} {
		if med[ref] <= 0 {
			continue
		}
		var parts []string
		for _, v := range variants {
			if v != ref && med[v] > 0 {
				parts = append(parts, fmt.Sprintf("%s %.2f", v, med[v]/med[ref]))
			}
		}
		if len(parts) > 0 {
			fmt.Fprintf(&b, "Median time to first success relative to %s: %s.\n\n", ref, strings.Join(parts, ", "))
		}
	}
	for _, s := range r.Startup {
		if s.Error != "" {
			fmt.Fprintf(&b, "- %s (%s): %s\n", s.Pod, s.Variant, s.Error)
		}
	}
	writeEnvironment(&b, r)
	md := filepath.Join(outDir, name+".md")
	return []string{md}, os.WriteFile(md, []byte(b.String()), 0o644)
}

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/onehop-mesh/onehop/internal/testbin"
)

// Bad input is refused before anything is created, with a message naming what is wrong.
func TestBadInputNamesTheProblem(t *testing.T) {
	testbin.RequireRoot(t)
	bin := testbin.Onehop(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	spec := write("spec.yaml", "name: tbadin\nnodes: 2\npods:\n  - {name: a, node: n7}\n")
	scen := write("scen.yaml", "name: x\nload:\n  connections: [1, 0]\n")
	write("old.json", `{"schema_version": 99, "runs": []}`)
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"cluster", "up", "-f", spec}, []string{"pods[0].node", `"n7"`}},
		{[]string{"run", scen}, []string{"load.connections[1]"}},
		{[]string{"run", filepath.Join(dir, "missing.yaml")}, []string{"missing.yaml", "no such file"}},
		{[]string{"cluster", "status", "--name", "tnotup"}, []string{`lab "tnotup" is not up`, "onehop cluster up"}},
		{[]string{"report", "--results", dir, "--out", filepath.Join(dir, "out")}, []string{"schema_version 99 is not supported"}},
	}
	for _, c := range cases {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		if err == nil {
			t.Errorf("onehop %v succeeded:\n%s", c.args, out)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("onehop %v: output lacks %q:\n%s", c.args, w, out)
			}
		}
	}
	if _, err := os.Stat("/run/netns/onehop-tbadin-n1"); err == nil {
		exec.Command(bin, "cluster", "down", "--name", "tbadin").Run()
		t.Error("an invalid spec still created the lab's nodes")
	}
}

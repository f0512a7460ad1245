package sysinfo

import (
	"context"
	"encoding/json"
	"runtime/debug"
	"strings"
	"testing"
)

func TestCollect(t *testing.T) {
	env := Collect(context.Background(), []Tool{
		{Name: "go", Args: []string{"version"}},
		{Name: "onehop-no-such-tool", Args: []string{"--version"}},
		{Name: "false"}, // exits 1 without output
	})
	js, _ := json.MarshalIndent(env, "", "  ")
	t.Logf("%s", js)

	if env.Kernel == "" || env.Kernel == Unknown {
		t.Errorf("Kernel = %q", env.Kernel)
	}
	if env.KernelVersion == "" || env.KernelVersion == Unknown {
		t.Errorf("KernelVersion = %q", env.KernelVersion)
	}
	if env.Cores <= 0 {
		t.Errorf("Cores = %d", env.Cores)
	}
	if env.MemoryBytes < 1<<20 {
		t.Errorf("MemoryBytes = %d", env.MemoryBytes)
	}
	if env.Hostname == "" || env.Arch == "" || env.OS == "" || env.CPUModel == "" || env.GoVersion == "" || env.GitRevision == "" {
		t.Errorf("empty field in %+v", env)
	}
	if got := env.Tools["go"]; !strings.Contains(got, "go version") {
		t.Errorf(`Tools["go"] = %q, want the first line of "go version"`, got)
	}
	if got := env.Tools["onehop-no-such-tool"]; got != NotInstalled {
		t.Errorf("missing tool recorded as %q, want %q", got, NotInstalled)
	}
	if got := env.Tools["false"]; !strings.HasPrefix(got, "error: exit status 1") {
		t.Errorf(`Tools["false"] = %q, want an exit error`, got)
	}
	if _, ok := env.Modules["github.com/onehop-mesh/onehop"]; !ok {
		t.Errorf("main module missing from Modules %v", env.Modules)
	}
}

func TestCollectCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	env := Collect(ctx, []Tool{{Name: "go", Args: []string{"version"}}})
	if got := env.Tools["go"]; !strings.HasPrefix(got, "error:") {
		t.Errorf("tool run with a canceled context recorded as %q, want an error", got)
	}
	if env.Cores <= 0 || env.Kernel == Unknown {
		t.Errorf("canceled context must not lose local facts: %+v", env)
	}
}

func TestParseOSRelease(t *testing.T) {
	m := parseOSRelease([]byte("# comment\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME='Fedora'\nID=debian\nVERSION=\"a \\\"b\\\"\"\n"))
	for k, want := range map[string]string{"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "NAME": "Fedora", "ID": "debian", "VERSION": `a "b"`} {
		if m[k] != want {
			t.Errorf("%s = %q, want %q", k, m[k], want)
		}
	}
}

func TestParseFieldAndKB(t *testing.T) {
	v, ok := parseField(strings.NewReader("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nmodel name\t: other\n"), "model name")
	if !ok || v != "Intel(R) Xeon(R)" {
		t.Errorf("model name = %q, %v", v, ok)
	}
	if _, ok := parseField(strings.NewReader("Hardware: x\n"), "model name"); ok {
		t.Error("found a missing field")
	}
	for in, want := range map[string]uint64{"8039424 kB": 8039424 * 1024, "12": 12, "x kB": 0, "": 0} {
		if got := parseKB(in); got != want {
			t.Errorf("parseKB(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestModulesAndGitFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{
		Main: debug.Module{Path: "github.com/onehop-mesh/onehop", Version: "v0.1.0"},
		Deps: []*debug.Module{
			{Path: "fortio.org/fortio", Version: "v1.75.3"},
			{Path: "fortio.org/log", Version: "v1.18.3"},
			{Path: "gonum.org/v1/plot", Version: "v0.17.0"},
			{Path: "github.com/cilium/ebpf", Version: "v0.19.0", Replace: &debug.Module{Path: "../ebpf"}},
			{Path: "github.com/envoyproxy/go-control-plane/envoy", Version: "v1.35.0"},
		},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}},
	}
	got := modules(bi)
	want := map[string]string{
		"github.com/onehop-mesh/onehop":                "v0.1.0",
		"fortio.org/fortio":                            "v1.75.3",
		"gonum.org/v1/plot":                            "v0.17.0",
		"github.com/cilium/ebpf":                       "v0.19.0 => ../ebpf",
		"github.com/envoyproxy/go-control-plane/envoy": "v1.35.0",
	}
	if len(got) != len(want) {
		t.Errorf("modules = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("modules[%s] = %q, want %q", k, got[k], v)
		}
	}
	if rev, dirty := gitState(context.Background(), bi); rev != "abc123" || !dirty {
		t.Errorf("gitState = %q, %v; want abc123, true from build info", rev, dirty)
	}
}

package clusters_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/onehop-mesh/onehop/clusters"
)

// wantComment returns the substring named by the "# want: ..." first line of a testdata file.
func wantComment(t *testing.T, path string, b []byte) string {
	t.Helper()
	first, _, _ := strings.Cut(string(b), "\n")
	want, ok := strings.CutPrefix(first, "# want: ")
	if !ok || strings.TrimSpace(want) == "" {
		t.Fatalf("%s: first line must be a `# want: <substring>` comment, got %q", path, first)
	}
	return strings.TrimSpace(want)
}

// knownSpecBugs are invalid specs that currently crash ParseSpec instead of being rejected. They
// are skipped (not failed) until the fix lands, then checked like every other file.
var knownSpecBugs = map[string]string{}

func parseSpecRecover(name string, b []byte) (spec clusters.Spec, panicked any, err error) {
	defer func() { panicked = recover() }()
	spec, err = clusters.ParseSpec(name, b)
	return spec, nil, err
}

// TestParseSpecInvalid checks that every file under testdata/invalid is rejected with an error
// naming its field, and that it is rejected for that reason only (one problem per file).
func TestParseSpecInvalid(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "invalid", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 20 {
		t.Fatalf("found %d invalid specs under testdata/invalid, want at least 20", len(files))
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".yaml"), func(t *testing.T) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want := wantComment(t, path, b)
			spec, panicked, err := parseSpecRecover(path, b)
			if panicked != nil {
				if bug, ok := knownSpecBugs[filepath.Base(path)]; ok {
					t.Skipf("known bug (%s): ParseSpec panicked: %v", bug, panicked)
				}
				t.Fatalf("ParseSpec panicked: %v", panicked)
			}
			if bug, ok := knownSpecBugs[filepath.Base(path)]; ok {
				t.Logf("known bug %q no longer reproduces; remove it from knownSpecBugs", bug)
			}
			if err == nil {
				t.Fatalf("ParseSpec accepted %s: %+v", path, spec)
			}
			msg := err.Error()
			if !strings.Contains(msg, want) {
				t.Fatalf("error does not mention %q:\n%s", want, msg)
			}
			if !strings.HasPrefix(msg, path+": ") {
				t.Errorf("error does not start with the file name %q:\n%s", path, msg)
			}
			if !reflect.DeepEqual(spec, clusters.Spec{}) {
				t.Errorf("ParseSpec returned a spec with its error: %+v", spec)
			}
			// Validation errors list one problem per line; each file must have exactly one, so a
			// file cannot pass on a problem it was not written for.
			if _, problems, ok := strings.Cut(msg, "invalid cluster spec:\n"); ok {
				if lines := strings.Split(problems, "\n"); len(lines) != 1 {
					t.Errorf("want exactly one problem, got %d:\n%s", len(lines), problems)
				}
			}
			// LoadSpec reads the same file to the same error.
			if _, lerr := clusters.LoadSpec(path); lerr == nil || lerr.Error() != msg {
				t.Errorf("LoadSpec(%s) = %v, want %v", path, lerr, err)
			}
		})
	}
}

func TestParseSpecValid(t *testing.T) {
	defaults := clusters.Spec{
		Name:       "lab",
		Nodes:      2,
		IPFamilies: []string{"ipv4"},
		Network: clusters.Network{
			UnderlayIPv4: "172.30.0.0/24",
			PodIPv4:      "10.244.0.0/16",
			ServiceIPv4:  "10.96.0.0/16",
			UnderlayIPv6: "fd00:172:30::/64",
			PodIPv6:      "fd00:10:244::/56",
			ServiceIPv6:  "fd00:10:96::/112",
			MTU:          1500,
		},
	}
	dualStack := defaults
	dualStack.Name = "ds3"
	dualStack.Nodes = 3
	dualStack.IPFamilies = []string{"ipv6", "ipv4"}
	dualStack.Network.MTU = 9000
	dualStack.Network.ServiceIPv6 = "fd00:10:96::/108"
	dualStack.Namespaces = []clusters.Namespace{{Name: "bench", Labels: map[string]string{"mesh": "enabled"}}}
	dualStack.Pods = []clusters.PodSpec{
		// Component defaults to the app label.
		{Name: "client", Namespace: "bench", Node: "n1", Labels: map[string]string{"app": "fortio-client"}, Component: "fortio-client"},
		// An explicit component wins over the app label; the workload port defaults to 8080.
		{Name: "server-0", Namespace: "bench", Node: "n2", Labels: map[string]string{"app": "server"}, Component: "backend",
			Workload: &clusters.Workload{Kind: "fortio-server", Port: 8080}},
		{Name: "server-1", Namespace: "bench", Node: "n3", Labels: map[string]string{"app": "server"}, Component: "server",
			Workload: &clusters.Workload{Kind: "fortio-server", Port: 9090}},
		// Without an app label the component is the pod name; the namespace defaults to "default".
		{Name: "loner", Namespace: "default", Node: "n1", Component: "loner"},
	}
	dualStack.Services = []clusters.ServiceDef{
		{Name: "server", Namespace: "bench", Selector: map[string]string{"app": "server"}, Ports: []clusters.ServicePort{
			{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"},
			{Name: "dns", Port: 53, TargetPort: 53, Protocol: "UDP"},
		}},
		{Name: "plain", Namespace: "default", Selector: map[string]string{"app": "loner"}, Ports: []clusters.ServicePort{
			{Name: "http", Port: 8080, TargetPort: 8080, Protocol: "TCP"},
		}},
	}

	tests := []struct {
		file string
		want clusters.Spec
	}{
		{"empty.yaml", defaults},
		{"comments-only.yaml", defaults},
		{"dual-stack.yaml", dualStack},
	}
	files, err := filepath.Glob(filepath.Join("testdata", "valid", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(tests) {
		t.Errorf("testdata/valid has %d files, the table covers %d: %v", len(files), len(tests), files)
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", "valid", tt.file)
			got, err := clusters.LoadSpec(path)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("LoadSpec(%s) =\n%+v\nwant\n%+v", path, got, tt.want)
			}
			// A parsed spec is already defaulted and valid.
			again := got
			again.SetDefaults()
			if !reflect.DeepEqual(again, got) {
				t.Errorf("SetDefaults changed a parsed spec:\n%+v\nto\n%+v", got, again)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate of a parsed spec: %v", err)
			}
		})
	}
}

func TestDefaultSpec(t *testing.T) {
	d := clusters.Default()
	if d.Name != "lab" || d.Nodes != 2 || !reflect.DeepEqual(d.IPFamilies, []string{"ipv4"}) {
		t.Errorf("Default() = name %q, %d nodes, families %v; want lab, 2, [ipv4]", d.Name, d.Nodes, d.IPFamilies)
	}
	if len(d.Pods) != 0 || len(d.Services) != 0 {
		t.Errorf("Default() has pods or services: %+v", d)
	}
	if err := d.Validate(); err != nil {
		t.Errorf("Default() is not valid: %v", err)
	}
	if got := d.NodeNames(); !reflect.DeepEqual(got, []string{"n1", "n2"}) {
		t.Errorf("NodeNames() = %v", got)
	}
	if !d.HasFamily("ipv4") || d.HasFamily("ipv6") {
		t.Errorf("HasFamily: ipv4=%v ipv6=%v, want true false", d.HasFamily("ipv4"), d.HasFamily("ipv6"))
	}
	b, err := os.ReadFile(filepath.Join("testdata", "valid", "empty.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := clusters.ParseSpec("empty", b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(parsed, d) {
		t.Errorf("an empty file parses to %+v, want Default() %+v", parsed, d)
	}
}

func TestServicePortDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   clusters.ServicePort
		want clusters.ServicePort
	}{
		{"target port and protocol default", clusters.ServicePort{Port: 80}, clusters.ServicePort{Port: 80, TargetPort: 80, Protocol: "TCP"}},
		{"explicit target port kept", clusters.ServicePort{Port: 80, TargetPort: 8080}, clusters.ServicePort{Port: 80, TargetPort: 8080, Protocol: "TCP"}},
		{"explicit protocol kept", clusters.ServicePort{Port: 53, Protocol: "UDP"}, clusters.ServicePort{Port: 53, TargetPort: 53, Protocol: "UDP"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := clusters.Spec{Services: []clusters.ServiceDef{{Name: "web", Selector: map[string]string{"app": "web"}, Ports: []clusters.ServicePort{tt.in}}}}
			s.SetDefaults()
			if got := s.Services[0].Ports[0]; got != tt.want {
				t.Errorf("defaulted port = %+v, want %+v", got, tt.want)
			}
			if s.Services[0].Namespace != "default" {
				t.Errorf("service namespace = %q, want default", s.Services[0].Namespace)
			}
			if err := s.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

// TestValidateNodeLimits checks the node count bounds and that the pod CIDR must hold one subnet
// per node (subnet 0 unused).
func TestValidateNodeLimits(t *testing.T) {
	tests := []struct {
		nodes   int
		podIPv4 string
		podIPv6 string
		wantErr string // "" = valid
	}{
		{1, "", "", ""},
		{32, "", "", ""},
		{33, "", "", "nodes: 33"},
		{3, "10.244.0.0/22", "", ""},                // subnets 1..3 fit in /22
		{4, "10.244.0.0/22", "", "network.podIPv4"}, // subnet 4 does not
		{7, "10.244.0.0/21", "", ""},
		{8, "10.244.0.0/21", "", "network.podIPv4"},
		{3, "", "fd00:10:244::/62", ""},
		{4, "", "fd00:10:244::/62", "network.podIPv6"},
	}
	for _, tt := range tests {
		s := clusters.Spec{Nodes: tt.nodes, IPFamilies: []string{"ipv4", "ipv6"}, Network: clusters.Network{PodIPv4: tt.podIPv4, PodIPv6: tt.podIPv6}}
		s.SetDefaults()
		err := s.Validate()
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%d nodes, pod CIDRs %q %q: unexpected error %v", tt.nodes, tt.podIPv4, tt.podIPv6, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%d nodes, pod CIDRs %q %q: error %v, want one mentioning %q", tt.nodes, tt.podIPv4, tt.podIPv6, err, tt.wantErr)
		}
	}
}

func TestLoadSpecMissingFile(t *testing.T) {
	if _, err := clusters.LoadSpec(filepath.Join(t.TempDir(), "nope.yaml")); !os.IsNotExist(err) {
		t.Errorf("LoadSpec of a missing file = %v, want a not-exist error", err)
	}
}

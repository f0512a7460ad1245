// Package e2e runs onehop on a real Kubernetes cluster with sigs.k8s.io/e2e-framework: the agent
// image built from this repo, its Helm chart, the lab's control plane serving the cluster's
// Services, and the lab's fortio workload, then features that assess the agent's rollout,
// enrollment by label, service VIP balancing, and a DaemonSet restart under traffic with no
// connection lost.
//
// Without --kubeconfig it brings up a clusters/localkube cluster (root; `make e2e`), which is
// what runs here: these machines have no container engine or registry for kind. With
// --kubeconfig it uses that cluster, whose nodes must already have the images (--image-tag; for
// kind: `kind load image-archive` of `make image` and of the workload image, see README.md).
package e2e

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"sigs.k8s.io/e2e-framework/pkg/env"
	"sigs.k8s.io/e2e-framework/pkg/envconf"

	"github.com/onehop-mesh/onehop/clusters/localkube"
	"github.com/onehop-mesh/onehop/deploy/image"
)

var (
	testenv env.Environment
	setup   = &suite{}

	imageTag    = flag.String("image-tag", "", "tag of onehop.local/onehop-agent and onehop.local/onehop-workload already on the nodes (with --kubeconfig); empty: build and load them (localkube)")
	serviceCIDR = flag.String("service-cidr", "10.96.0.0/12", "the cluster's service CIDR (what the lab's control plane serves VIPs from)")
	chartSet    stringList // --chart-set, repeated
	keep        = flag.Bool("keep", false, "leave the localkube cluster up after the suite (remove it with: onehop-e2e down, or localkube.Down)")
)

func init() {
	flag.Var(&chartSet, "chart-set", "a helm --set value for the onehop chart, repeatable (with --kubeconfig); e.g. host.cgroup=/sys/fs/cgroup/unified on a kind node of a host with a hybrid cgroup hierarchy")
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// suite is what the environment's setup made, for the features.
type suite struct {
	local      *localkube.Cluster // nil on a cluster given by --kubeconfig
	agentImage string
	workload   string // the workload image
	xds        string // the control plane's address, for the chart
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..")
}

func TestMain(m *testing.M) {
	cfg, err := envconf.NewFromFlags()
	if err != nil {
		log.Fatal(err)
	}
	testenv = env.NewWithConfig(cfg)
	local := cfg.KubeconfigFile() == ""
	if local {
		testenv.Setup(func(ctx context.Context, cfg *envconf.Config) (context.Context, error) {
			c, err := localkube.Up(ctx, localkube.Options{Name: "e2e", Source: repoRoot(), Link: mustPrefix("10.250.2.0/30"), Logf: log.Printf})
			if err != nil {
				return ctx, err
			}
			setup.local = c
			cfg.WithKubeconfigFile(c.Kubeconfig)
			return ctx, nil
		})
	}
	testenv.Setup(buildImages, installOnehop)
	// Finish runs in order: the chart goes (its agents uninstall their programs), then the cluster.
	testenv.Finish(uninstallOnehop)
	if local {
		testenv.Finish(func(ctx context.Context, _ *envconf.Config) (context.Context, error) {
			if *keep {
				log.Printf("--keep: cluster e2e stays up; kubeconfig %s", setup.local.Kubeconfig)
				return ctx, nil
			}
			return ctx, localkube.Down(ctx, "e2e")
		})
	}
	os.Exit(testenv.Run(m))
}

// buildImages builds the agent's and the workload's images and loads them into the node, or
// takes --image-tag's.
func buildImages(ctx context.Context, cfg *envconf.Config) (context.Context, error) {
	if *imageTag != "" {
		setup.agentImage, setup.workload = image.Repository+":"+*imageTag, "onehop.local/onehop-workload:"+*imageTag
		return ctx, nil
	}
	if setup.local == nil {
		return ctx, fmt.Errorf("--kubeconfig without --image-tag: load the images on the nodes first (see e2e/README.md)")
	}
	dir, err := os.MkdirTemp("", "onehop-e2e-images-")
	if err != nil {
		return ctx, err
	}
	defer os.RemoveAll(dir)
	agent, wl, err := image.BuildLab(ctx, repoRoot(), "e2e", dir)
	if err != nil {
		return ctx, err
	}
	for _, tar := range []string{agent.Path, wl.Path} {
		if err := setup.local.LoadImage(ctx, tar); err != nil {
			return ctx, err
		}
	}
	setup.agentImage, setup.workload = agent.Ref, wl.Ref
	log.Printf("images loaded: %s (%s), %s", agent.Ref, agent.Digest, wl.Ref)
	return ctx, nil
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// Command nodeimage writes the docker-archive tarballs a kind node image needs preloaded in its
// containerd, offline: the Kubernetes control plane (kube-apiserver, kube-controller-manager,
// kube-scheduler), etcd, pause and coredns as static binaries on an empty base (deploy/image),
// and kube-proxy on a Debian root filesystem (it runs iptables). See FINDINGS.md and build.sh.
//
//	go run ./clusters/kind/nodeimage -out DIR -kube-bin DIR -node-bin DIR -coredns BIN \
//	    -pause BIN -proxy-base ROOTFS.tar
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/onehop-mesh/onehop/deploy/image"
)

func main() {
	out := flag.String("out", "", "directory for the tarballs")
	kubeBin := flag.String("kube-bin", "", "directory with kube-apiserver and etcd")
	nodeBin := flag.String("node-bin", "", "directory with kube-controller-manager, kube-scheduler, kube-proxy")
	coredns := flag.String("coredns", "", "static coredns binary")
	pause := flag.String("pause", "", "static pause binary (cmd/onehop-pause)")
	proxyBase := flag.String("proxy-base", "", "tar of a Debian root filesystem with iptables, kube-proxy's base layer (empty: no kube-proxy image)")
	version := flag.String("version", "v1.37.2", "Kubernetes version (the tags)")
	etcdTag := flag.String("etcd-tag", "3.7.0-0", "etcd image tag kubeadm expects")
	corednsTag := flag.String("coredns-tag", "v1.14.6", "coredns image tag kubeadm expects")
	flag.Parse()
	if *out == "" {
		log.Fatal("-out is required")
	}
	created := time.Unix(0, 0).UTC()
	arch := runtime.GOARCH
	const path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	type spec struct {
		file, bin, at string
		refs          []string
		base          string
	}
	r := "registry.k8s.io/"
	specs := []spec{
		{"kube-apiserver.tar", filepath.Join(*kubeBin, "kube-apiserver"), "/usr/local/bin/kube-apiserver", []string{r + "kube-apiserver:" + *version}, ""},
		{"kube-controller-manager.tar", filepath.Join(*nodeBin, "kube-controller-manager"), "/usr/local/bin/kube-controller-manager", []string{r + "kube-controller-manager:" + *version}, ""},
		{"kube-scheduler.tar", filepath.Join(*nodeBin, "kube-scheduler"), "/usr/local/bin/kube-scheduler", []string{r + "kube-scheduler:" + *version}, ""},
		{"etcd.tar", filepath.Join(*kubeBin, "etcd"), "/usr/local/bin/etcd", []string{r + "etcd:" + *etcdTag}, ""},
		{"pause.tar", *pause, "/pause", []string{r + "pause:3.10.2", r + "pause:3.10"}, ""},
		{"coredns.tar", *coredns, "/coredns", []string{r + "coredns/coredns:" + *corednsTag}, ""},
	}
	if *proxyBase != "" {
		specs = append(specs, spec{"kube-proxy.tar", filepath.Join(*nodeBin, "kube-proxy"), "/usr/local/bin/kube-proxy", []string{r + "kube-proxy:" + *version}, *proxyBase})
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	for _, s := range specs {
		img, err := image.FromBinaryAt(s.bin, s.at, arch, created)
		if err != nil {
			log.Fatalf("%s: %v", s.file, err)
		}
		if s.base != "" {
			// The base layer goes first: rebuild as base + binary layer.
			base, err := tarball.LayerFromFile(s.base)
			if err != nil {
				log.Fatal(err)
			}
			layers, err := img.Layers()
			if err != nil {
				log.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				log.Fatal(err)
			}
			cf = cf.DeepCopy()
			cf.RootFS.DiffIDs = nil
			cf.History = nil
			img, err = mutate.ConfigFile(empty.Image, cf)
			if err != nil {
				log.Fatal(err)
			}
			if img, err = mutate.AppendLayers(img, base, layers[0]); err != nil {
				log.Fatal(err)
			}
		}
		cf, err := img.ConfigFile()
		if err != nil {
			log.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.Config.Env = []string{path}
		if s.file == "coredns.tar" {
			cf.Config.ExposedPorts = map[string]struct{}{"53/tcp": {}, "53/udp": {}}
		}
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			log.Fatal(err)
		}
		refs := map[name.Reference]v1.Image{}
		for _, ref := range s.refs {
			t, err := name.NewTag(ref, name.StrictValidation)
			if err != nil {
				log.Fatal(err)
			}
			refs[t] = img
		}
		dst := filepath.Join(*out, s.file)
		if err := tarball.MultiRefWriteToFile(dst+".tmp", refs); err != nil {
			log.Fatalf("%s: %v", dst, err)
		}
		if err := os.Rename(dst+".tmp", dst); err != nil {
			log.Fatal(err)
		}
		fmt.Println(dst, s.refs)
	}
}

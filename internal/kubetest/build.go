package kubetest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// The versions built. KubernetesVersion matches the client-go the main module uses (v0.37.2);
// EtcdVersion is the etcd that Kubernetes v1.37.2 requires and tests with (its go.mod and
// build/dependencies.yaml); HelmVersion is built for the chart's tests.
const (
	KubernetesVersion = "v1.37.2"
	EtcdVersion       = "v3.7.0"
	HelmVersion       = "v3.22.0"
)

// Bins are the paths of the two programs Start runs.
type Bins struct{ Etcd, APIServer string }

// Logf is how progress is reported: t.Logf in tests, log.Printf in cmd/kube-bins.
type Logf func(format string, args ...any)

// CacheDir is where built binaries are kept between runs: $ONEHOP_KUBE_CACHE, or onehop/ under
// the user's cache directory ($XDG_CACHE_HOME or ~/.cache).
func CacheDir() (string, error) {
	if d := os.Getenv("ONEHOP_KUBE_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory (set ONEHOP_KUBE_CACHE): %w", err)
	}
	return filepath.Join(d, "onehop"), nil
}

// Binaries returns etcd and kube-apiserver: from $ONEHOP_KUBE_ASSETS or $KUBEBUILDER_ASSETS when
// set, else from the cache, building them there first if they are missing. Builds are serialized
// by a file lock, so parallel test packages build once and the others wait for it.
func Binaries(ctx context.Context, logf Logf) (Bins, error) {
	for _, env := range []string{"ONEHOP_KUBE_ASSETS", "KUBEBUILDER_ASSETS"} {
		if d := os.Getenv(env); d != "" {
			b := Bins{Etcd: filepath.Join(d, "etcd"), APIServer: filepath.Join(d, "kube-apiserver")}
			if err := present(b.Etcd, b.APIServer); err != nil {
				return b, fmt.Errorf("$%s=%s: %w", env, d, err)
			}
			return b, nil
		}
	}
	cache, err := CacheDir()
	if err != nil {
		return Bins{}, err
	}
	dir := filepath.Join(cache, "kube-"+KubernetesVersion+"-etcd-"+EtcdVersion)
	b := Bins{Etcd: filepath.Join(dir, "bin", "etcd"), APIServer: filepath.Join(dir, "bin", "kube-apiserver")}
	err = cached(ctx, dir, logf, func() error { return present(b.Etcd, b.APIServer) }, func() error {
		return buildKube(ctx, dir, logf)
	})
	return b, err
}

// NodeBins are the programs of a Kubernetes node and its control plane beside Bins: what
// clusters/localkube runs.
type NodeBins struct{ Kubelet, ControllerManager, Scheduler, Proxy, Kubectl string }

// NodeBinaries returns kubelet, kube-controller-manager, kube-scheduler, kube-proxy and kubectl
// of KubernetesVersion, built into the cache the first time (about 10 more minutes on 2 cores),
// from the wrapper module Binaries made.
func NodeBinaries(ctx context.Context, logf Logf) (NodeBins, error) {
	if _, err := Binaries(ctx, logf); err != nil { // the wrapper module, and the shared build cache
		return NodeBins{}, err
	}
	cache, err := CacheDir()
	if err != nil {
		return NodeBins{}, err
	}
	kube := filepath.Join(cache, "kube-"+KubernetesVersion+"-etcd-"+EtcdVersion)
	dir := filepath.Join(cache, "kube-node-"+KubernetesVersion)
	bin := func(n string) string { return filepath.Join(dir, "bin", n) }
	b := NodeBins{Kubelet: bin("kubelet"), ControllerManager: bin("kube-controller-manager"), Scheduler: bin("kube-scheduler"),
		Proxy: bin("kube-proxy"), Kubectl: bin("kubectl")}
	err = cached(ctx, dir, logf, func() error { return present(b.Kubelet, b.ControllerManager, b.Scheduler, b.Proxy, b.Kubectl) }, func() error {
		logf("kubetest: building kubelet, kube-controller-manager, kube-scheduler, kube-proxy and kubectl %s into %s (first time only: about 10 minutes on 2 cores)",
			KubernetesVersion, dir)
		tmp, err := os.MkdirTemp(dir, "build.")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		var pkgs []string
		for _, n := range []string{"kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl"} {
			pkgs = append(pkgs, "k8s.io/kubernetes/cmd/"+n)
		}
		args := append([]string{"build", "-o", tmp + string(filepath.Separator), "-ldflags=-s -w " + versionLDFlags()}, pkgs...)
		if err := goCmd(ctx, filepath.Join(kube, "src"), logf, wrapperEnv, args...); err != nil {
			return err
		}
		for _, p := range []string{b.Kubelet, b.ControllerManager, b.Scheduler, b.Proxy, b.Kubectl} {
			if err := install(filepath.Join(tmp, filepath.Base(p)), p); err != nil {
				return err
			}
		}
		return nil
	})
	return b, err
}

// versionLDFlags stamp the version as hack/lib/version.sh does: without them the binaries report
// v0.0.0-master, and the API server's compatibility version (what it serves) falls back to a
// default.
func versionLDFlags() string {
	minor := strings.SplitN(strings.TrimPrefix(KubernetesVersion, "v1."), ".", 2)[0]
	var ldflags []string
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		ldflags = append(ldflags, "-X "+pkg+".gitVersion="+KubernetesVersion, "-X "+pkg+".gitMajor=1",
			"-X "+pkg+".gitMinor="+minor, "-X "+pkg+".gitTreeState=clean")
	}
	return strings.Join(ldflags, " ")
}

// Helm returns a helm binary (HelmVersion) built with go install into the cache once. Helm's
// module has no replace directives, so it installs directly, and stays out of the main go.mod.
func Helm(ctx context.Context, logf Logf) (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "helm-"+HelmVersion)
	bin := filepath.Join(dir, "bin", "helm")
	err = cached(ctx, dir, logf, func() error { return present(bin) }, func() error {
		tmp, err := os.MkdirTemp(dir, "build.")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		logf("kubetest: building helm %s into %s (first time only, about 2-3 minutes on 2 cores)", HelmVersion, bin)
		if err := goCmd(ctx, dir, logf, []string{"GOBIN=" + tmp}, "install",
			"-ldflags=-s -w -X helm.sh/helm/v3/internal/version.version="+HelmVersion,
			"helm.sh/helm/v3/cmd/helm@"+HelmVersion); err != nil {
			return err
		}
		return install(filepath.Join(tmp, "helm"), bin)
	})
	return bin, err
}

// cached runs build under dir's lock unless ok already holds (checked again once the lock is
// held, as another process may have built meanwhile).
func cached(ctx context.Context, dir string, logf Logf, ok, build func() error) error {
	if ok() == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		return err
	}
	lockPath := filepath.Join(dir, ".lock")
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		logf("kubetest: another process is building into %s; waiting for it", dir)
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			return fmt.Errorf("lock %s: %w", lockPath, err)
		}
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if ok() == nil {
		return nil
	}
	start := time.Now()
	if err := build(); err != nil {
		return err
	}
	if err := ok(); err != nil {
		return fmt.Errorf("built, yet: %w", err)
	}
	logf("kubetest: built into %s in %s", dir, time.Since(start).Round(time.Second))
	return nil
}

// buildKube builds kube-apiserver and etcd from the module proxy. k8s.io/kubernetes replaces its
// staging modules (k8s.io/api, client-go, ...) with local directories, which the proxy does not
// serve, so it cannot be built as a dependency as it stands: a generated wrapper module requires
// it and replaces each staging module with its published v0.<minor>.<patch>. etcd's server module
// has relative replaces too, and Kubernetes requires etcd's server module at EtcdVersion, so the
// same wrapper builds it: one module graph, one compilation of the shared dependencies.
func buildKube(ctx context.Context, dir string, logf Logf) error {
	logf("kubetest: building kube-apiserver %s and etcd %s into %s (first time only: about 10 minutes on 2 cores; `make kube-bins` does it ahead)",
		KubernetesVersion, EtcdVersion, dir)
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}
	staging, err := stagingModules(ctx, dir, logf)
	if err != nil {
		return err
	}
	stagingVersion := "v0." + strings.TrimPrefix(KubernetesVersion, "v1.")
	var mod strings.Builder
	fmt.Fprintf(&mod, "// Generated by internal/kubetest: builds kube-apiserver %s and etcd %s.\nmodule onehop.local/kubebins\n\ngo 1.26.0\n\n", KubernetesVersion, EtcdVersion)
	fmt.Fprintf(&mod, "require (\n\tk8s.io/kubernetes %s\n\tgo.etcd.io/etcd/server/v3 %s\n)\n\nreplace (\n", KubernetesVersion, EtcdVersion)
	for _, m := range staging {
		fmt.Fprintf(&mod, "\t%s => %s %s\n", m, m, stagingVersion)
	}
	mod.WriteString(")\n")
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte(mod.String()), 0o644); err != nil {
		return err
	}
	os.Remove(filepath.Join(src, "go.sum"))
	apiserverPkg, etcdPkg := "k8s.io/kubernetes/cmd/kube-apiserver", "go.etcd.io/etcd/server/v3"
	logf("kubetest: resolving modules (go get)")
	if err := goCmd(ctx, src, logf, wrapperEnv, "get", apiserverPkg+"@"+KubernetesVersion, etcdPkg+"@"+EtcdVersion); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(dir, "build.")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	logf("kubetest: compiling (go build %s %s)", apiserverPkg, etcdPkg)
	if err := goCmd(ctx, src, logf, wrapperEnv, "build", "-o", tmp+string(filepath.Separator),
		"-ldflags=-s -w "+versionLDFlags(), apiserverPkg, etcdPkg); err != nil {
		return err
	}
	// go build names etcd's binary after its module path less the major version: "server".
	if err := install(filepath.Join(tmp, "server"), filepath.Join(dir, "bin", "etcd")); err != nil {
		return err
	}
	return install(filepath.Join(tmp, "kube-apiserver"), filepath.Join(dir, "bin", "kube-apiserver"))
}

var stagingRE = regexp.MustCompile(`^\s*(k8s\.io/[A-Za-z0-9._-]+)\s+=>\s+\./staging/`)

// stagingModules lists the modules k8s.io/kubernetes replaces with its staging directories, read
// from its go.mod as the module proxy serves it.
func stagingModules(ctx context.Context, dir string, logf Logf) ([]string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", "k8s.io/kubernetes@"+KubernetesVersion)
	cmd.Dir = dir
	cmd.Env = goEnv(nil)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go mod download k8s.io/kubernetes@%s: %w %s", KubernetesVersion, err, stderrOf(err))
	}
	var info struct{ GoMod, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Error != "" {
		return nil, fmt.Errorf("go mod download k8s.io/kubernetes@%s: %v %s", KubernetesVersion, err, info.Error)
	}
	f, err := os.Open(info.GoMod)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mods []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := stagingRE.FindStringSubmatch(sc.Text()); m != nil {
			mods = append(mods, m[1])
		}
	}
	if len(mods) == 0 {
		return nil, fmt.Errorf("no staging replaces in %s: the wrapper module would not build", info.GoMod)
	}
	logf("kubetest: %d staging modules replaced with their published versions", len(mods))
	return mods, nil
}

// goCmd runs the go command, its output into dir/build.log, with a line of progress a minute.
func goCmd(ctx context.Context, dir string, logf Logf, env []string, args ...string) error {
	logPath := filepath.Join(dir, "build.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "\n$ go %s\n", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = goEnv(env)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	start := time.Now()
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(time.Minute)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				logf("kubetest: go %s: still running after %s", args[0], time.Since(start).Round(time.Second))
			}
		}
	}()
	err = cmd.Run()
	close(done)
	if err != nil {
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("go %s in %s: %w\n--- last lines of %s:\n%s", strings.Join(args, " "), dir, err, logPath, lastLines(string(b), 30))
	}
	return nil
}

// goEnv is the environment of the go commands that build: no workspace, static programs.
func goEnv(extra []string) []string {
	env := append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	return append(env, extra...)
}

// wrapperEnv lets go get and go build in the wrapper module write its go.mod and go.sum.
var wrapperEnv = []string{"GOFLAGS=-mod=mod"}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// install moves a built binary into place atomically: a reader never sees half a file.
func install(from, to string) error {
	if err := os.Chmod(from, 0o755); err != nil {
		return fmt.Errorf("built binary %s: %w", from, err)
	}
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("install %s: %w", to, err)
	}
	return nil
}

func present(paths ...string) error {
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not an executable file", p)
		}
	}
	return nil
}

// Package image builds the onehop-agent container image without a Docker daemon or a registry
// (neither exists on the lab's machines): a static agent binary in one layer on an empty base,
// single platform, written as a docker-archive tarball that `docker load`, `podman load`,
// `ctr images import` and `kind load image-archive` accept. The same source gives the same
// digest: the binary is built with -trimpath and no build id, and every timestamp in the layer
// and the config is the source's own (SOURCE_DATE_EPOCH, else the HEAD commit's time).
//
// It also runs the image for the lab (containerd.go): a containerd of the lab's own, with
// Debian's runc, starting the agent as a hostNetwork DaemonSet pod would.
package image

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Repository is the image's name: a full reference (a registry host, even one that does not
// exist) so that no tool rewrites it to docker.io/library/...
const Repository = "onehop.local/onehop-agent"

// Entrypoint is the agent's path inside the image.
const Entrypoint = "/onehop-agent"

// DefaultOut is where `onehop image` writes the tarball, relative to the source.
const DefaultOut = "bin/onehop-agent-image.tar"

// Options says what to build.
type Options struct {
	Source string // module root (default "."); the agent is built from ./cmd/onehop-agent there
	// Binary, when set, is packaged instead of building one (it must be static).
	Binary string
	Out    string // tarball path (default Source/DefaultOut)
	Tag    string // full reference, or just a tag for Repository (default: Version(Source))
	Arch   string // GOARCH (default runtime.GOARCH); the OS is linux
	// Created is the image's and the layer's timestamp (default: SourceDate(Source)).
	Created time.Time
	// Package is the main package built (default ./cmd/onehop-agent); the lab's other images
	// build the pause program and fortio the same way. Entrypoint is its path in the image
	// (default Entrypoint).
	Package, Entrypoint string
}

// Result is what was built.
type Result struct {
	Ref          string  // the tarball's tag
	Digest       v1.Hash // manifest digest (what a registry would serve)
	ConfigDigest v1.Hash // config digest: the image ID that docker and podman show
	LayerDigest  v1.Hash // the one layer, compressed
	Path         string  // the tarball
	BinaryBytes  int64
}

// Build compiles the agent statically (unless opts.Binary is given), packages it and writes
// the tarball.
func Build(ctx context.Context, opts Options) (Result, error) {
	if opts.Source == "" {
		opts.Source = "."
	}
	if opts.Arch == "" {
		opts.Arch = runtime.GOARCH
	}
	if opts.Out == "" {
		opts.Out = filepath.Join(opts.Source, DefaultOut)
	}
	if opts.Created.IsZero() {
		opts.Created = SourceDate(ctx, opts.Source)
	}
	ref, err := Reference(cmp.Or(opts.Tag, Version(ctx, opts.Source)))
	if err != nil {
		return Result{}, err
	}
	bin := opts.Binary
	if bin == "" {
		tmp, err := os.MkdirTemp("", "onehop-image-")
		if err != nil {
			return Result{}, err
		}
		defer os.RemoveAll(tmp)
		bin = filepath.Join(tmp, "binary")
		if err := BuildStatic(ctx, opts.Source, opts.Arch, cmp.Or(opts.Package, "./cmd/onehop-agent"), bin); err != nil {
			return Result{}, err
		}
	}
	if err := CheckStatic(bin); err != nil {
		return Result{}, err
	}
	img, err := FromBinaryAt(bin, cmp.Or(opts.Entrypoint, Entrypoint), opts.Arch, opts.Created)
	if err != nil {
		return Result{}, err
	}
	if err := os.MkdirAll(filepath.Dir(opts.Out), 0o755); err != nil {
		return Result{}, err
	}
	// Written beside and renamed, so a reader never sees half a tarball.
	tmpOut := opts.Out + ".tmp"
	if err := tarball.WriteToFile(tmpOut, ref, img); err != nil {
		os.Remove(tmpOut)
		return Result{}, fmt.Errorf("write %s: %w", opts.Out, err)
	}
	if err := os.Rename(tmpOut, opts.Out); err != nil {
		return Result{}, err
	}
	res := Result{Ref: ref.String(), Path: opts.Out}
	if res.Digest, err = img.Digest(); err != nil {
		return res, err
	}
	if res.ConfigDigest, err = img.ConfigName(); err != nil {
		return res, err
	}
	layers, err := img.Layers()
	if err != nil {
		return res, err
	}
	if res.LayerDigest, err = layers[0].Digest(); err != nil {
		return res, err
	}
	if st, err := os.Stat(bin); err == nil {
		res.BinaryBytes = st.Size()
	}
	return res, nil
}

// BuildAgent builds ./cmd/onehop-agent of the module at src into out, as BuildStatic does.
func BuildAgent(ctx context.Context, src, arch, out string) error {
	return BuildStatic(ctx, src, arch, "./cmd/onehop-agent", out)
}

// BuildStatic builds main package pkg in the module at src into out: static (no cgo, so it
// runs on an empty base), -trimpath and an empty build id (no path or random id of this
// machine in it), no VCS stamp (so it depends on the source files only).
func BuildStatic(ctx context.Context, src, arch, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -buildid=", "-o", out, pkg)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s (%s): %w\n%s", pkg, strings.Join(cmd.Args, " "), err, b)
	}
	return nil
}

// CheckStatic fails unless bin is an ELF executable without an interpreter or shared
// libraries: on an empty base there is no libc and no loader.
func CheckStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("%s: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (it has an ELF interpreter): build it with CGO_ENABLED=0", bin)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return fmt.Errorf("%s needs shared libraries %v: build it with CGO_ENABLED=0", bin, libs)
	}
	return nil
}

// FromBinary is the agent's image: the binary at /onehop-agent in one layer on an empty base,
// for linux/arch, with created as every timestamp.
func FromBinary(bin, arch string, created time.Time) (v1.Image, error) {
	return FromBinaryAt(bin, Entrypoint, arch, created)
}

// FromBinaryAt is FromBinary with the binary at entrypoint.
func FromBinaryAt(bin, entrypoint, arch string, created time.Time) (v1.Image, error) {
	layerTar, err := binaryLayer(bin, entrypoint, created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	// AppendLayers has put the layer's diff id and an empty history entry in the config;
	// complete that config rather than replace it.
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: created.UTC()}
	cf.Config.Entrypoint = []string{entrypoint}
	cf.Config.WorkingDir = "/"
	cf.History = []v1.History{{Created: cf.Created, CreatedBy: "onehop image: " + entrypoint + " (static, CGO_ENABLED=0)"}}
	return mutate.ConfigFile(img, cf)
}

// binaryLayer is the layer's tar: one file, root-owned, mode 0755, at created; nothing of the
// build machine (user names, ids, times) gets in.
func binaryLayer(bin, entrypoint string, created time.Time) ([]byte, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(entrypoint, "/"), Mode: 0o755,
		Size: int64(len(data)), ModTime: created.UTC().Truncate(time.Second), Format: tar.FormatUSTAR}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tagChars is what a tag may hold (the distribution spec's [A-Za-z0-9_][A-Za-z0-9._-]{0,127}).
var tagChars = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// Reference makes a full reference of a tag ("v1.2", "599bc37-dirty") or checks a full one.
func Reference(s string) (name.Tag, error) {
	if !strings.ContainsAny(s, "/:") {
		s = Repository + ":" + s
	}
	t, err := name.NewTag(s, name.StrictValidation)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image reference %q: %w (want a tag or repository:tag)", s, err)
	}
	return t, nil
}

// Version is the source's `git describe --tags --always --dirty` made a valid tag, or "dev".
func Version(ctx context.Context, src string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", src, "describe", "--tags", "--always", "--dirty").Output()
	v := strings.TrimLeft(tagChars.ReplaceAllString(strings.TrimSpace(string(out)), "_"), ".-")
	if err != nil || v == "" {
		return "dev"
	}
	if len(v) > 128 {
		v = v[:128]
	}
	return v
}

// SourceDate is the time recorded in the image: $SOURCE_DATE_EPOCH (reproducible-builds.org),
// else the HEAD commit's time, else the Unix epoch. Never the build's own time.
func SourceDate(ctx context.Context, src string) time.Time {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.Unix(n, 0).UTC()
		}
	}
	out, err := exec.CommandContext(ctx, "git", "-C", src, "log", "-1", "--format=%ct").Output()
	if n, perr := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && perr == nil {
		return time.Unix(n, 0).UTC()
	}
	return time.Unix(0, 0).UTC()
}

// RequireTools fails, naming the Debian packages, when a command is not installed.
func RequireTools(pkg map[string]string) error {
	var missing []string
	for cmd, p := range pkg {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", cmd, p))
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return errors.New("not installed: " + strings.Join(missing, ", ") + ": run `make deps` as root (make test does)")
	}
	return nil
}

// WorkloadRepository is the lab's workload image: its onehop binary (the fortio server and load
// driver, the probe, the control plane) at WorkloadEntrypoint.
const (
	WorkloadRepository = "onehop.local/onehop-workload"
	WorkloadEntrypoint = "/onehop"
)

// BuildLab builds the two images a lab on Kubernetes runs, both tagged tag: the agent's
// (Repository) and the workload's (WorkloadRepository), as agent.tar and workload.tar in dir.
func BuildLab(ctx context.Context, source, tag, dir string) (agent, workload Result, err error) {
	if agent, err = Build(ctx, Options{Source: source, Tag: Repository + ":" + tag, Out: filepath.Join(dir, "agent.tar")}); err != nil {
		return agent, workload, err
	}
	workload, err = BuildWorkload(ctx, source, tag, filepath.Join(dir, "workload.tar"))
	return agent, workload, err
}

// BuildWorkload builds the workload image from the module at source: a static ./cmd/onehop.
func BuildWorkload(ctx context.Context, source, tag, out string) (Result, error) {
	tmp, err := os.MkdirTemp("", "onehop-workload-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "onehop")
	if err := BuildStatic(ctx, source, runtime.GOARCH, "./cmd/onehop", bin); err != nil {
		return Result{}, err
	}
	ref := tag
	if !strings.ContainsAny(tag, "/:") {
		ref = WorkloadRepository + ":" + tag
	}
	return Build(ctx, Options{Source: source, Binary: bin, Entrypoint: WorkloadEntrypoint, Tag: ref, Out: out})
}

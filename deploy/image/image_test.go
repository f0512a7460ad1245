package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// repoRoot is the module's root, where the agent is built from.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

const testTag = Repository + ":test"

var (
	once     sync.Once
	built    Result
	buildErr error
)

// testImage builds the image once for the package's tests (a real, static go build).
func testImage(t *testing.T) Result {
	t.Helper()
	once.Do(func() {
		dir, err := os.MkdirTemp("", "onehop-image-test-")
		if err != nil {
			buildErr = err
			return
		}
		built, buildErr = Build(context.Background(), Options{Source: repoRoot(), Out: filepath.Join(dir, "a.tar"), Tag: testTag})
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.Path != "" {
		os.RemoveAll(filepath.Dir(built.Path))
	}
	os.Exit(code)
}

func fileSHA(t *testing.T, p string) string {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

// The same source gives the same image: two real builds of the agent give the same digests and a
// byte-identical tarball. The second links again (go build does not cache a linked program) from
// the shared build cache; with ONEHOP_IMAGE_COLD=1 it gets an empty one, so every package is
// compiled again too (minutes on 2 cores, so not by default).
func TestBuildIsReproducible(t *testing.T) {
	first := testImage(t)
	opts := Options{Source: repoRoot(), Out: filepath.Join(t.TempDir(), "b.tar"), Tag: testTag}
	cmd := "go build (build cache shared)"
	if os.Getenv("ONEHOP_IMAGE_COLD") == "1" {
		cache := t.TempDir()
		t.Setenv("GOCACHE", cache)
		cmd = "go build with an empty GOCACHE"
	}
	start := time.Now()
	second, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second build (%s) took %v", cmd, time.Since(start).Round(time.Second))
	t.Logf("digest %s, config %s, layer %s, agent %d bytes", first.Digest, first.ConfigDigest, first.LayerDigest, first.BinaryBytes)
	if first.Digest != second.Digest || first.ConfigDigest != second.ConfigDigest || first.LayerDigest != second.LayerDigest {
		t.Fatalf("two builds of one source differ:\n%+v\n%+v", first, second)
	}
	if a, b := fileSHA(t, first.Path), fileSHA(t, second.Path); a != b {
		t.Errorf("tarballs differ: sha256 %s vs %s", a, b)
	}
}

// The tarball, as go-containerregistry reads it back: one platform, the entrypoint, no
// timestamp of the build's own.
func TestTarballShape(t *testing.T) {
	res := testImage(t)
	img, err := tarball.ImageFromPath(res.Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH || !slices.Equal(cf.Config.Entrypoint, []string{Entrypoint}) {
		t.Errorf("config: os %q arch %q entrypoint %q", cf.OS, cf.Architecture, cf.Config.Entrypoint)
	}
	if want := SourceDate(context.Background(), repoRoot()); !cf.Created.Time.Equal(want) {
		t.Errorf("created %v, want the source's date %v", cf.Created.Time, want)
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(res.Path) })
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{testTag}) || len(m[0].Layers) != 1 {
		t.Errorf("manifest.json: %+v", m)
	}
}

// skopeo (containers/image, what podman uses to load) reads the tarball as a docker-archive.
func TestSkopeoReadsTarball(t *testing.T) {
	if err := RequireTools(map[string]string{"skopeo": "skopeo"}); err != nil {
		t.Fatal(err)
	}
	res := testImage(t)
	out, err := exec.Command("skopeo", "inspect", "docker-archive:"+res.Path).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo inspect: %v\n%s", err, out)
	}
	var info struct {
		Os, Architecture string
		Layers           []string
		RepoTags         []string
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Logf("skopeo inspect: %s", out)
	if info.Os != "linux" || info.Architecture != runtime.GOARCH || len(info.Layers) != 1 {
		t.Errorf("skopeo sees os %q arch %q layers %v", info.Os, info.Architecture, info.Layers)
	}
	out, err = exec.Command("skopeo", "inspect", "--config", "docker-archive:"+res.Path).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo inspect --config: %v\n%s", err, out)
	}
	var cfg struct {
		Config struct{ Entrypoint []string }
	}
	if err := json.Unmarshal(out, &cfg); err != nil || !slices.Equal(cfg.Config.Entrypoint, []string{Entrypoint}) {
		t.Errorf("skopeo's config: %v %s", err, out)
	}
}

// containerd (what kind nodes and the lab's agents run on) imports it, keeps its config and
// layer blobs under our digests, and runs the agent from it.
func TestContainerdImportsAndRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: starts a containerd")
	}
	res := testImage(t)
	ctx := context.Background()
	c, err := StartContainerd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := c.Dir
	// runc's cgroups go with the containers, parents included (unless another test's
	// containerd made that parent first).
	nsCgroup := filepath.Join(c.v2, c.Namespace)
	_, nsBefore := os.Stat(nsCgroup)
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(nsCgroup); err == nil && nsBefore != nil {
			t.Errorf("cgroup %s is still there after Close", nsCgroup)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("containerd's directory %s is still there after Close: %v", dir, err)
		}
		if s := ShimsOf(c.Address); len(s) != 0 {
			t.Errorf("shims left after Close: %v", s)
		}
	})
	if err := c.Import(ctx, res.Path); err != nil {
		t.Fatal(err)
	}
	out, err := c.Ctr(ctx, "images", "list", "--quiet")
	if err != nil || !slices.Contains(strings.Fields(string(out)), testTag) {
		t.Fatalf("images after import: %s %v", out, err)
	}
	out, err = c.Ctr(ctx, "content", "list", "--quiet")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{res.ConfigDigest.String(), res.LayerDigest.String()} {
		if !strings.Contains(string(out), d) {
			t.Errorf("containerd's content store lacks %s:\n%s", d, out)
		}
	}
	// Run it: the agent's usage proves the binary runs on the empty base.
	c.Image = res.Ref
	argv := c.RunArgv(Container{ID: "usage", Args: []string{Entrypoint, "-h"}})
	out, _ = exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if !strings.Contains(string(out), "-node-id") {
		t.Fatalf("%s:\n%s\ncontainerd log:\n%s", strings.Join(argv, " "), out, c.LogTail(2000))
	}
	if ids, err := c.Containers(ctx); err != nil || len(ids) != 0 {
		t.Errorf("containers left after ctr run --rm: %v %v", ids, err)
	}
}

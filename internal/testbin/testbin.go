// Package testbin gives tests the onehop executable that lab pods run their workloads with.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	once sync.Once
	path string
	bErr error
	bOut []byte
)

// Onehop returns the path of an onehop binary, with onehop-agent beside it: $ONEHOP_BIN when set
// (make test builds both once), otherwise both built from this checkout for the test process.
func Onehop(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ONEHOP_BIN"); p != "" {
		return p
	}
	once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		// One shared path, replaced atomically, so parallel test packages neither collide nor
		// leave a copy each behind.
		dir := filepath.Join(os.TempDir(), "onehop-testbin")
		if bErr = os.MkdirAll(dir, 0o755); bErr != nil {
			return
		}
		path = filepath.Join(dir, "onehop")
		tmp := filepath.Join(dir, fmt.Sprintf("build.%d", os.Getpid()))
		defer os.RemoveAll(tmp)
		cmd := exec.Command("go", "build", "-o", tmp+"/", "./cmd/onehop", "./cmd/onehop-agent")
		cmd.Dir = root
		if bOut, bErr = cmd.CombinedOutput(); bErr != nil {
			return
		}
		for _, b := range []string{"onehop", "onehop-agent"} {
			if bErr = os.Rename(filepath.Join(tmp, b), filepath.Join(dir, b)); bErr != nil {
				return
			}
		}
	})
	if bErr != nil {
		t.Fatalf("build onehop: %v\n%s", bErr, bOut)
	}
	return path
}

// RequireRoot skips a test that needs root (CI runs as root, so these tests do run there).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and cgroups")
	}
}

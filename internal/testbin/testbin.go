// Package testbin gives tests the onehop executable that lab pods run their workloads with.
package testbin

import (
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

// Onehop returns the path of an onehop binary: $ONEHOP_BIN when set (make test builds it once),
// otherwise one built from this checkout for the test process.
func Onehop(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ONEHOP_BIN"); p != "" {
		return p
	}
	once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		dir, err := os.MkdirTemp("", "onehop-testbin-")
		if err != nil {
			bErr = err
			return
		}
		path = filepath.Join(dir, "onehop")
		cmd := exec.Command("go", "build", "-o", path, "./cmd/onehop")
		cmd.Dir = root
		bOut, bErr = cmd.CombinedOutput()
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

package enrollment

import (
	"os"
	"os/exec"
	"testing"
)

func TestCookieDistinguishesNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	own, err := Cookie("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Cookie("/proc/self/ns/net")
	if own == 0 || own != again {
		t.Fatalf("own netns cookie %d, again %d: want the same non-zero value", own, again)
	}
	name := "onehop-enrolltest-" + t.Name()[4:12]
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	other, err := Cookie("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	if other == 0 || other == own {
		t.Errorf("netns %s cookie %d, own %d: want a distinct non-zero cookie", name, other, own)
	}
	if _, err := Cookie("/run/netns/onehop-enrolltest-missing"); err == nil {
		t.Error("cookie of a missing namespace: no error")
	}
}

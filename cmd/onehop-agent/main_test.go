package main

import (
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"--node-id", "n1", "--memory-limit", "1GiB"})
	if err != nil || c.memoryLimit != 1<<30 || c.nodeID != "n1" {
		t.Fatalf("got %+v, %v", c, err)
	}
	if c, err = parseFlags([]string{"--node-id", "n1"}); err != nil || c.memoryLimit != 75<<20 {
		t.Fatalf("default memory limit: got %d, %v", c.memoryLimit, err)
	}
	t.Setenv("ONEHOP_MEMORY_LIMIT", "0")
	if c, err = parseFlags([]string{"--node-id", "n1"}); err != nil || c.memoryLimit != 0 {
		t.Fatalf("ONEHOP_MEMORY_LIMIT=0: got %d, %v", c.memoryLimit, err)
	}
	if c, err = parseFlags([]string{"--uninstall", "--bpffs", "/sys/fs/bpf/x"}); err != nil || !c.uninstall || c.bpffs != "/sys/fs/bpf/x" {
		t.Fatalf("--uninstall without --node-id: got %+v, %v", c, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--node-id is required"},
		{[]string{"--uninstall", "--bpffs="}, "--uninstall needs --bpffs"},
		{[]string{"--node-id", "n1", "--memory-limit", "75MB"}, `--memory-limit: "75MB" is not a size`},
		{[]string{"--node-id", "n1", "--memory-limit", "-1"}, `--memory-limit: "-1" is not a size`},
		{[]string{"--node-id", "n1", "--memory-limit", "99999999999GiB"}, "is not a size"},
	} {
		if _, err := parseFlags(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "10B": 10, "4KiB": 4096, "75MiB": 75 << 20, "2GiB": 2 << 30} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}

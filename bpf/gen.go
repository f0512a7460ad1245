// Package bpf holds onehop's kernel programs (onehop.c, map layouts in onehop.h) and the Go
// bindings bpf2go generates for them. The generated files are committed, so building the agent
// needs no clang; `go generate ./bpf` (clang, llvm-strip, libbpf-dev) rebuilds them.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package bpf -target bpfel -type oh_svc_key -type oh_svc -type oh_slot_key -type oh_endpoint -type oh_conn -type oh_sock_key -type oh_redirected Onehop onehop.c -- -I/usr/include/x86_64-linux-gnu -mcpu=v3 -Wall -Werror

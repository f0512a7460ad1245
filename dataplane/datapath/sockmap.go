package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/onehop-mesh/onehop/bpf"
)

// Same-node acceleration (OH_NETNS_SOCKMAP): sockops adds the established sockets of enrolled
// namespaces whose peer is on this node to oh_sockhash, and oh_msg, attached to that map,
// hands each payload straight to the peer socket. The attachment is a bpf_link (Linux 6.10),
// pinned beside the maps like the cgroup links, so a restarted agent switches it to its new
// program in place and redirection never stops:
//
//	<PinDir>/v<LayoutVersion>/sockmap/msg
//
// oh_msg is attached whether or not any namespace asks for it: with no socket in oh_sockhash it
// never runs, so acceleration switched off costs nothing.

// sockmapLinkType is BPF_LINK_TYPE_SOCKMAP.
const sockmapLinkType link.Type = 14

func msgLinkPin(layout string) string { return filepath.Join(layout, "sockmap", "msg") }

// attachMsg attaches oh_msg to oh_sockhash, or, pinned, switches the pinned link to it.
func (d *Datapath) attachMsg() error {
	prog, hash := d.objs.OhMsg, d.objs.OhSockhash
	pin := ""
	if d.pinDir != "" {
		pin = msgLinkPin(layoutDir(d.pinDir, LayoutVersion))
		l, err := link.LoadPinnedLink(pin, nil)
		switch {
		case err == nil:
			info, ierr := l.Info()
			if ierr != nil || info.Type != sockmapLinkType {
				l.Close()
				return d.refuse(pin, "not a sockmap link")
			}
			if err := l.Update(prog); err != nil {
				l.Close()
				return fmt.Errorf("load onehop datapath: switch %s to the new sk_msg program: %w", pin, err)
			}
			d.msgLink = l
			d.adopted.Links = append(d.adopted.Links, "sockmap/msg")
			return nil
		case !errors.Is(err, fs.ErrNotExist):
			return d.refuse(pin, "not a usable BPF link (%v)", err)
		}
	}
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: hash.FD(), Program: prog, Attach: ebpf.AttachSkMsgVerdict})
	if err != nil {
		return fmt.Errorf("attach sk_msg program to %s: %w (same-node acceleration needs bpf_link for sockmap, Linux 6.10)", bpf.OnehopMapOhSockhash, err)
	}
	if pin != "" {
		if err := os.MkdirAll(filepath.Dir(pin), 0o700); err == nil {
			err = l.Pin(pin)
		}
		if err != nil {
			l.Close()
			return fmt.Errorf("pin sk_msg link to %s: %w", pin, err)
		}
	}
	d.msgLink = l
	return nil
}

// SetLocal adds (or, with on false, removes) addresses of this node's pods to oh_local_addrs:
// a connection with a peer there is same-node, and accelerated when its namespace asks for it.
func (d *Datapath) SetLocal(addrs []netip.Addr, on bool) error {
	var errs []error
	for _, a := range addrs {
		key := bpf.OnehopOhEndpoint{Addr: a.As16()}
		var err error
		if on {
			err = d.objs.OhLocalAddrs.Update(key, uint8(1), ebpf.UpdateAny)
		} else if err = d.objs.OhLocalAddrs.Delete(key); errors.Is(err, ebpf.ErrKeyNotExist) {
			err = nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", bpf.OnehopMapOhLocalAddrs, a, err))
		}
	}
	return errors.Join(errs...)
}

// Local lists the addresses in oh_local_addrs.
func (d *Datapath) Local() ([]netip.Addr, error) {
	var (
		out []netip.Addr
		k   bpf.OnehopOhEndpoint
		v   uint8
	)
	it := d.objs.OhLocalAddrs.Iterate()
	for it.Next(&k, &v) {
		out = append(out, netip.AddrFrom16(k.Addr).Unmap())
	}
	return out, it.Err()
}

package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/bpf"
)

// Pinning (Options.PinDir). The agent's kernel state lives in bpffs, so it outlives the agent:
//
//	<PinDir>/v<LayoutVersion>/maps/<map>                      every map, e.g. v2/maps/oh_services
//	<PinDir>/v<LayoutVersion>/links/cgroup-<id>/<program>     a cgroup link, e.g. .../cgroup-1234/connect4
//
// A cgroup is named by its id (the inode of its directory, as bpf_link reports it), not its
// path: a cgroup removed and created again under the same path is another cgroup. bpffs holds
// only pinned objects and directories (and refuses names with dots), so the version is the
// directory name. A migration stages
// the new layout in v<N>-partial and renames it to v<N> once complete, so a crash at any point
// leaves one whole layout to start from.

// LayoutVersion numbers the pinned layout: the pin paths and every map's type, key, value and
// flags (and the size of oh_counters, which follows enum oh_counter). Bump it with any change
// to those and describe the previous layout in olderLayouts, so it is migrated, never misread.
// Version 1 is the layout before struct oh_conn had its state fields; version 2 the one before
// the connect_refused counter; version 4 the one before same-node acceleration (sockmap).
const LayoutVersion = 5

// Adopted is what Load found under Options.PinDir.
type Adopted struct {
	// Layout is the version found: 0 if nothing was pinned (all created and pinned afresh),
	// LayoutVersion if adopted as it was, lower if migrated to LayoutVersion.
	Layout   int
	Links    []string // pinned links switched to this agent's programs, as "cgroup-<id>/<program>"
	Services int      // services in oh_services: still balanced, re-read by the first Apply
	Enrolled []uint64 // enrolled network namespace cookies, read back from oh_enrolled
	Conns    int      // connections in oh_conns
	Notes    []string // anything else done or worth knowing: leftovers removed, sizes kept
}

// Adopted says what Load found pinned and took over.
func (d *Datapath) Adopted() Adopted { return d.adopted }

var layoutDirRE = regexp.MustCompile(`^v([0-9]+)(-partial)?$`)

func layoutDir(pinDir string, version int) string {
	return filepath.Join(pinDir, "v"+strconv.Itoa(version))
}

func linkPin(layout string, cgroupID uint64, p program) string {
	return filepath.Join(layout, "links", fmt.Sprintf("cgroup-%d", cgroupID), p.pin)
}

// ErrNotBPFFS is returned (wrapped) by Load when Options.PinDir is not on a bpffs.
var ErrNotBPFFS = errors.New("not on a bpffs")

// onBPFFS fails unless path is on a bpffs.
func onBPFFS(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return err
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is %w", path, ErrNotBPFFS)
	}
	return nil
}

// preparePinDir creates dir, refusing to create anything anywhere but on a bpffs.
func preparePinDir(dir string) error {
	existing := dir
	for {
		if _, err := os.Stat(existing); err == nil || filepath.Dir(existing) == existing {
			break
		}
		existing = filepath.Dir(existing)
	}
	if err := onBPFFS(existing); err != nil {
		return fmt.Errorf("pin directory %s: %w: mount one (mount -t bpf bpf /sys/fs/bpf) or give an empty pin directory to run unpinned", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pin directory %s: %w", dir, err)
	}
	return nil
}

// refuse is the error for something at one of our pin paths that is not what this agent pins
// there. Nothing has been changed when it is returned.
func (d *Datapath) refuse(path string, format string, args ...any) error {
	return fmt.Errorf("load onehop datapath: %s: %s. It is not what this onehop-agent (pin layout %d) "+
		"would have pinned there, so nothing was changed and what is attached keeps running. "+
		"To start afresh, run `onehop-agent --uninstall --bpffs %s` (detaches onehop's programs: "+
		"services are not balanced until an agent attaches again) or remove %s yourself",
		path, fmt.Sprintf(format, args...), LayoutVersion, d.pinDir, path)
}

// loadPinned loads the programs against the maps under d.pinDir, adopting, migrating or
// creating them, and switches every pinned link to the new programs.
func (d *Datapath) loadPinned(spec *ebpf.CollectionSpec, sized map[string]bool) error {
	if err := preparePinDir(d.pinDir); err != nil {
		return fmt.Errorf("load onehop datapath: %w", err)
	}
	entries, err := os.ReadDir(d.pinDir)
	if err != nil {
		return fmt.Errorf("load onehop datapath: %w", err)
	}
	var complete []int
	var partial []string
	for _, e := range entries {
		m := layoutDirRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue // not ours
		}
		path := filepath.Join(d.pinDir, e.Name())
		v, _ := strconv.Atoi(m[1])
		switch {
		case m[2] != "":
			partial = append(partial, path) // an interrupted migration: the old layout is whole
		case v > LayoutVersion:
			return d.refuse(path, "layout %d was pinned by a newer onehop-agent; this one knows layouts up to %d", v, LayoutVersion)
		case v != LayoutVersion && olderLayouts[v] == nil:
			return d.refuse(path, "layout %d cannot be migrated by this onehop-agent", v)
		default:
			complete = append(complete, v)
		}
	}
	slices.Sort(complete)
	switch {
	case slices.Contains(complete, LayoutVersion):
		d.adopted.Layout = LayoutVersion
		err = d.adopt(spec, sized)
	case len(complete) > 0:
		d.adopted.Layout = complete[len(complete)-1]
		err = d.migrate(spec, sized, d.adopted.Layout, partial)
	default:
		err = d.adopt(spec, sized) // nothing pinned: creates and pins
	}
	if err != nil {
		return err
	}
	// An older layout beside the current one is what a migration interrupted after it completed
	// leaves. Its links are pinned in the current layout too, so unpinning detaches nothing.
	var errs []error
	for _, v := range complete {
		if _, err := os.Stat(layoutDir(d.pinDir, v)); v != LayoutVersion && err == nil {
			errs = append(errs, removeTree(layoutDir(d.pinDir, v), false, nil))
			d.note("removed layout %d, left beside layout %d", v, LayoutVersion)
		}
	}
	for _, p := range partial {
		if _, err := os.Stat(p); err == nil {
			errs = append(errs, removeTree(p, false, nil))
			d.note("removed %s, left by an interrupted migration", p)
		}
	}
	if err := errors.Join(errs...); err != nil {
		d.note("cleaning up leftovers: %v", err)
	}
	return nil
}

func (d *Datapath) note(format string, args ...any) {
	d.adopted.Notes = append(d.adopted.Notes, fmt.Sprintf(format, args...))
}

// adopt loads the programs against the maps pinned in the current layout, creating and pinning
// the missing ones, and switches its pinned links to the new programs.
func (d *Datapath) adopt(spec *ebpf.CollectionSpec, sized map[string]bool) error {
	dir := layoutDir(d.pinDir, LayoutVersion)
	pinned := map[string]*ebpf.Map{}
	defer closeMaps(pinned) // the collection holds clones
	for name, ms := range spec.Maps {
		if internalMap(name) {
			continue
		}
		m, err := d.openPinnedMap(filepath.Join(dir, "maps", name), ms, sized[name])
		if err != nil {
			return err
		}
		if m != nil {
			pinned[name] = m
		}
		ms.Pinning = ebpf.PinByName // the missing ones are created and pinned
	}
	links, err := d.openPinnedLinks(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "maps"), 0o700); err != nil {
		closeLinks(links)
		return fmt.Errorf("load onehop datapath: %w", err)
	}
	err = d.load(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: filepath.Join(dir, "maps")}, MapReplacements: pinned})
	if err != nil {
		closeLinks(links)
		return err
	}
	if err := d.switchLinks(links); err != nil {
		d.Close()
		return err
	}
	return nil
}

// openPinnedMap opens the map pinned at path, if any (nil, nil if none), and checks it is one
// spec describes. A map sized by Options keeps its pinned size: spec takes it.
func (d *Datapath) openPinnedMap(path string, spec *ebpf.MapSpec, sized bool) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, d.refuse(path, "not a usable BPF map (%v)", err)
	}
	want := spec.Copy()
	if sized {
		want.MaxEntries = m.MaxEntries()
	}
	if err := want.Compatible(m); err != nil {
		m.Close()
		return nil, d.refuse(path, "the pinned map differs (%v)", err)
	}
	if spec.MaxEntries != want.MaxEntries {
		d.note("%s keeps its pinned size of %d entries (asked: %d); sizes change with a fresh install", spec.Name, want.MaxEntries, spec.MaxEntries)
		spec.MaxEntries = want.MaxEntries
	}
	return m, nil
}

func closeMaps(ms map[string]*ebpf.Map) {
	for _, m := range ms {
		m.Close()
	}
}

// openPinnedLinks opens every link pinned under layout/links and checks each is a cgroup link of
// the attach type its name says, on the cgroup its directory names. A link whose cgroup is gone
// (the kernel reports cgroup id 0) is returned with cgroupID 0, for switchLinks to drop.
func (d *Datapath) openPinnedLinks(layout string) ([]attachment, error) {
	dir := filepath.Join(layout, "links")
	cgroups, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load onehop datapath: %w", err)
	}
	var out []attachment
	fail := func(err error) ([]attachment, error) {
		closeLinks(out)
		return nil, err
	}
	for _, cg := range cgroups {
		cgDir := filepath.Join(dir, cg.Name())
		id, err := strconv.ParseUint(strings.TrimPrefix(cg.Name(), "cgroup-"), 10, 64)
		if !cg.IsDir() || !strings.HasPrefix(cg.Name(), "cgroup-") || err != nil {
			return fail(d.refuse(cgDir, "expected a directory cgroup-<id>"))
		}
		files, err := os.ReadDir(cgDir)
		if err != nil {
			return fail(fmt.Errorf("load onehop datapath: %w", err))
		}
		for _, f := range files {
			path := filepath.Join(cgDir, f.Name())
			i := slices.IndexFunc(programs, func(p program) bool { return p.pin == f.Name() })
			if i < 0 {
				return fail(d.refuse(path, "no onehop program is called %q", f.Name()))
			}
			p := programs[i]
			l, err := link.LoadPinnedLink(path, nil)
			if err != nil {
				return fail(d.refuse(path, "not a usable BPF link (%v)", err))
			}
			a := attachment{cgroup: fmt.Sprintf("cgroup %d", id), cgroupID: id, prog: p, link: l, pin: path}
			info, err := l.Info()
			if err != nil || info.Cgroup() == nil {
				l.Close()
				return fail(d.refuse(path, "not a cgroup link"))
			}
			switch cgi := info.Cgroup(); {
			case ebpf.AttachType(cgi.AttachType) != p.attach:
				l.Close()
				return fail(d.refuse(path, "the link attaches as %s, not %s", ebpf.AttachType(cgi.AttachType), p.attach))
			case cgi.CgroupId == 0:
				a.cgroupID = 0
			case cgi.CgroupId != id:
				l.Close()
				return fail(d.refuse(path, "the link is attached to cgroup %d, not %d", cgi.CgroupId, id))
			}
			out = append(out, a)
		}
	}
	return out, nil
}

func closeLinks(as []attachment) {
	for _, a := range as {
		a.link.Close()
	}
}

// switchLinks replaces the program of every link with the new one, atomically for each
// (bpf_link_update): connections are handled by the old program or the new, never by none.
// Links whose cgroup is gone are unpinned instead. On error, links are closed, not detached.
func (d *Datapath) switchLinks(links []attachment) error {
	for i, a := range links {
		var err error = unix.ENOLINK
		if a.cgroupID != 0 {
			err = a.link.Update(a.prog.get(&d.objs.OnehopPrograms))
		}
		switch {
		case errors.Is(err, unix.ENOLINK):
			d.note("unpinned %s: its cgroup is gone", a.pin)
			unpinClose(a)
		case err != nil:
			closeLinks(links[i:])
			return fmt.Errorf("load onehop datapath: switch %s to the new %s program: %w", a.pin, a.prog.section, err)
		default:
			d.links = append(d.links, a)
			d.adopted.Links = append(d.adopted.Links, fmt.Sprintf("cgroup-%d/%s", a.cgroupID, a.prog.pin))
		}
	}
	return nil
}

// adoptedLink returns the index in d.links of the pinned link of p to cgroup id, or -1.
func (d *Datapath) adoptedLink(cgroupID uint64, p program) int {
	if cgroupID == 0 {
		return -1
	}
	return slices.IndexFunc(d.links, func(a attachment) bool { return a.cgroupID == cgroupID && a.prog.pin == p.pin })
}

// pinLink pins a new link in the current layout.
func (d *Datapath) pinLink(a *attachment) error {
	a.pin = linkPin(layoutDir(d.pinDir, LayoutVersion), a.cgroupID, a.prog)
	if err := os.MkdirAll(filepath.Dir(a.pin), 0o700); err != nil {
		return fmt.Errorf("pin %s link: %w", a.prog.section, err)
	}
	if err := a.link.Pin(a.pin); err != nil {
		hint := ""
		if errors.Is(err, ebpf.ErrNotSupported) {
			hint = " (pinning needs bpf_link for cgroups, Linux 5.7; give an empty pin directory to run unpinned)"
		}
		return fmt.Errorf("pin %s link to %s: %w%s", a.prog.section, a.pin, err, hint)
	}
	return nil
}

// unpinClose removes a link's pin and closes it: unless another process holds it, it is gone.
func unpinClose(a attachment) error {
	err := os.Remove(a.pin)
	a.link.Close()
	os.Remove(filepath.Dir(a.pin)) // the cgroup's directory, if that was its last link
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unpin %s: %w", a.pin, err)
	}
	return nil
}

// cgroupIDOf returns the id of the cgroup v2 directory at path: its inode number.
func cgroupIDOf(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// adoptedContents fills in d.adopted from the maps.
func (d *Datapath) adoptedContents() error {
	var err error
	if d.adopted.Enrolled, err = d.Enrollment.Enrolled(); err != nil {
		return err
	}
	count := func(m *ebpf.Map) (n int, err error) {
		var k, v []byte
		it := m.Iterate()
		for it.Next(&k, &v) {
			n++
		}
		return n, it.Err()
	}
	if d.adopted.Services, err = count(d.objs.OhServices); err != nil {
		return fmt.Errorf("read %s: %w", bpf.OnehopMapOhServices, err)
	}
	if d.adopted.Conns, err = count(d.objs.OhConns); err != nil {
		return fmt.Errorf("read %s: %w", bpf.OnehopMapOhConns, err)
	}
	return nil
}

// Uninstall detaches the programs from every cgroup and frees programs and maps; when pinning,
// it then removes every pin (see the package function Uninstall).
func (d *Datapath) Uninstall() error {
	err := d.Close()
	if d.pinDir == "" {
		return err
	}
	_, uerr := Uninstall(d.pinDir)
	return errors.Join(err, uerr)
}

// Uninstalled says what Uninstall removed.
type Uninstalled struct {
	Links int // links detached
	Pins  int // pins removed, links and maps (directories are not counted)
}

// Uninstall undoes what agents pinned under pinDir, whatever their layout version: every pinned
// link is detached (even if a running agent holds it), and every pin and directory of every
// layout (v<N>, v<N>-partial) is removed, then pinDir if that leaves it empty. Anything else in
// pinDir is left alone, and nothing outside bpffs is touched. It needs no loaded Datapath, so it
// also clears a layout Load refuses.
func Uninstall(pinDir string) (Uninstalled, error) {
	var u Uninstalled
	entries, err := os.ReadDir(pinDir)
	if errors.Is(err, fs.ErrNotExist) {
		return u, nil
	}
	if err != nil {
		return u, fmt.Errorf("uninstall: %w", err)
	}
	if err := onBPFFS(pinDir); err != nil {
		return u, fmt.Errorf("uninstall: %w: nothing there was pinned by onehop", err)
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() && layoutDirRE.MatchString(e.Name()) {
			errs = append(errs, removeTree(filepath.Join(pinDir, e.Name()), true, &u))
		}
	}
	os.Remove(pinDir) // only if empty: it may hold what is not ours, or be a mount point
	if err := errors.Join(errs...); err != nil {
		return u, fmt.Errorf("uninstall: %w", err)
	}
	return u, nil
}

// removeTree removes the pins under dir and its directories, dir included. With detach, each
// pinned link is detached first: unpinning alone leaves it attached while any process holds it.
// It never leaves bpffs (a mount on a directory there) and never follows symlinks.
func removeTree(dir string, detach bool, u *Uninstalled) error {
	if u == nil {
		u = &Uninstalled{}
	}
	if err := onBPFFS(dir); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if e.IsDir() {
			errs = append(errs, removeTree(path, detach, u))
			continue
		}
		if detach && e.Type().IsRegular() {
			if l, err := link.LoadPinnedLink(path, nil); err == nil { // else: a map, or not ours
				if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
					errs = append(errs, fmt.Errorf("detach %s: %w", path, err))
				} else {
					u.Links++
				}
				l.Close()
			}
		}
		if err := os.Remove(path); err != nil {
			errs = append(errs, err)
		} else {
			u.Pins++
		}
	}
	if err := os.Remove(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// AttachedPrograms lists the names of onehop's programs (oh_*) attached to the cgroup at path,
// by whoever attached them: after Uninstall, any left are held by a running unpinned agent.
func AttachedPrograms(cgroupPath string) ([]string, error) {
	f, err := os.Open(cgroupPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	for _, p := range programs {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: p.attach})
		if err != nil {
			return nil, fmt.Errorf("query %s programs of %s: %w", p.attach, cgroupPath, err)
		}
		for _, ap := range res.Programs {
			prog, err := ebpf.NewProgramFromID(ap.ID)
			if err != nil {
				continue // gone meanwhile
			}
			info, err := prog.Info()
			prog.Close()
			if err == nil && strings.HasPrefix(info.Name, "oh_") {
				out = append(out, info.Name)
			}
		}
	}
	return out, nil
}

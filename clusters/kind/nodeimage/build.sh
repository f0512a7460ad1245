#!/usr/bin/env bash
# Builds a kind (sigs.k8s.io/kind v0.33.0) node image for Kubernetes v1.37.2 OFFLINE, on a machine
# with no container registry: only the Go module proxy and Debian's apt mirror. See FINDINGS.md.
#
# Prerequisites (root):
#   - apt-get install debootstrap docker.io   (Debian bookworm)
#   - a running dockerd whose default runtime is the runc wrapper (runcwrap/, which strips
#     capabilities the machine's bounding set lacks, e.g. CAP_SYS_RESOURCE); DOCKER_HOST set to
#     it: `./lab.sh start` does that under $LAB (and `./lab.sh clean` removes it all again).
#   - Kubernetes binaries built by internal/kubetest (make kube-bins / NodeBinaries):
#       $KUBE_BIN/{kube-apiserver,etcd}  $NODE_BIN/{kubelet,kube-controller-manager,kube-scheduler,kube-proxy,kubectl}
#   - kubeadm built from the same wrapper module (this script builds it into $LAB/bin if absent),
#     coredns (go install github.com/coredns/coredns@v1.14.6, CGO_ENABLED=0), kind CLI.
# Idempotent: every artefact that exists is reused; delete it to rebuild.
# Result: docker image $NODE_IMAGE (default onehop.local/kind-node:v1.37.2) in that dockerd.
# Measured: about 3 minutes from an empty $LAB with warm Go caches (debootstrap is most of it).
# Then:
#   eval "$(./lab.sh env)"
#   kind create cluster --image onehop.local/kind-node:v1.37.2 --name ohkind --config kind-config.yaml
# Steps can be run alone: ./build.sh customize base_image (tools rootfs customize images base_image node_image).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
LAB=${LAB:-/var/tmp/onehop-kindlab}
KVER=${KVER:-v1.37.2}
KUBE_BIN=${KUBE_BIN:-/root/.cache/onehop/kube-v1.37.2-etcd-v3.7.0/bin}
KUBE_SRC=${KUBE_SRC:-/root/.cache/onehop/kube-v1.37.2-etcd-v3.7.0/src}
NODE_BIN=${NODE_BIN:-/root/.cache/onehop/kube-node-v1.37.2/bin}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.6}
KIND_VERSION=${KIND_VERSION:-v0.33.0}
BASE_IMAGE=${BASE_IMAGE:-onehop.local/kind-base:bookworm}
NODE_IMAGE=${NODE_IMAGE:-onehop.local/kind-node:$KVER}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-/usr/bin/docker} # Debian's docker.io client, matching its daemon
export DOCKER_HOST=${DOCKER_HOST:-unix://$LAB/docker/docker.sock}
export GOWORK=off CGO_ENABLED=0
BIN=$LAB/bin
ROOTFS=$LAB/rootfs
IMAGES=$LAB/images
mkdir -p "$BIN" "$IMAGES"

log() { echo "== $*" >&2; }

kind_dir() { go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'; }

ldflags() {
  local minor=${KVER#v1.}; minor=${minor%%.*}; local f="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f="$f -X $p.gitVersion=$KVER -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$f"
}

step_tools() {
  if [[ ! -x $BIN/kubeadm ]]; then
    log "building kubeadm $KVER from the wrapper module of internal/kubetest (a copy of $KUBE_SRC)"
    mkdir -p "$LAB/kadm" && cp "$KUBE_SRC"/go.mod "$KUBE_SRC"/go.sum "$LAB/kadm/"
    (cd "$LAB/kadm" && GOFLAGS=-mod=mod go build -o "$BIN/" -ldflags="$(ldflags)" k8s.io/kubernetes/cmd/kubeadm)
  fi
  [[ -x $BIN/kind ]] || GOBIN=$BIN go install "sigs.k8s.io/kind@$KIND_VERSION"
  [[ -x $BIN/coredns ]] || GOBIN=$BIN go install -ldflags='-s -w' "github.com/coredns/coredns@$COREDNS_VERSION"
  [[ -x $BIN/runcwrap ]] || (cd "$REPO" && go build -o "$BIN/runcwrap" ./clusters/kind/nodeimage/runcwrap)
  [[ -x $BIN/pause ]] || (cd "$REPO" && go build -trimpath -ldflags='-s -w' -o "$BIN/pause" ./cmd/onehop-pause)
}

step_rootfs() {
  [[ -f $ROOTFS/.onehop-debootstrap-done ]] && return
  log "debootstrap bookworm into $ROOTFS"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase \
    --include=systemd,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins,socat,iputils-ping,less \
    bookworm "$ROOTFS" "$MIRROR"
  touch "$ROOTFS/.onehop-debootstrap-done"
}

# step_customize applies what kind's images/base/Dockerfile does, with Debian's containerd 1.6,
# runc 1.1 and CNI plugins 1.1 instead of kind's own builds, plus this machine's workarounds.
step_customize() {
  local K R=$ROOTFS
  K=$(kind_dir)/images/base/files
  log "customizing $R from $K"
  install -m 0755 "$K"/usr/local/bin/* "$R/usr/local/bin/"
  mkdir -p "$R/kind/bin" "$R/LICENSES"
  cp -r "$K"/kind/. "$R/kind/"; chmod 0755 "$R/kind" "$R/kind/bin" "$R"/kind/bin/*
  install -m 0644 "$K"/etc/crictl.yaml "$R/etc/"
  install -m 0644 "$K"/etc/default/kubelet "$R/etc/default/"
  mkdir -p "$R/etc/containerd" "$R/etc/sysctl.d" "$R/etc/systemd/system/kubelet.service.d"
  install -m 0644 "$K"/etc/sysctl.d/* "$R/etc/sysctl.d/"
  install -m 0644 "$K"/etc/systemd/system/*.service "$K"/etc/systemd/system/*.slice "$R/etc/systemd/system/"
  install -m 0644 "$K"/etc/systemd/system/kubelet.service.d/* "$R/etc/systemd/system/kubelet.service.d/"
  # containerd: kind's config, with restrict_oom_score_adj (lowering oom_score_adj is denied
  # here) and the runc wrapper as runc's binary (pods asking for CAP_SYS_RESOURCE, e.g.
  # privileged kube-proxy, would fail "unable to apply caps" like the node container itself).
  sed -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
      -e '/containerd.runtimes.runc.options\]/a\    BinaryName = "/usr/local/sbin/runcwrap"' \
      -e '/containerd.runtimes.test-handler.options\]/a\    BinaryName = "/usr/local/sbin/runcwrap"' \
      "$K/etc/containerd/config.toml" > "$R/etc/containerd/config.toml"
  install -m 0755 "$BIN/runcwrap" "$R/usr/local/sbin/runcwrap"
  ln -sf /usr/bin/containerd "$R/usr/local/bin/containerd"
  # CNI plugins: Debian installs them in /usr/lib/cni; containerd's default bin dir is /opt/cni/bin.
  mkdir -p "$R/opt/cni"; rm -rf "$R/opt/cni/bin"; ln -s /usr/lib/cni "$R/opt/cni/bin"
  cp -r "$HERE"/files/. "$R/"
  # the base image's cleanup of systemd units
  find "$R/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$R"/lib/systemd/system/multi-user.target.wants/* "$R"/etc/systemd/system/*.wants/* \
        "$R"/lib/systemd/system/local-fs.target.wants/* "$R"/lib/systemd/system/sockets.target.wants/*udev* \
        "$R"/lib/systemd/system/sockets.target.wants/*initctl* "$R"/lib/systemd/system/basic.target.wants/*
  grep -q '^ReadKMsg=no' "$R/etc/systemd/journald.conf" || echo "ReadKMsg=no" >> "$R/etc/systemd/journald.conf"
  ln -sf /usr/lib/systemd/systemd "$R/sbin/init"
  systemctl --root="$R" enable kubelet.service containerd.service undo-mount-hacks.service
  systemctl --root="$R" mask systemd-binfmt.service
  mkdir -p "$R/etc/kubernetes/manifests"
  # Kubernetes node binaries and version
  install -m 0755 "$NODE_BIN/kubelet" "$NODE_BIN/kubectl" "$BIN/kubeadm" "$R/usr/bin/"
  echo -n "$KVER" > "$R/kind/version"
  # containerd's base runtime spec, as the Dockerfile makes it (ctr oci spec needs no daemon)
  chroot "$R" ctr oci spec \
    | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
    | jq 'del(.process.rlimits)' > "$R/etc/containerd/cri-base.json"
  rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/*
}

step_images() {
  log "image tarballs for the control plane, etcd, pause, coredns, kube-proxy into $IMAGES"
  [[ -f $LAB/proxy-base.tar ]] || tar -C "$ROOTFS" --exclude=./.onehop-debootstrap-done --numeric-owner -cf "$LAB/proxy-base.tar" \
    --exclude=./usr/bin/kubelet --exclude=./usr/bin/kubeadm --exclude=./usr/bin/kubectl .
  (cd "$REPO" && go run ./clusters/kind/nodeimage -out "$IMAGES" -kube-bin "$KUBE_BIN" -node-bin "$NODE_BIN" \
     -coredns "$BIN/coredns" -pause "$BIN/pause" -proxy-base "$LAB/proxy-base.tar")
}

# (docker 20.10 import rejects "STOPSIGNAL" as a change: kind removes nodes with docker rm -f, so it is left out.)
step_base_image() {
  if $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return; fi
  log "docker import $ROOTFS as $BASE_IMAGE"
  tar -C "$ROOTFS" --numeric-owner --exclude=./.onehop-debootstrap-done -c . | $DOCKER import \
    --change 'ENV container=docker' \
    --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' - "$BASE_IMAGE"
}

# step_node_image preloads the image tarballs into the node's containerd, as kind's
# pkg/build/nodeimage does: a build container runs containerd, `ctr images import` each
# tarball, then docker commit.
step_node_image() {
  if $DOCKER image inspect "$NODE_IMAGE" >/dev/null 2>&1; then return; fi
  local id=onehop-kind-build-$$
  log "preloading images in build container $id"
  $DOCKER rm -f "$id" >/dev/null 2>&1 || true
  $DOCKER run -d --name "$id" --privileged --security-opt seccomp=unconfined --entrypoint sleep "$BASE_IMAGE" infinity >/dev/null
  trap "$DOCKER rm -f -v $id >/dev/null 2>&1 || true" EXIT # (a RETURN trap does not run when set -e exits)
  $DOCKER exec "$id" bash -c 'nohup containerd > /var/log/containerd-build.log 2>&1 &'
  $DOCKER exec "$id" bash -c 'for i in $(seq 30); do [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1 && exit 0; sleep 1; done; cat /var/log/containerd-build.log; exit 1'
  local t
  for t in "$IMAGES"/*.tar; do
    $DOCKER exec -i "$id" ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
      --all-platforms --no-unpack --digests - < "$t"
  done
  $DOCKER exec "$id" ctr --namespace=k8s.io images list -q
  # (sleep is PID 1 and reaps nothing: a stopped containerd stays a zombie, so wait for that.)
  $DOCKER exec "$id" bash -c 'pkill containerd; for i in $(seq 20); do ps -C containerd -o stat= | grep -qv Z || exit 0; sleep 0.5; done; exit 1'
  $DOCKER exec "$id" rm -f /var/log/containerd-build.log
  $DOCKER commit \
    --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
    --change 'ENV HTTP_PROXY="" HTTPS_PROXY="" NO_PROXY=""' \
    "$id" "$NODE_IMAGE" >/dev/null
  $DOCKER rm -f -v "$id" >/dev/null; trap - EXIT
  log "built $NODE_IMAGE"
}

steps=${*:-tools rootfs customize images base_image node_image}
for s in $steps; do "step_$s"; done

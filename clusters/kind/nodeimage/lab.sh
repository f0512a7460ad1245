#!/usr/bin/env bash
# A dockerd of the lab's own for kind, everything under $LAB (default /var/tmp/onehop-kindlab),
# and its removal. See FINDINGS.md.
#
#   lab.sh start   record the host's state (first time), start dockerd with the runc wrapper
#                  as default runtime, "ip-forward": false (else it turns ip_forward on and sets
#                  the FORWARD policy to DROP), data-root/exec-root/pidfile/socket under $LAB
#   lab.sh env     print the exports for docker/kind/kubectl against it
#   lab.sh stop    kind clusters deleted, dockerd (and its containerd) stopped
#   lab.sh clean   stop, then remove what dockerd added to the host: rules mentioning DOCKER,
#                  docker0 or a br-<id> bridge and the DOCKER chains (iptables and ip6tables),
#                  docker0 and br-* links, ip_forward back to its recorded value, mounts under
#                  $LAB, an empty /lib/modules that was not there before (kind bind-mounts it
#                  and docker creates a missing source), /etc/docker (key.json) and /run/docker
#                  when they were not there before, and $LAB itself.
# Packages (docker.io, debootstrap) are left installed; FINDINGS.md says how to purge them.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
LAB=${LAB:-/var/tmp/onehop-kindlab}
SOCK=$LAB/docker/docker.sock
DOCKER="/usr/bin/docker -H unix://$SOCK"

log() { echo "== $*" >&2; }

record() {
  [[ -d $LAB/before ]] && return
  mkdir -p "$LAB/before"
  ip -o link > "$LAB/before/link.txt"
  iptables-save > "$LAB/before/iptables.txt"
  ip6tables-save > "$LAB/before/ip6tables.txt"
  cat /proc/mounts > "$LAB/before/mounts.txt"
  sysctl -n net.ipv4.ip_forward > "$LAB/before/ip_forward"
  if [[ -e /lib/modules ]]; then touch "$LAB/before/lib-modules-existed"; fi
  if [[ -e /etc/docker ]]; then touch "$LAB/before/etc-docker-existed"; fi
  if [[ -e /run/docker ]]; then touch "$LAB/before/run-docker-existed"; fi
}

start() {
  command -v dockerd >/dev/null || { echo "dockerd missing: apt-get install --no-install-recommends docker.io" >&2; exit 1; }
  record
  mkdir -p "$LAB/bin" "$LAB/docker/data" "$LAB/docker/exec"
  [[ -x $LAB/bin/runcwrap ]] || (cd "$REPO" && GOWORK=off CGO_ENABLED=0 go build -o "$LAB/bin/runcwrap" ./clusters/kind/nodeimage/runcwrap)
  cat > "$LAB/docker/daemon.json" <<EOF
{
  "data-root": "$LAB/docker/data",
  "exec-root": "$LAB/docker/exec",
  "pidfile": "$LAB/docker/dockerd.pid",
  "hosts": ["unix://$SOCK"],
  "runtimes": {"runcwrap": {"path": "$LAB/bin/runcwrap"}},
  "default-runtime": "runcwrap",
  "storage-driver": "overlay2",
  "bip": "172.31.250.1/24",
  "ip-forward": false
}
EOF
  if [[ -S $SOCK ]] && $DOCKER version >/dev/null 2>&1; then log "dockerd already running"; return; fi
  # exec: no shell stays behind holding the caller's stdout (a pipe would never close).
  (cd "$LAB/docker" && exec nohup /usr/sbin/dockerd --config-file "$LAB/docker/daemon.json" >> "$LAB/docker/dockerd.log" 2>&1 < /dev/null) &
  for _ in $(seq 30); do $DOCKER version >/dev/null 2>&1 && { log "dockerd up: $SOCK"; return; }; sleep 1; done
  tail -20 "$LAB/docker/dockerd.log" >&2; exit 1
}

env_() {
  echo "export DOCKER_HOST=unix://$SOCK PATH=/usr/bin:$LAB/bin:\$PATH KUBECONFIG=$LAB/kubeconfig"
}

stop() {
  if [[ -S $SOCK ]] && $DOCKER version >/dev/null 2>&1; then
    if [[ -x $LAB/bin/kind ]]; then
      local c
      for c in $(DOCKER_HOST=unix://$SOCK PATH=/usr/bin:$PATH "$LAB/bin/kind" get clusters 2>/dev/null); do
        DOCKER_HOST=unix://$SOCK PATH=/usr/bin:$PATH "$LAB/bin/kind" delete cluster --name "$c"
      done
    fi
    local ids; ids=$($DOCKER ps -aq)
    [[ -z $ids ]] || $DOCKER rm -f -v $ids >/dev/null
  fi
  if [[ -f $LAB/docker/dockerd.pid ]]; then
    local pid; pid=$(cat "$LAB/docker/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
  fi
  # dockerd's own containerd exits with it; wait for it (its config is under $LAB)
  for _ in $(seq 20); do pgrep -f "containerd --config $LAB/docker/exec/" >/dev/null || break; sleep 1; done
  log "dockerd stopped"
}

clean_rules() { # $1: iptables or ip6tables
  local ipt=$1 table line chain
  for table in filter nat; do
    # rules in the built-in chains that mention docker
    $ipt -t "$table" -S | grep -E '^-A (INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) ' \
      | grep -E 'DOCKER|docker0|br-[0-9a-f]{12}' | sed 's/^-A /-D /' | while read -r line; do
        eval "$ipt -t $table $line"
      done || true # (no rule at all: grep fails the pipeline)
    for chain in $($ipt -t "$table" -S | sed -n 's/^-N \(DOCKER[A-Z0-9-]*\)$/\1/p'); do $ipt -t "$table" -F "$chain"; done
    for chain in $($ipt -t "$table" -S | sed -n 's/^-N \(DOCKER[A-Z0-9-]*\)$/\1/p'); do $ipt -t "$table" -X "$chain"; done
  done
}

# drop_empty_tables: iptables-nft leaves the tables dockerd made (ip filter, ip nat) behind,
# empty; when the host had no tables at all before, delete them (needs nft: the host's, or the
# node rootfs's through chroot).
drop_empty_tables() {
  [[ -f $LAB/before/iptables.txt && ! -s $LAB/before/iptables.txt ]] || return 0
  local nft=(nft) t
  command -v nft >/dev/null || { [[ -x $LAB/rootfs/usr/sbin/nft ]] && nft=(chroot "$LAB/rootfs" nft); } || return 0
  for t in filter nat; do
    if [[ $(iptables -t $t -S | grep -cv '^-P ') == 0 ]]; then "${nft[@]}" delete table ip $t 2>/dev/null || true; fi
  done
}

clean() {
  stop
  clean_rules iptables
  clean_rules ip6tables
  drop_empty_tables
  local l
  for l in $(ip -o link | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^(docker0|br-[0-9a-f]{12})$'); do
    grep -q ": $l[:@]" "$LAB/before/link.txt" 2>/dev/null || ip link del "$l"
  done
  [[ -f $LAB/before/ip_forward ]] && sysctl -qw net.ipv4.ip_forward="$(cat "$LAB/before/ip_forward")"
  local m
  for m in $(awk -v p="$LAB" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r); do umount -l "$m" || true; done
  if [[ -d $LAB/before && ! -e $LAB/before/lib-modules-existed && -d /lib/modules ]]; then rmdir /lib/modules || true; fi
  # dockerd 20.10 writes /etc/docker/key.json and makes /run/docker/plugins whatever its roots are
  # (docker.io's package may have made /etc/docker just before the record: key.json is ours if
  # it is newer than the record, and the directory goes with it when nothing else is there)
  if [[ -d $LAB/before && ! -e $LAB/before/etc-docker-existed ]]; then rm -rf /etc/docker
  elif [[ -d $LAB/before && /etc/docker/key.json -nt $LAB/before/link.txt ]]; then
    rm -f /etc/docker/key.json; rmdir /etc/docker 2>/dev/null || true
  fi
  if [[ -d $LAB/before && ! -e $LAB/before/run-docker-existed ]]; then rm -rf /run/docker; fi
  rm -rf "$LAB"
  log "removed $LAB"
}

case ${1:-} in
  start) start ;;
  env) env_ ;;
  stop) stop ;;
  clean) clean ;;
  *) echo "usage: $0 start|env|stop|clean" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Installs what the cluster's tests and build need from Debian 12 (etcd, etcdctl, PostgreSQL 15,
# protoc for etcd-client's build, and `ip` + `nft` for the tests that cut a node off the network
# with namespaces and nftables), only what is missing, and prints `export` lines to eval:
#   eval "$(bash scripts/cluster-deps.sh)"
# Progress goes to stderr; stdout carries only the export lines.
# The tests start their own etcd and PostgreSQL in temporary folders on free loopback ports, so a
# system PostgreSQL cluster or etcd service that an install starts is stopped here: nothing the
# tests need, and it would hold the well-known ports and memory for nothing.
set -euo pipefail

log() { printf 'cluster-deps: %s\n' "$*" >&2; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# libprotobuf-dev carries google/protobuf/*.proto, which etcd-client's protos import.
# iproute2 (`ip netns`, veth) and nftables (`nft`) serve only the network-partition tests, which
# need root anyway: without root they are not required here (those tests then say they skip).
packages=(etcd-server etcd-client postgresql protobuf-compiler libprotobuf-dev iproute2 nftables)
netns_packages=" iproute2 nftables "
missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" -ne 0 ]; then
  required=()
  for p in "${missing[@]}"; do
    case "$netns_packages" in
      *" $p "*) ;;
      *) required+=("$p") ;;
    esac
  done
  if [ "${#required[@]}" -gt 0 ]; then
    log "missing Debian packages: ${missing[*]}; run this script as root (or: sudo apt-get install ${missing[*]})"
    exit 1
  fi
  log "not root: the network-partition tests will skip; they need root and: ${missing[*]}"
  missing=()
fi

if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  # Installing may have started system services (where init scripts may run): stop them. Only
  # the ones this run installed, so a developer's own database on this machine is left alone.
  for p in "${missing[@]}"; do
    case "$p" in
      postgresql)
        if command -v pg_lsclusters >/dev/null; then
          pg_lsclusters --no-header 2>/dev/null | while read -r ver name _port status _rest; do
            if [ "$status" = online ]; then
              log "stopping the system PostgreSQL cluster $ver/$name started by the install"
              pg_ctlcluster "$ver" "$name" stop >&2 || true
            fi
          done
        fi
        ;;
      etcd-server)
        if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
          systemctl stop etcd >&2 2>/dev/null || true
          systemctl disable etcd >&2 2>/dev/null || true
        elif [ -x /etc/init.d/etcd ]; then
          /etc/init.d/etcd stop >&2 2>/dev/null || true
        fi
        ;;
    esac
  done
else
  log "all present: ${packages[*]}"
fi

# PostgreSQL's server binaries are not on PATH in Debian: they live per major version. Prefer 15,
# the version the project targets; the newest other one otherwise.
pg_bin=/usr/lib/postgresql/15/bin
if [ ! -x "$pg_bin/initdb" ]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
fi
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ] || [ ! -x "$pg_bin/pg_ctl" ]; then
  log "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
  exit 1
fi
# A pg_ctl earlier on PATH (some images link one into /usr/local/bin) is not what the tests use.
if other=$(command -v pg_ctl 2>/dev/null); then
  log "note: pg_ctl on PATH is $other -> $(readlink -f "$other"); the tests use $pg_bin"
fi

etcd_bin=$(command -v etcd || true)
etcdctl_bin=$(command -v etcdctl || true)
protoc_bin=$(command -v protoc || true)
for pair in "etcd:$etcd_bin" "etcdctl:$etcdctl_bin" "protoc:$protoc_bin"; do
  if [ -z "${pair#*:}" ]; then
    log "${pair%%:*} not found on PATH after the install"
    exit 1
  fi
done

# The partition tests look for `nft` here when the variable is set (root's PATH has /usr/sbin,
# a user's may not).
nft_bin=$(command -v nft || true)
if [ -z "$nft_bin" ] && [ -x /usr/sbin/nft ]; then
  nft_bin=/usr/sbin/nft
fi

log "etcd:     $etcd_bin ($("$etcd_bin" --version 2>/dev/null | head -n 1))"
log "etcdctl:  $etcdctl_bin"
log "postgres: $pg_bin ($("$pg_bin/postgres" --version))"
log "protoc:   $protoc_bin ($("$protoc_bin" --version))"
if [ -n "$nft_bin" ]; then
  log "nft:      $nft_bin ($("$nft_bin" --version 2>/dev/null || true))"
  printf 'export PRESENCE_NFT_BIN=%q\n' "$nft_bin"
else
  log "nft:      not installed (the network-partition tests will skip)"
fi

printf 'export PROTOC=%q\n' "$protoc_bin"
printf 'export PRESENCE_ETCD_BIN=%q\n' "$etcd_bin"
printf 'export PRESENCE_ETCDCTL_BIN=%q\n' "$etcdctl_bin"
printf 'export PRESENCE_PG_BIN=%q\n' "$pg_bin"

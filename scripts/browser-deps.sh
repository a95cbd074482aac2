#!/usr/bin/env bash
# Installs what the JS client's browser tests need from Debian 12 — the `chromium` package,
# driven by playwright-core (an npm devDependency, so no browser download from the npm side) —
# only when it is missing, and prints `export` lines to eval:
#   eval "$(bash scripts/browser-deps.sh)"
# Progress goes to stderr; stdout carries only the export lines.
set -euo pipefail

log() { printf 'browser-deps: %s\n' "$*" >&2; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# fonts-liberation: readable text in the screenshots (the package itself pulls only a fallback).
packages=(chromium fonts-liberation)
missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]}; run this script as root (or: sudo apt-get install ${missing[*]})"
    exit 1
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  log "all present: ${packages[*]}"
fi

chromium_bin=$(command -v chromium || true)
if [ -z "$chromium_bin" ]; then
  log "chromium not found on PATH after the install"
  exit 1
fi
log "chromium: $chromium_bin ($("$chromium_bin" --version 2>/dev/null | head -n 1 || true))"
printf 'export PRESENCE_CHROMIUM=%q\n' "$chromium_bin"

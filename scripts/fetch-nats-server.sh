#!/usr/bin/env bash
# Fetches nats-server binaries with auth callout (2.10+) from Debian's newer suites into
# .cache/nats-server/<version>/nats-server, without touching the system's apt configuration.
# Prints one "<version> <path>" line per binary. Usage: fetch-nats-server.sh [trixie|sid ...]
set -euo pipefail
# An explicitly chosen binary wins: no download.
if [ -n "${NATS_SERVER_BIN:-}" ]; then
  v=$("$NATS_SERVER_BIN" --version | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')
  echo "$v $NATS_SERVER_BIN"
  exit 0
fi
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache/nats-server"
apt_dir="$cache/apt"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(trixie sid)

mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
list="$apt_dir/sources.list"
: > "$list"
for s in "${suites[@]}"; do echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $s main" >> "$list"; done
opts=(-o "Dir::Etc::SourceList=$list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
      -o Debug::NoLocking=1 -o APT::Sandbox::User=root)

# One version per suite: the candidate apt would pick from that suite alone.
versions_in_suite() {
  apt-cache "${opts[@]}" madison nats-server | awk -v s="$1" -F'|' '$3 ~ s {gsub(/ /,"",$2); print $2}'
}

need_update=1
for s in "${suites[@]}"; do
  # Reuse what is cached: a binary per suite marker avoids the network on reruns.
  if [ -f "$cache/$s.version" ] && [ -x "$cache/$(cat "$cache/$s.version")/nats-server" ]; then continue; fi
  if [ $need_update = 1 ]; then apt-get "${opts[@]}" update >&2; need_update=0; fi
  v=$(versions_in_suite "$s" | head -n 1)
  [ -n "$v" ] || { echo "no nats-server in suite $s" >&2; exit 1; }
  dir="$cache/$v"
  if [ ! -x "$dir/nats-server" ]; then
    (cd "$apt_dir/debs" && apt-get "${opts[@]}" download "nats-server=$v" >&2)
    deb=$(ls "$apt_dir/debs"/nats-server_"${v//:/%3a}"_*.deb | head -n 1)
    tmp=$(mktemp -d)
    dpkg -x "$deb" "$tmp"
    mkdir -p "$dir"
    mv "$tmp/usr/sbin/nats-server" "$dir/nats-server"
    rm -rf "$tmp"
  fi
  echo "$v" > "$cache/$s.version"
done
for s in "${suites[@]}"; do
  v=$(cat "$cache/$s.version")
  echo "$v $cache/$v/nats-server"
done

#!/usr/bin/env bash
# Runs the test suite (or the mix test arguments given) on a newer Debian's
# toolchain, in a chroot built with debootstrap from deb.debian.org, so that
# Islet is checked against newer OTP, Elixir, OpenSSL and compilers than
# Debian 12's: Debian 13 "trixie" (OTP 27, Elixir 1.18, OpenSSL 3.5, g++
# 14; the default) or "sid" (unstable: on 2026-12-06 OTP 29, Elixir 1.20,
# OpenSSL 3.6, g++ 16, CMake 4). By hand, as root; not in CI (the first
# build downloads about 150 MB and takes a few minutes).
#
#   bash scripts/newer_debian.sh                              # the whole suite
#   bash scripts/newer_debian.sh test/islet/tls_verify_test.exs
#   ISLET_DEBIAN_SUITE=sid bash scripts/newer_debian.sh
#
# Environment:
#   ISLET_DEBIAN_SUITE   trixie (default) or sid.
#   ISLET_DEBIAN_ROOT    the chroot (default /srv/islet-<suite>); built on
#                        first use, then reused (sid's is not upgraded:
#                        delete it to take newer packages).
#
# The working tree (not only what is committed) is copied in at each run;
# its _build stays inside the chroot.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
suite="${ISLET_DEBIAN_SUITE:-trixie}"
chroot_dir="${ISLET_DEBIAN_ROOT:-/srv/islet-$suite}"
packages=erlang-nox,erlang-dev,erlang-proper,elixir,libssl-dev,openssl,cmake,g++,make,procps,ca-certificates,wrk,curl,gnuplot-nox

if [ "$(id -u)" -ne 0 ]; then
  echo "newer_debian: run as root (debootstrap and chroot)" >&2
  exit 2
fi

if [ ! -x "$chroot_dir/usr/bin/elixir" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -qq --no-install-recommends debootstrap
  echo "newer_debian: building $chroot_dir (debootstrap $suite)"
  mkdir -p "$chroot_dir"
  debootstrap --variant=minbase --include="$packages" "$suite" "$chroot_dir" http://deb.debian.org/debian
fi

# What the tests need from the host: /proc, /dev, name resolution
# (localhost), and a place for the sources.
mountpoint -q "$chroot_dir/proc" || mount -t proc proc "$chroot_dir/proc"
mountpoint -q "$chroot_dir/dev" || mount --rbind /dev "$chroot_dir/dev"
cp /etc/hosts "$chroot_dir/etc/hosts"

# A chroot built before a package joined the list gets it now (the
# benchmark's download and upload need curl): only what is missing is
# installed, which may still bring newer libraries with it on sid.
missing=""
for p in ${packages//,/ }; do
  chroot "$chroot_dir" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
    missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "newer_debian: installing$missing"
  # (An update that fails, e.g. sid's Release file expired, leaves the
  # lists the chroot has, which are enough.)
  chroot "$chroot_dir" apt-get update -qq || true
  chroot "$chroot_dir" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

mkdir -p "$chroot_dir/work/islet"
tar -C "$root" --exclude=./_build --exclude=./deps --exclude=./priv/*.so -cf - . |
  tar -C "$chroot_dir/work/islet" -xf -

args=""
for a in "$@"; do args="$args $(printf '%q' "$a")"; done
chroot "$chroot_dir" bash -c "cd /work/islet && export LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=/root MIX_ENV=test &&
  erl -noshell -eval 'io:format(\"newer_debian: OTP ~s~n\", [erlang:system_info(otp_release)]), halt().' &&
  elixir --version | tail -1 && openssl version &&
  mix compile --warnings-as-errors && mix test$args"

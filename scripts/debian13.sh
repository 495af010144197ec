#!/usr/bin/env bash
# Runs the test suite (or the mix test arguments given) on Debian 13's
# toolchain: OTP 27, Elixir 1.18, OpenSSL 3.5, g++ 14, in a chroot built
# with debootstrap from deb.debian.org, so that Islet is checked against a
# newer OTP, Elixir and OpenSSL than Debian 12's. By hand, as root; not in
# CI (the first build downloads about 150 MB and takes a few minutes).
#
#   bash scripts/debian13.sh                              # the whole suite
#   bash scripts/debian13.sh test/islet/tls_verify_test.exs
#
# Environment:
#   ISLET_DEBIAN13_ROOT  the chroot (default /srv/islet-debian13); built on
#                        first use, then reused.
#
# The working tree (not only what is committed) is copied in at each run;
# its _build stays inside the chroot.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
chroot_dir="${ISLET_DEBIAN13_ROOT:-/srv/islet-debian13}"
packages=erlang-nox,erlang-dev,erlang-proper,elixir,libssl-dev,openssl,cmake,g++,make,procps,ca-certificates,wrk,gnuplot-nox

if [ "$(id -u)" -ne 0 ]; then
  echo "debian13: run as root (debootstrap and chroot)" >&2
  exit 2
fi

if [ ! -x "$chroot_dir/usr/bin/elixir" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -qq --no-install-recommends debootstrap
  echo "debian13: building $chroot_dir (debootstrap trixie)"
  mkdir -p "$chroot_dir"
  debootstrap --variant=minbase --include="$packages" trixie "$chroot_dir" http://deb.debian.org/debian
fi

# What the tests need from the host: /proc, /dev, name resolution
# (localhost), and a place for the sources.
mountpoint -q "$chroot_dir/proc" || mount -t proc proc "$chroot_dir/proc"
mountpoint -q "$chroot_dir/dev" || mount --rbind /dev "$chroot_dir/dev"
cp /etc/hosts "$chroot_dir/etc/hosts"
mkdir -p "$chroot_dir/work/islet"
tar -C "$root" --exclude=./_build --exclude=./deps --exclude=./priv/*.so -cf - . |
  tar -C "$chroot_dir/work/islet" -xf -

args=""
for a in "$@"; do args="$args $(printf '%q' "$a")"; done
chroot "$chroot_dir" bash -c "cd /work/islet && export LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=/root MIX_ENV=test &&
  erl -noshell -eval 'io:format(\"debian13: OTP ~s~n\", [erlang:system_info(otp_release)]), halt().' &&
  elixir --version | tail -1 && openssl version &&
  mix compile --warnings-as-errors && mix test$args"

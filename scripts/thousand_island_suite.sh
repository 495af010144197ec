#!/usr/bin/env bash
# Runs Thousand Island's own test suite with its transports swapped for
# Islet's: a copy of a Thousand Island checkout (TI_DIR) gets Islet.TCP as the
# default transport_module, Islet.TLS and Islet.TCP wherever its tests name
# ThousandIsland.Transports.SSL or .TCP, and this repository as a path
# dependency; then `mix test` runs there. Thousand Island and its
# dependencies cannot be fetched on the build machines (no Hex), so this is
# not part of CI: run it where a checkout and its deps are at hand.
#
#   bash scripts/thousand_island_suite.sh ~/src/thousand_island [mix test args]
#
# What to expect with Thousand Island 1.4 (see README, "Reliability"): every
# test passes but those that call :gen_tcp or :inet directly on the
# listener socket (listener_test, socket_reuse_test: they fail with any
# transport other than gen_tcp). "ssl: it should provide correct connection
# info" races the server's close against the client's :ssl.sockname, and
# "it should handle upgrade errors" gives the Logger 100 ms while the
# suite's TLS downloads load the CPUs; Islet's faster server loses those
# races more often than :ssl does. A few timing tests fail now and then on
# a loaded 2-core machine, with gen_tcp and :ssl too.
set -euo pipefail
ti=${1:?usage: $0 THOUSAND_ISLAND_DIR [mix test args]}
shift
islet=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/islet-ti-suite.XXXXXX)
trap 'rm -rf "$work"' EXIT

# A copy without build output; deps/ is kept when present (offline machines).
tar -C "$ti" --exclude=./_build -cf - . | tar -C "$work" -xf -
cd "$work"

sed -i 's/transport_module: ThousandIsland\.Transports\.TCP/transport_module: Islet.TCP/' \
  lib/thousand_island/server_config.ex
find test -name '*.exs' -print0 | xargs -0 sed -i \
  -e 's/ThousandIsland\.Transports\.SSL/Islet.TLS/g' \
  -e 's/ThousandIsland\.Transports\.TCP/Islet.TCP/g'
# Islet as a path dependency, first in the deps list.
ISLET_PATH=$islet perl -0pi -e 's{(defp deps(\(\))? do\s*\[)}{$1\n      {:islet, path: "$ENV{ISLET_PATH}"},}' mix.exs
grep -q ':islet, path:' mix.exs || { echo "could not add Islet to $ti/mix.exs's deps" >&2; exit 1; }

export LANG=${LANG:-C.UTF-8} LC_ALL=${LC_ALL:-C.UTF-8}
if [ ! -d deps ] || [ -n "$(mix deps 2>&1 | grep -i 'not available\|fetch')" ]; then
  mix deps.get
fi
mix test "$@"

#!/usr/bin/env bash
# Installs what Islet needs to build, test and benchmark on Debian 12, only
# what is missing (safe to run again). Run as root.
set -euo pipefail

packages=(
  erlang-nox erlang-dev erlang-proper elixir   # OTP 25 + headers, Elixir 1.14
  cmake g++ make libssl-dev openssl            # the NIF and TLS
  wrk curl gnuplot-nox                         # mix islet.bench
  clang libclang-rt-dev                        # sanitizer build (hardening)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Mix needs no Hex here (Islet has no hex dependency offline), but make sure
# a locale is set so Elixir does not warn about latin1.
echo "setup: ok ($(erl -noshell -eval 'io:format("OTP ~s", [erlang:system_info(otp_release)]), halt().'), $(elixir --version | tail -1))"

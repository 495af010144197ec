#!/usr/bin/env bash
# Builds Islet's libFuzzer harnesses (clang, with ASan + UBSan) and runs each
# for a bounded time. Usage: fuzz/run.sh [seconds per harness] (default 30).
# Crashes are written to fuzz/crashes/ and make the script fail; turn each one
# into a regression input under fuzz/regressions/<harness>/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
out=${FUZZ_BUILD:-/tmp/islet-fuzz}
mkdir -p "$out" crashes
# Uninitialised locals get a fixed pattern, so that reading one fails the
# same way every run (erl_nif_shim.cpp recognises it in a pointer).
# ISLET_FUZZING compiles the record layer's hooks for fuzz_records.
flags=(-std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -ftrivial-auto-var-init=pattern -DISLET_FUZZING)
status=0
for h in fuzz_wire fuzz_client_hello fuzz_terms fuzz_records; do
  # What each harness links: fuzz_terms and fuzz_records take the whole NIF,
  # with a fake erl_nif (erl_nif_shim.cpp) standing in for the VM.
  case $h in
    fuzz_terms|fuzz_records)
      erts=$(erl -noshell -eval 'io:format("~s/usr/include", [code:root_dir()]), halt().')
      srcs=(-I"$erts" erl_nif_shim.cpp ../c_src/*.cpp) ;;
    *) srcs=(../c_src/wire.cpp) ;;
  esac
  clang++ "${flags[@]}" "$h.cpp" "${srcs[@]}" -o "$out/$h" -lssl -lcrypto
  corpus="$out/corpus-$h"
  mkdir -p "$corpus"
  if [ "$h" = fuzz_client_hello ]; then
    clang++ -std=c++17 -O1 seed_client_hello.cpp -o "$out/seed_client_hello" -lssl -lcrypto
    "$out/seed_client_hello" "$corpus"
  fi
  # Known regressions first: each must run clean.
  if [ -d "regressions/$h" ] && [ -n "$(ls -A "regressions/$h")" ]; then
    "$out/$h" -runs=0 -artifact_prefix=crashes/ "regressions/$h" >"$out/$h.regress.log" 2>&1 || { cat "$out/$h.regress.log"; status=1; }
  fi
  # Checked-in seeds (fuzz/seeds/<harness>/) are read; new inputs go to $corpus.
  seeds=()
  if [ -d "seeds/$h" ]; then seeds=("seeds/$h"); fi
  if "$out/$h" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix=crashes/ \
      "$corpus" ${seeds[@]+"${seeds[@]}"} >"$out/$h.log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/$h.log" | grep -o '[0-9]*$')
    echo "fuzz: $h: ${execs:-?} inputs, no crash"
  else
    tail -40 "$out/$h.log"
    echo "fuzz: $h FAILED (see fuzz/crashes/)"
    status=1
  fi
done
exit $status

#!/usr/bin/env bash
# Runs tests (by default all but those that start BEAMs of their own) against
# the NIF built with ThreadSanitizer, with four schedulers, and exits non-zero
# on a test failure or on a report whose two racing accesses are both in
# Islet's code.
#
#   scripts/tsan.sh                          # the default set (about 6 min)
#   scripts/tsan.sh test/islet/race_test.exs # some of it
#
# Environment:
#   ISLET_TSAN_DIR        work directory (default /tmp/islet_tsan): the Mix
#                         build path, an Erlang root (below) and the logs.
#   ISLET_ACTIVE_DELIVERY pump (default) or poller, as for the tests.
#
# How it works, and why:
#   * The BEAM is not built with ThreadSanitizer: the runtime is preloaded
#     into beam.smp (erl's `-env LD_PRELOAD`, not the shell's: erlexec
#     itself crashes under it). Only Islet's code is instrumented, so a
#     report counts when both of its accesses are there. A race whose other
#     side is the BEAM (its allocator freeing, or memcpy copying, what a NIF
#     made) is the BEAM's own synchronisation (messages, reference counts,
#     thread progress), which ThreadSanitizer cannot see: those are counted
#     and listed as ignored, as are the BEAM's races with itself.
#     Most never get reported: ignore_noninstrumented_modules makes the
#     interceptors (memcpy, malloc, ...) check accesses only when Islet
#     calls them, though they still record synchronisation for everyone.
#     Without it the BEAM's copy of every binary the poller thread made was
#     reported as a race, each report checked against all the addresses
#     reported before: a 2 MiB active-mode transfer in poller mode took
#     minutes (perf: 97% in __tsan::FindRacyAddress). A plain race between
#     two schedulers in Islet's code is still reported (tried with an
#     unguarded counter in nif_send, under concurrent sends).
#   * erl_child_setup, which the BEAM starts before any code runs and which
#     reaps the programs the tests spawn, must not run under the runtime
#     (its deferred signals leave children unreaped and System.cmd waits
#     forever). The BEAM runs from an Erlang root of links whose
#     erl_child_setup is a static program that drops LD_PRELOAD.
#   * Tests that start BEAMs of their own (the benchmark's, the pump
#     counts) are left out by default: those BEAMs would load the
#     instrumented library without the runtime (the BEAM drops LD_PRELOAD
#     and ELIXIR_ERL_OPTIONS at start, so that the programs and BEAMs that
#     tests start do not inherit them).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
work="${ISLET_TSAN_DIR:-/tmp/islet_tsan}"
build="$work/build"
logs="$work/logs"
erlroot="$work/erlroot"

export LANG="${LANG:-C.UTF-8}" LC_ALL="${LC_ALL:-C.UTF-8}"
export MIX_ENV=test ISLET_SANITIZE=thread MIX_BUILD_PATH="$build"

runtime="$(readlink -f "$(g++ -print-file-name=libtsan.so)")"
if [ ! -f "$runtime" ]; then
  echo "tsan: no ThreadSanitizer runtime for g++ ($runtime)" >&2
  exit 2
fi
rm -rf "$logs"
mkdir -p "$logs"
cd "$root"

# The Erlang root: links to the real one, but for bin/erl (which hardcodes
# its root) and erl_child_setup.
real_root="$(erl -noshell -eval 'io:format("~s", [code:root_dir()]), halt().')"
erts="erts-$(erl -noshell -eval 'io:format("~s", [erlang:system_info(version)]), halt().')"
rm -rf "$erlroot"
mkdir -p "$erlroot/bin" "$erlroot/$erts/bin"
for f in "$real_root"/*; do
  case "$(basename "$f")" in bin | "$erts") ;; *) ln -s "$f" "$erlroot/" ;; esac
done
for f in "$real_root/$erts"/*; do
  [ "$(basename "$f")" = bin ] || ln -s "$f" "$erlroot/$erts/"
done
for f in "$real_root/$erts/bin"/*; do
  [ "$(basename "$f")" = erl_child_setup ] || ln -s "$f" "$erlroot/$erts/bin/"
done
for f in "$real_root/bin"/*; do
  [ "$(basename "$f")" = erl ] || ln -s "$f" "$erlroot/bin/"
done
cat >"$erlroot/bin/erl" <<EOF
#!/bin/sh
ROOTDIR='$erlroot'
BINDIR="\$ROOTDIR/$erts/bin"
EMU=beam
PROGNAME=erl
export ROOTDIR BINDIR EMU PROGNAME
exec "\$BINDIR/erlexec" \${1+"\$@"}
EOF
chmod +x "$erlroot/bin/erl"
cat >"$work/child_setup.c" <<EOF
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
  (void)argc;
  unsetenv("LD_PRELOAD");
  argv[0] = "$real_root/$erts/bin/erl_child_setup";
  execv(argv[0], argv);
  return 127;
}
EOF
gcc -static -O2 -o "$erlroot/$erts/bin/erl_child_setup" "$work/child_setup.c"

# Build (a plain BEAM: compiling does not need the library loaded, and it
# cannot be, without the runtime).
if ! mix compile >"$logs/compile.out" 2>&1; then
  cat "$logs/compile.out"
  exit 2
fi
nif="$root/priv/islet_nif_tsan.so"
if [[ "$(nm -D "$nif" || true)" != *__tsan_* ]]; then
  echo "tsan: $nif is not instrumented (is ISLET_SANITIZE=thread honoured?)" >&2
  exit 2
fi

# By default: one test module at a time (under the runtime everything is
# several times slower, and the differential tests' 30 s per side ran out
# with modules in parallel), without the 10,000-connection soak (too slow
# here; it also reads erlang:memory, which +Mea min does not give).
if [ $# -eq 0 ]; then
  set -- $(ls test/islet/*_test.exs | grep -v -e bench_ -e /pump_test.exs) --exclude soak --max-cases 1
fi

symbolizer=""
command -v llvm-symbolizer >/dev/null && symbolizer=":external_symbolizer_path=$(command -v llvm-symbolizer)"
tsan="exitcode=0:detect_deadlocks=0:report_signal_unsafe=0:history_size=4:ignore_noninstrumented_modules=1:log_path=$logs/tsan$symbolizer"

# The BEAM drops the runtime and these options first thing, so that neither
# reaches the programs and BEAMs the tests start.
unset='-eval os:unsetenv("LD_PRELOAD"),os:unsetenv("ELIXIR_ERL_OPTIONS").'
# Without address randomisation: with more of it than g++ 12's runtime
# expects (vm.mmap_rnd_bits above 28, as some distributions set it since
# 2023), mappings can land where it stops with "unexpected memory mapping".
norand=()
command -v setarch >/dev/null && norand=(setarch "$(uname -m)" -R)
set +e
PATH="$erlroot/bin:$PATH" TSAN_OPTIONS="$tsan" \
  ELIXIR_ERL_OPTIONS="-env LD_PRELOAD $runtime +Mea min +S 4:4 $unset" \
  "${norand[@]}" mix test --no-compile "$@" 2>&1 | tee "$logs/test.out"
status=${PIPESTATUS[0]}
set -e

cat >"$work/verdict.exs" <<'EOF'
[logs, status] = System.argv()
status = String.to_integer(status)
out = File.read!(Path.join(logs, "test.out"))

reports =
  for f <- File.ls!(logs), String.starts_with?(f, "tsan."),
      report <- String.split(File.read!(Path.join(logs, f)), ~r/={18}\n/),
      report =~ "WARNING: ThreadSanitizer",
      do: report

# The first frame outside the sanitizer runtime of each access's stack.
top = fn stack ->
  Regex.scan(~r/#\d+ .*\((\S+?)\+0x/, stack, capture: :all_but_first)
  |> Enum.map(&hd/1)
  |> Enum.find(&(not String.contains?(&1, "libtsan")))
end

islet? = &(is_binary(&1) and String.contains?(&1, "islet_nif"))

{counted, ignored} =
  Enum.split_with(reports, fn report ->
    if report =~ "data race" do
      [access | rest] = String.split(report, ~r/\n  (?=Previous|Location|Mutex|Thread)/)
      previous = Enum.find(rest, "", &String.starts_with?(&1, "Previous"))
      islet?.(top.(access)) and islet?.(top.(previous))
    else
      islet?.(report)
    end
  end)

summary = Regex.run(~r/\n(\d+) tests?, (\d+) failures?/, out)
tests_ok = match?([_, _, "0"], summary) and status == 0

IO.puts("\ntsan: ---- verdict ----")
IO.puts("tsan: mix test exit status #{status}; #{if summary, do: hd(summary) |> String.trim(), else: "no test summary"}")
IO.puts("tsan: #{length(counted)} report(s) within Islet's code, #{length(ignored)} ignored (the BEAM's side)")
Enum.each(Enum.take(counted, 10), &IO.puts/1)
IO.puts("tsan: logs in #{logs}")

if tests_ok and counted == [] do
  IO.puts("tsan: OK")
else
  IO.puts("tsan: FAILED")
  System.halt(1)
end
EOF
env -u ISLET_SANITIZE elixir "$work/verdict.exs" "$logs" "$status"

#!/usr/bin/env bash
# Runs the test suite (`mix test`, or the mix test arguments given) against
# the NIF built with AddressSanitizer + UndefinedBehaviorSanitizer, loaded
# into the normal BEAM with the sanitizer runtime preloaded, and exits
# non-zero on any test failure or any sanitizer report.
#
#   scripts/sanitize.sh                          # the whole suite
#   scripts/sanitize.sh test/islet/race_test.exs # some of it
#
# Environment:
#   ISLET_SANITIZE_CC    gcc (default) or clang: whose sanitizer runtime.
#   ISLET_SANITIZE_DIR   work directory (default /tmp/islet_sanitize): the
#                        Mix build path, the logs, the verdict script.
#   ISLET_SANITIZE_MEA   "min" (default) runs the BEAM with +Mea min, so
#                        that enif_alloc'd memory (resources, binaries, I/O
#                        queues) comes from malloc and ASan checks it too;
#                        "default" keeps the BEAM's own allocators (faster).
#
# How it works:
#   * Built in place with ISLET_SANITIZE=1 into a build path of its own: the
#     Mix compiler installs that build as priv/islet_nif_asan.so, and
#     Islet.Nif loads it only when ISLET_SANITIZE=1, so the normal
#     priv/islet_nif.so is never replaced.
#   * The BEAM gets the runtime through LD_PRELOAD (ASan must come first in
#     the initial library list) and unsets LD_PRELOAD as its first action
#     (-eval in ELIXIR_ERL_OPTIONS), so that the programs it starts (cmake,
#     openssl, inet_gethost, ...) do not run under the sanitizer. BEAMs the
#     tests start themselves (the benchmark's server and clients) load the
#     sanitized NIF too: they are started through wrappers of elixir, erl,
#     iex and mix (first in PATH) that preload the runtime again.
#   * Reports go to $ISLET_SANITIZE_DIR/logs (log_path, one file per
#     process) and are also searched for in the test output: a report from
#     inside a NIF does not always change mix's exit code. An ASan or UBSan
#     error aborts the process (abort_on_error); leaks never change an exit
#     code (exitcode=0), they are judged from the logs.
#   * Leak detection runs at exit. The BEAM frees little when it halts, so
#     only leaks whose allocation stack goes through islet_nif (the NIF's
#     own allocations, and resources or binaries it allocated through
#     enif_*) count; the others are listed as ignored. Known BEAM-only sites
#     are suppressed outright (lsan.supp below).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cc="${ISLET_SANITIZE_CC:-gcc}"
work="${ISLET_SANITIZE_DIR:-/tmp/islet_sanitize}"
mea="${ISLET_SANITIZE_MEA:-min}"
build="$work/build-$cc"
logs="$work/logs"

export LANG="${LANG:-C.UTF-8}" LC_ALL="${LC_ALL:-C.UTF-8}"
export MIX_ENV=test ISLET_SANITIZE=1 MIX_BUILD_PATH="$build"

case "$cc" in
  gcc)
    export CC=gcc CXX=g++
    runtime="$(g++ -print-file-name=libasan.so)"
    ;;
  clang)
    export CC=clang CXX=clang++
    runtime="$(clang++ -print-file-name=libclang_rt.asan-x86_64.so)"
    ;;
  *)
    echo "sanitize: ISLET_SANITIZE_CC must be gcc or clang" >&2
    exit 2
    ;;
esac
if [ ! -f "$runtime" ]; then
  echo "sanitize: no ASan runtime for $cc ($runtime); see scripts/setup.sh" >&2
  exit 2
fi
runtime="$(readlink -f "$runtime")"

echo "sanitize: $cc, runtime $runtime, work dir $work"

case "$work" in
  *[[:space:]]*)
    echo "sanitize: ISLET_SANITIZE_DIR must not contain spaces" >&2
    exit 2
    ;;
esac

rm -rf "$logs"
mkdir -p "$logs"
cd "$root"

cat >"$work/lsan.supp" <<'EOF'
# Allocations of the BEAM itself that it never frees before halting.
leak:sys_thread_init_signal_stack
leak:erts_sys_pre_init
leak:erts_preload_module
leak:erts_prepare_loading
leak:beam_load_emit_op
leak:beamfile_read
EOF

# The BEAM unsets LD_PRELOAD first thing, before it starts any program, and
# puts the launchers below first in PATH for the BEAMs tests start (not in
# the shell's PATH: mix itself runs through `env elixir`).
unset_preload='-eval os:unsetenv("LD_PRELOAD").'
beam_flags="-eval os:unsetenv(\"LD_PRELOAD\"),os:putenv(\"PATH\",\"$work/bin:\"++os:getenv(\"PATH\"))."
leaks=0
if [ "$mea" = "min" ]; then
  beam_flags="+Mea min $beam_flags"
  leaks=1
else
  echo "sanitize: ISLET_SANITIZE_MEA=$mea: leak detection off (see the wrappers below)"
fi

# Launchers for the BEAMs that tests start: they preload the runtime again.
# Without +Mea min: such BEAMs may call erlang:memory/1, which the BEAM does
# not support with its allocators off. Without leak
# detection either: with the BEAM's own allocators, resources live in
# carriers the BEAM maps itself, which LeakSanitizer does not scan, so what
# they point to would look leaked.
mkdir -p "$work/bin"
for tool in elixir erl iex mix; do
  real="$(command -v "$tool")"
  cat >"$work/bin/$tool" <<WRAPPER
#!/bin/sh
ASAN_OPTIONS="\$ASAN_OPTIONS:detect_leaks=0" LD_PRELOAD='$runtime' \\
  ELIXIR_ERL_OPTIONS='$unset_preload' exec '$real' "\$@"
WRAPPER
  chmod +x "$work/bin/$tool"
done

# Build. Compiling the Elixir code loads the NIF (on_load), so the runtime
# must be preloaded here too; leaks of the compiler VM are not of interest.
LD_PRELOAD="$runtime" ASAN_OPTIONS=detect_leaks=0 ELIXIR_ERL_OPTIONS="$beam_flags" \
  mix compile 2>&1 | tee "$logs/compile.out"

nif="$root/priv/islet_nif_asan.so"
# (Outputs captured first: grep -q would cut the pipe under pipefail.)
needed="$(ldd "$nif" || true)"
symbols="$(nm -D "$nif" || true)"
if [ "$cc" = gcc ] && [[ "$needed" != *"$(basename "$runtime" | sed 's/\.so.*//')"* ]]; then
  echo "sanitize: $nif is not linked against $runtime" >&2
  exit 2
fi
if [[ "$symbols" != *__asan_* ]]; then
  echo "sanitize: $nif is not instrumented (is ISLET_SANITIZE honoured?)" >&2
  exit 2
fi

# Test.
asan="detect_leaks=$leaks:leak_check_at_exit=1:fast_unwind_on_malloc=0:malloc_context_size=40"
asan="$asan:halt_on_error=1:abort_on_error=1:exitcode=0:log_path=$logs/asan:log_exe_name=1"
ubsan="print_stacktrace=1:halt_on_error=1:abort_on_error=1:log_path=$logs/ubsan:log_exe_name=1"
lsan="suppressions=$work/lsan.supp:print_suppressions=0"

set +e
LD_PRELOAD="$runtime" ASAN_OPTIONS="$asan" UBSAN_OPTIONS="$ubsan" LSAN_OPTIONS="$lsan" \
  ELIXIR_ERL_OPTIONS="$beam_flags" mix test --no-compile "$@" 2>&1 | tee "$logs/test.out"
status=${PIPESTATUS[0]}
set -e

# Verdict (run with no sanitizer preloaded).
cat >"$work/verdict.exs" <<'EOF'
[logs, status] = System.argv()
status = String.to_integer(status)
out = File.read!(Path.join(logs, "test.out"))

files =
  for f <- File.ls!(logs), String.starts_with?(f, ["asan.", "ubsan."]), do: Path.join(logs, f)

texts = for f <- files, do: {f, File.read!(f)}
islet? = &String.contains?(&1, ["islet_nif", "islet::"])

# UBSan reports, and ASan reports other than leaks, count wherever they are.
errors =
  for {f, text} <- [{"test output", out} | texts],
      line <- String.split(text, "\n"),
      line =~ ~r/runtime error:|ERROR: AddressSanitizer|AddressSanitizer:DEADLYSIGNAL|LeakSanitizer has encountered|ERROR: LeakSanitizer: (?!detected memory leaks)/,
      do: "#{Path.basename(f)}: #{String.trim(line)}"

# Leaks count when an allocation stack goes through the NIF.
{leaks, ignored} =
  for {f, text} <- texts,
      String.contains?(text, "LeakSanitizer: detected memory leaks"),
      block <- Regex.split(~r/\n(?=(Direct|Indirect) leak of )/, text),
      block =~ ~r/^(Direct|Indirect) leak of /,
      reduce: {[], 0} do
    {leaks, ignored} ->
      if islet?.(block), do: {["#{Path.basename(f)}:\n#{block}" | leaks], ignored}, else: {leaks, ignored + 1}
  end

summary = Regex.run(~r/\n(\d+) tests?, (\d+) failures?/, out)

tests_ok =
  case summary do
    [_, _, "0"] -> status == 0
    _ -> false
  end

IO.puts("\nsanitize: ---- verdict ----")
IO.puts("sanitize: mix test exit status #{status}; #{if summary, do: hd(summary) |> String.trim(), else: "no test summary (the VM died?)"}")
IO.puts("sanitize: #{length(errors)} ASan/UBSan error line(s)")
Enum.each(Enum.take(errors, 20), &IO.puts("  " <> &1))
IO.puts("sanitize: #{length(leaks)} leak(s) from islet_nif.so, #{ignored} BEAM-only leak(s) ignored")
Enum.each(Enum.reverse(leaks), &IO.puts/1)
IO.puts("sanitize: logs in #{logs}")

if tests_ok and errors == [] and leaks == [] do
  IO.puts("sanitize: OK")
else
  IO.puts("sanitize: FAILED")
  System.halt(1)
end
EOF
env -u LD_PRELOAD -u ISLET_SANITIZE elixir "$work/verdict.exs" "$logs" "$status"

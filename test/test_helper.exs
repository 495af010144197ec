# Tests of ML-DSA certificates run where :ssl (OTP 29) and OpenSSL (3.5+)
# both have it.
mldsa? =
  :mldsa65 in Islet.Compat.ssl_signature_schemes() and
    case System.cmd("openssl", ["list", "-signature-algorithms"], stderr_to_stdout: true) do
      {out, 0} -> out =~ "ML-DSA-65"
      _ -> false
    end

# Property tests need PropEr (Debian's erlang-proper, which setup.sh
# installs). Elixir 1.15+ prunes the code path to the project's own
# applications: PropEr, from the system's Erlang, is put back.
for ebin <- Path.wildcard(Path.join(:code.root_dir(), "lib/proper-*/ebin")),
    do: Code.prepend_path(ebin)

# Tests that need nginx (the benchmark's outside reference) run only where
# it is installed.
# Tests of the pumps' own epoll sets run only when pumps deliver.
exclude =
  if(Islet.Bench.Nginx.available?(), do: [], else: [:nginx]) ++
    if(Islet.Pump.delivery_mode() == :pump, do: [], else: [:pump_mode]) ++
    if(mldsa?, do: [], else: [:mldsa]) ++
    if Code.ensure_loaded?(:proper), do: [], else: [:proper]

ExUnit.start(exclude: exclude)

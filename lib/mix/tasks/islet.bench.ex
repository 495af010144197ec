defmodule Mix.Tasks.Islet.Bench do
  @shortdoc "Benchmarks Islet's transports against gen_tcp and :ssl"

  @moduledoc """
  Serves the same workloads from each transport in turn, on this machine and
  in one run, and prints a table of figures and ratios (Islet / reference)
  for two pairs: TCP (`Islet.TCP` vs `:gen_tcp`) and TLS (`Islet.TLS` vs
  `:ssl`, as Thousand Island's SSL transport uses it):

      mix islet.bench              # full run, about 4 minutes (longer on a busy machine)
      mix islet.bench --quick      # smoke run, about 30 s
      mix islet.bench --pair tls   # one pair

  Workloads (see `Islet.Bench.Workloads`): `keepalive` (wrk, small GET on
  keep-alive connections: requests/s, p50/p99 latency, server CPU per 100k
  requests), `close` (a connection per request: connections/s),
  `handshake` (TLS only: full handshakes/s and server CPU per handshake with
  ECDSA P-256 and RSA-2048 certificates in TLS 1.3 and 1.2, from the
  benchmark's own client), `download` (a 256 MiB file by `sendfile/4`, 4
  times per sample over TCP, once over TLS: MB/s, server CPU per GB),
  `upload` (256 MiB read with passive `recv/3`: MB/s) and `idle` (10,000
  idle keep-alive connections, TLS ones with the handshake done: BEAM and
  RSS bytes and processes per connection, each sample taken after a GC of
  every process and once RSS has stopped falling, at most 40 s later).

  Besides candidate/reference goals, some rows have goals against another
  row: Islet.TLS keep-alive requests/s and CPU per request against
  Islet.TCP's (when the TCP pair ran too), and the ECDSA handshake ratios
  against the RSA ones. The handshake goals are on handshakes per second
  of server CPU: with two CPUs, the client cannot keep Islet.TLS busy.

  The server is a miniature of Thousand Island's runtime
  (`Islet.Bench.Server`: acceptor pool, a handler process per connection,
  active-once loop) in a child BEAM pinned with taskset to the first CPU with
  one scheduler; wrk, curl and the handshake client run pinned to the last CPU
  (the idle client, whose CPU time does not matter, may use every CPU).
  Progress lines say how busy the server was; a note follows the table when
  it was less than 85% busy (the client, or other load, limited the rate).
  Each figure is the median of `--runs` samples (`--idle-runs` for the
  idle workload), transports alternating, with min and max. Results go to
  `bench/results/latest.json` (with the time each workload took) and a bar
  chart of the ratios to `bench/results/latest.png`.

  The child BEAMs raise their open-files limit (`ulimit -n 65536`, or the
  hard limit if lower); with a hard limit below about 10,200 the idle
  workload opens fewer connections and says so.

  ## Options

    * `--duration SECONDS` - length of each wrk run (default 2)
    * `--connections N` - wrk connections (default 50)
    * `--runs N` - samples per transport and figure (default 3)
    * `--idle-runs N` - samples of the idle workload (default 1: each opens
      10,000 connections in a fresh server, and memory varies little)
    * `--schedulers N` - server schedulers and CPUs (default 1)
    * `--only LIST` - comma-separated workloads: keepalive, close,
      handshake, download, upload, idle (default all)
    * `--pair LIST` - transport pairs: tcp, tls, or all (default both)
    * `--idle-connections N` - default 10000
    * `--file-mb N` - size of the download/upload file in MiB (default 256)
    * `--downloads N` - downloads of the file per sample (default 4 over
      TCP, 1 over TLS)
    * `--handshake-client hsload|s_time` - the full-handshake client:
      the benchmark's own (`bench/hsload.cpp`, built here with CMake; one
      process, handshakes in flight on an epoll set) or `openssl s_time
      -new` processes (about twice hsload's CPU per handshake: on the one
      client CPU they cannot keep Islet.TLS busy). Default hsload
    * `--handshake-clients N` - handshakes in flight: hsload's connections
      (default 16) or s_time processes (default 4)
    * `--handshake-ms N` - measured window per handshake figure (default
      500, 300 with `--quick`)
    * `--warmup SECONDS` - unmeasured wrk run per server (default 1)
    * `--no-nginx` - leave out nginx, measured otherwise when installed
      (`apt-get install nginx-light`) as an outside reference for the TLS
      handshake rows (see `Islet.Bench.Nginx`)
    * `--out DIR` - where `latest.json` and `latest.png` go (default
      `bench/results`)
    * `--quick` - duration 1, runs 1, 500 idle connections, 16 MiB file
      downloaded once, 300 ms handshake windows, no warm-up (explicit
      options still win)

  Exits with an error if any sample failed (after writing the results).
  """

  use Mix.Task

  alias Islet.Bench.{Report, Runner, Workloads}

  @switches [
    duration: :integer,
    connections: :integer,
    runs: :integer,
    idle_runs: :integer,
    schedulers: :integer,
    only: :string,
    pair: :string,
    idle_connections: :integer,
    file_mb: :integer,
    downloads: :integer,
    handshake_client: :string,
    handshake_clients: :integer,
    handshake_ms: :integer,
    warmup: :integer,
    out: :string,
    quick: :boolean,
    nginx: :boolean
  ]

  @impl Mix.Task
  def run(args) do
    {options, rest, invalid} = OptionParser.parse(args, strict: @switches)

    if rest != [] or invalid != [] do
      Mix.raise("mix islet.bench: unexpected arguments #{inspect(rest ++ invalid)}")
    end

    Mix.Task.run("compile")

    # Before minutes of samples, not at the first workload that needs one.
    case Islet.Bench.Load.missing_programs() do
      [] ->
        :ok

      missing ->
        Mix.raise(
          "mix islet.bench: not found in PATH: #{Enum.join(missing, ", ")} (bash scripts/setup.sh installs them)"
        )
    end

    config = Runner.config(config_options(options))
    out = Keyword.get(options, :out, "bench/results")

    results = Runner.run(config, fn line -> Mix.shell().info(line) end)

    Mix.shell().info("\n" <> Report.table(results))
    json = Path.join(out, "latest.json")
    Report.write_json(results, json)

    png = Path.join(out, "latest.png")

    case Report.write_png(results, png) do
      :ok -> Mix.shell().info("Wrote #{json} and #{png}")
      {:error, reason} -> Mix.shell().error("Wrote #{json}; no chart: #{inspect(reason)}")
    end

    by_workload =
      results.meta.workload_s
      |> Enum.sort_by(fn {_key, seconds} -> -seconds end)
      |> Enum.map_join(", ", fn {key, seconds} -> "#{key} #{round(seconds)}" end)

    Mix.shell().info(
      "Elapsed #{round(results.meta.elapsed_s)} s (#{by_workload}). Figures on a shared or busy " <>
        "machine are noisy; compare ratios of one run, not absolute numbers across runs."
    )

    for failure <- results.outside_failures do
      Mix.shell().error(
        "warning: #{failure.module} (outside reference), #{failure.workload} run #{failure.run}: " <>
          failure.reason
      )
    end

    if results.failures != [] do
      Mix.raise("#{length(results.failures)} sample(s) failed, see above")
    end

    results
  end

  defp config_options(options) do
    %{
      duration: positive(options, :duration),
      connections: positive(options, :connections),
      runs: positive(options, :runs),
      idle_runs: positive(options, :idle_runs),
      schedulers: positive(options, :schedulers),
      idle_connections: positive(options, :idle_connections),
      file_mb: positive(options, :file_mb),
      downloads: positive(options, :downloads),
      handshake_client: handshake_client(options[:handshake_client]),
      handshake_clients: positive(options, :handshake_clients),
      handshake_ms: positive(options, :handshake_ms),
      warmup: options[:warmup],
      quick: Keyword.get(options, :quick, false),
      nginx: options[:nginx],
      workloads: workloads(options[:only]),
      pairs: options[:pair] && split(options[:pair])
    }
  end

  defp positive(options, key) do
    case options[key] do
      nil ->
        nil

      value when value > 0 ->
        value

      value ->
        Mix.raise("--#{String.replace(to_string(key), "_", "-")} must be positive, got #{value}")
    end
  end

  defp handshake_client(name) when name in [nil, "hsload"],
    do: {:hsload, Mix.Tasks.Compile.IsletNif.build_target!("islet_hsload")}

  defp handshake_client("s_time"), do: :s_time

  defp handshake_client(name),
    do: Mix.raise("--handshake-client must be hsload or s_time, got #{inspect(name)}")

  defp workloads(nil), do: nil

  defp workloads(list) do
    Enum.map(split(list), fn name ->
      case Workloads.parse(name) do
        {:ok, workload} ->
          workload

        :error ->
          Mix.raise(
            "unknown workload #{inspect(name)}; known: #{Enum.map_join(Workloads.all(), ", ", &Atom.to_string/1)}"
          )
      end
    end)
  end

  defp split(list), do: list |> String.split(",", trim: true) |> Enum.map(&String.trim/1)
end

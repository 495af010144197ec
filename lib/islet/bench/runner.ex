defmodule Islet.Bench.Runner do
  @moduledoc """
  Runs the benchmark: for each transport pair and workload, `runs` samples
  of each transport, alternating which goes first, and reduces them to rows
  (median, min and max per transport, ratio of medians, goal verdict).

  Servers are child BEAMs (`Islet.Bench.Child`) pinned to the server CPUs
  with `+S N:N`; the clients (wrk, curl, the idle client BEAM) and this
  coordinating process are pinned to the last CPU. One long-lived server per
  transport serves the throughput workloads (after a short wrk warm-up); the
  idle-memory workload gets a fresh server BEAM per sample.
  """

  alias Islet.Bench.{Child, Transports, Workloads}

  @typedoc "How to run (see `config/1`)."
  @type config :: %{
          schedulers: pos_integer(),
          duration: pos_integer(),
          connections: pos_integer(),
          runs: pos_integer(),
          idle_connections: pos_integer(),
          file_mb: pos_integer(),
          downloads: pos_integer(),
          warmup: non_neg_integer(),
          workloads: [Workloads.workload()],
          pairs: [String.t() | Transports.pair()] | nil,
          quick: boolean(),
          workdir: Path.t()
        }

  @typedoc "The results: `meta`, `rows` and `failures` (see `Islet.Bench.Report`)."
  @type results :: %{meta: map(), rows: [map()], failures: [map()]}

  @defaults %{
    schedulers: 1,
    duration: 3,
    connections: 50,
    runs: 3,
    idle_connections: 10_000,
    file_mb: 256,
    downloads: 4,
    warmup: 1,
    workloads: nil,
    pairs: nil,
    quick: false,
    workdir: nil
  }
  @quick %{duration: 1, runs: 1, idle_connections: 500, file_mb: 16, downloads: 1, warmup: 0}

  @doc """
  The configuration: defaults, then the `--quick` ones when `quick: true`,
  then the options given.
  """
  @spec config(map()) :: config()
  def config(options) do
    base = if options[:quick], do: Map.merge(@defaults, @quick), else: @defaults

    config =
      base
      |> Map.merge(Map.reject(options, fn {_key, value} -> is_nil(value) end))
      |> Map.update!(:workloads, &(&1 || Workloads.all()))

    %{config | workdir: config.workdir || Path.join(System.tmp_dir!(), "islet_bench")}
  end

  @doc "Runs the benchmark; `report` gets each progress line."
  @spec run(config(), (String.t() -> any())) :: results()
  def run(config, report \\ &IO.puts/1) do
    pairs = Transports.select(config.pairs)
    {server_cpus, client_cpu, layout_warnings} = cpu_layout(config.schedulers)
    Enum.each(layout_warnings, &report.("warning: " <> &1))
    file = data_file(config.workdir, config.file_mb)

    report.(
      "server BEAM on CPU #{server_cpus} (+S #{config.schedulers}), clients on CPU #{client_cpu}; " <>
        "#{config.runs} run(s) of #{Enum.map_join(config.workloads, ", ", &Workloads.label/1)}"
    )

    started = System.monotonic_time(:millisecond)

    samples =
      with_affinity(client_cpu, fn ->
        Enum.reduce(pairs, %{}, fn pair, samples ->
          Map.merge(samples, run_pair(pair, config, server_cpus, client_cpu, file, report))
        end)
      end)

    elapsed_s = (System.monotonic_time(:millisecond) - started) / 1000
    results(pairs, samples, config, server_cpus, client_cpu, elapsed_s)
  end

  ## Running a pair

  defp run_pair(pair, config, server_cpus, client_cpu, file, report) do
    context = %{
      client_cpu: client_cpu,
      connections: config.connections,
      duration: config.duration,
      file: file,
      file_bytes: File.stat!(file).size,
      downloads: config.downloads,
      idle_connections: config.idle_connections,
      scheme: pair.scheme,
      client_tls: pair.client_tls
    }

    env = %{
      pair: pair,
      config: config,
      context: context,
      server_cpus: server_cpus,
      listen_options: pair.listen_options.(config.workdir)
    }

    plan =
      for workload <- config.workloads,
          run <- 1..config.runs,
          module <- order(pair, run),
          do: {workload, run, module}

    # Children left behind by an exception halt when this process exits
    # (their stdin closes).
    {samples, children} =
      Enum.reduce(plan, {%{}, %{}}, fn {workload, run, module}, {samples, children} ->
        {sample, children} = take_sample(workload, module, children, env)
        report.(progress(pair, workload, run, config.runs, module, sample))
        key = {pair.id, workload, module}
        {Map.update(samples, key, [{run, sample}], &(&1 ++ [{run, sample}])), children}
      end)

    Enum.each(children, fn {_key, child} -> stop_child(child) end)
    samples
  end

  # Odd runs start with the candidate, even runs with the reference.
  defp order(pair, run) when rem(run, 2) == 1, do: [pair.candidate, pair.reference]
  defp order(pair, _run), do: [pair.reference, pair.candidate]

  defp take_sample(:idle, module, children, env) do
    case idle_client(children, env) do
      {:ok, client, children} ->
        case idle_sample(module, client, env) do
          {:error, _} = error ->
            # The client may be wedged too: the next sample gets a new one.
            Child.stop(client)
            {error, Map.delete(children, :idle_client)}

          sample ->
            {sample, children}
        end

      {:error, reason, children} ->
        {{:error, reason}, children}
    end
  end

  defp take_sample(workload, module, children, env) do
    case long_lived_server(children, module, env) do
      {:ok, server, children} ->
        case safely(fn -> Workloads.measure(workload, server, env.context) end) do
          {:error, _} = error ->
            # The server may be wedged: the next sample gets a new one.
            stop_child(server)
            {error, Map.delete(children, module)}

          sample ->
            {sample, children}
        end

      {:error, reason, children} ->
        {{:error, reason}, children}
    end
  end

  defp safely(fun) do
    fun.()
  rescue
    exception -> {:error, Exception.message(exception)}
  end

  defp idle_sample(module, client, env) do
    with {:ok, server} <- start_server(module, env, false) do
      limit = min(server.child.info.fd_limit, client.info.fd_limit) - 200
      count = min(env.context.idle_connections, limit)
      context = %{env.context | idle_connections: count}
      sample = safely(fn -> Workloads.measure_idle(server, client, context) end)
      stop_child(server)

      case sample do
        {:ok, values, warnings} when count < env.context.idle_connections ->
          {:ok, values, ["only #{count} connections: open-files limit" | warnings]}

        other ->
          other
      end
    end
  end

  defp long_lived_server(children, module, env) do
    case Map.fetch(children, module) do
      {:ok, server} ->
        {:ok, server, children}

      :error ->
        case start_server(module, env, true) do
          {:ok, server} -> {:ok, server, Map.put(children, module, server)}
          {:error, reason} -> {:error, reason, children}
        end
    end
  end

  defp idle_client(children, env) do
    case Map.fetch(children, :idle_client) do
      {:ok, client} ->
        {:ok, client, children}

      :error ->
        case Child.start("idle client", cpus: env.context.client_cpu) do
          {:ok, client} -> {:ok, client, Map.put(children, :idle_client, client)}
          {:error, reason} -> {:error, {:idle_client, reason}, children}
        end
    end
  end

  defp start_server(module, env, warm_up?) do
    name = "#{env.pair.labels[module]} server"
    options = [cpus: env.server_cpus, schedulers: env.config.schedulers]

    serve =
      {:serve,
       [transport: module, listen_options: env.listen_options, download: env.context.file]}

    with {:ok, child} <- Child.start(name, options) do
      case Child.call(child, serve, 30_000) do
        {:ok, {:ok, port}} ->
          server = %{child: child, port: port}
          if warm_up?, do: Workloads.warm_up(server, env.context, env.config.warmup)
          {:ok, server}

        other ->
          Child.stop(child)
          {:error, {:serve_failed, other}}
      end
    end
  end

  defp stop_child(%{child: child}), do: Child.stop(child)
  defp stop_child(child), do: Child.stop(child)

  defp progress(pair, workload, run, runs, module, sample) do
    head =
      "[#{pair.id}] #{String.pad_trailing(Workloads.label(workload), 12)} run #{run}/#{runs} " <>
        String.pad_trailing(pair.labels[module], 10)

    case sample do
      {:ok, values, warnings} ->
        figures =
          Enum.map_join(Workloads.metrics(workload), "  ", fn metric ->
            "#{metric.label} #{Islet.Bench.Report.format_number(values[metric.key])}"
          end)

        Enum.join([head, figures | Enum.map(warnings, &"(#{&1})")], "  ")

      {:error, reason} ->
        "#{head}  FAILED: #{brief(reason)}"
    end
  end

  defp brief(reason) do
    text = inspect(reason, limit: 6, printable_limit: 300)
    if String.length(text) > 400, do: String.slice(text, 0, 400) <> "...", else: text
  end

  ## Machine set-up

  @doc """
  Splits the CPUs this process may use: the server gets the first
  `schedulers` of them (leaving one), the clients the last one.
  Returns `{server_cpus, client_cpu, warnings}` as taskset lists.
  """
  @spec cpu_layout(pos_integer()) :: {String.t(), String.t(), [String.t()]}
  def cpu_layout(schedulers) do
    cpus = allowed_cpus()
    client = List.last(cpus)

    case cpus do
      [only] ->
        {"#{only}", "#{only}", ["one CPU only: server and clients share it"]}

      _ ->
        servers = Enum.take(Enum.drop(cpus, -1), schedulers)

        warnings =
          if schedulers > length(servers),
            do: ["#{schedulers} schedulers share #{length(servers)} CPU(s)"],
            else: []

        {Enum.join(servers, ","), "#{client}", warnings}
    end
  end

  defp allowed_cpus do
    {output, 0} = System.cmd("taskset", ["-cp", os_pid()])
    [_, list] = Regex.run(~r/list:\s*(\S+)/, output)

    list
    |> String.split(",")
    |> Enum.flat_map(fn range ->
      case String.split(range, "-") do
        [one] -> [String.to_integer(one)]
        [first, last] -> Enum.to_list(String.to_integer(first)..String.to_integer(last))
      end
    end)
  end

  defp os_pid, do: System.pid()

  # Pins this BEAM (all threads) to the client CPU while `fun` runs, so the
  # coordinator never competes with the server.
  defp with_affinity(cpu, fun) do
    {output, 0} = System.cmd("taskset", ["-p", os_pid()])
    [_, mask] = Regex.run(~r/mask:\s*(\S+)/, output)
    _ = System.cmd("taskset", ["-a", "-cp", cpu, os_pid()], stderr_to_stdout: true)

    try do
      fun.()
    after
      _ = System.cmd("taskset", ["-a", "-p", mask, os_pid()], stderr_to_stdout: true)
    end
  end

  @doc "The file downloaded and uploaded: `mb` MiB of random bytes, made once in `dir`."
  @spec data_file(Path.t(), pos_integer()) :: Path.t()
  def data_file(dir, mb) do
    path = Path.join(dir, "islet_bench_#{mb}MiB.bin")
    size = mb * 1_048_576

    unless match?({:ok, %File.Stat{size: ^size}}, File.stat(path)) do
      File.mkdir_p!(dir)
      tmp = path <> ".tmp"
      chunk = :crypto.strong_rand_bytes(1_048_576)

      File.open!(tmp, [:write, :binary, :raw], fn io ->
        for _ <- 1..mb, do: IO.binwrite(io, chunk)
      end)

      File.rename!(tmp, path)
    end

    path
  end

  ## Results

  defp results(pairs, samples, config, server_cpus, client_cpu, elapsed_s) do
    rows =
      for pair <- pairs,
          workload <- config.workloads,
          metric <- Workloads.metrics(workload) do
        candidate =
          side(pair, pair.candidate, samples[{pair.id, workload, pair.candidate}], metric)

        reference =
          side(pair, pair.reference, samples[{pair.id, workload, pair.reference}], metric)

        ratio = ratio(candidate.median, reference.median)
        goal = pair.goals[{workload, metric.key}]

        %{
          id: "#{pair.id}.#{workload}.#{metric.key}",
          pair: pair.id,
          pair_title: pair.title,
          workload: workload,
          workload_label: Workloads.label(workload),
          metric: metric.key,
          label: metric.label,
          better: metric.better,
          candidate: candidate,
          reference: reference,
          ratio: ratio,
          goal: goal && %{op: elem(goal, 0), value: elem(goal, 1)},
          met: goal && ratio && met?(ratio, goal),
          warnings:
            Enum.uniq(
              warnings(samples[{pair.id, workload, pair.candidate}]) ++
                warnings(samples[{pair.id, workload, pair.reference}])
            )
        }
      end

    failures =
      for pair <- pairs,
          workload <- config.workloads,
          module <- [pair.candidate, pair.reference],
          {run, {:error, reason}} <- samples[{pair.id, workload, module}] || [] do
        %{
          pair: pair.id,
          workload: workload,
          module: inspect(module),
          run: run,
          reason: brief(reason)
        }
      end

    %{meta: meta(config, server_cpus, client_cpu, elapsed_s), rows: rows, failures: failures}
  end

  defp side(pair, module, samples, metric) do
    samples = samples || []

    values =
      for {_run, {:ok, values, _}} <- samples,
          is_number(values[metric.key]),
          do: values[metric.key]

    sorted = Enum.sort(values)

    %{
      module: inspect(module),
      label: pair.labels[module],
      median: median(sorted),
      min: List.first(sorted),
      max: List.last(sorted),
      samples: values,
      failed: Enum.count(samples, &match?({_, {:error, _}}, &1))
    }
  end

  defp warnings(nil), do: []
  defp warnings(samples), do: for({_run, {:ok, _, warnings}} <- samples, w <- warnings, do: w)

  @doc "The median of a sorted list (`nil` when empty)."
  @spec median([number()]) :: number() | nil
  def median([]), do: nil

  def median(sorted) do
    n = length(sorted)
    middle = div(n, 2)

    if rem(n, 2) == 1,
      do: Enum.at(sorted, middle),
      else: (Enum.at(sorted, middle - 1) + Enum.at(sorted, middle)) / 2
  end

  defp ratio(candidate, reference)
       when is_number(candidate) and is_number(reference) and reference != 0,
       do: candidate / reference

  defp ratio(_candidate, _reference), do: nil

  defp met?(ratio, {:>=, value}), do: ratio >= value
  defp met?(ratio, {:<=, value}), do: ratio <= value

  defp meta(config, server_cpus, client_cpu, elapsed_s) do
    %{
      date: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601(),
      host: hostname(),
      cpu_model: cpu_model(),
      logical_cpus: System.schedulers(),
      otp: System.otp_release(),
      elixir: System.version(),
      schedulers: config.schedulers,
      server_cpus: server_cpus,
      client_cpu: client_cpu,
      runs: config.runs,
      duration_s: config.duration,
      connections: config.connections,
      idle_connections: config.idle_connections,
      file_bytes: config.file_mb * 1_048_576,
      downloads_per_sample: config.downloads,
      warmup_s: config.warmup,
      workloads: config.workloads,
      quick: config.quick,
      elapsed_s: elapsed_s,
      statistic: "median of runs, with min and max; ratio = candidate median / reference median",
      cpu_time: "server BEAM OS process, all threads, from /proc (schedstat, else stat)"
    }
  end

  defp hostname do
    case :inet.gethostname() do
      {:ok, name} -> List.to_string(name)
      _ -> "unknown"
    end
  end

  defp cpu_model do
    with {:ok, text} <- File.read("/proc/cpuinfo"),
         [_, model] <- Regex.run(~r/model name\s*:\s*(.+)/, text) do
      String.trim(model)
    else
      _ -> "unknown"
    end
  end
end

defmodule Islet.Bench.Runner do
  @moduledoc """
  Runs the benchmark: workload by workload, `runs` samples of each
  transport of each pair (`idle_runs` for the idle workload, whose memory
  figures vary little and whose samples are long), and reduces them to rows
  (median, min and max per transport, ratio of medians, goal verdicts,
  including goals against another row or pair).

  Samples are interleaved so that the figures compared were taken close
  together on a machine whose speed drifts: within a run the pairs take
  turns (TCP, then TLS), within a pair the transports alternate which goes
  first. So the TLS keep-alive figures set against Islet.TCP's come from the
  same minute, not from a pair run a few minutes earlier.

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
          idle_runs: pos_integer(),
          idle_connections: pos_integer(),
          idle_settle_max_ms: non_neg_integer(),
          file_mb: pos_integer(),
          downloads: pos_integer() | nil,
          handshake_client: Islet.Bench.Load.handshake_client(),
          handshake_clients: pos_integer() | nil,
          handshake_ms: pos_integer(),
          warmup: non_neg_integer(),
          workloads: [Workloads.workload()],
          pairs: [String.t() | Transports.pair()] | nil,
          nginx: boolean(),
          quick: boolean(),
          workdir: Path.t()
        }

  @typedoc """
  The results: `meta`, `rows`, `failures` and `outside_failures` (the
  outside references' failed samples, which do not fail the run); see
  `Islet.Bench.Report`.
  """
  @type results :: %{meta: map(), rows: [map()], failures: [map()], outside_failures: [map()]}

  @defaults %{
    schedulers: 1,
    duration: 2,
    connections: 50,
    runs: 3,
    idle_runs: 1,
    idle_connections: 10_000,
    # How long an idle sample may wait for RSS to settle after a GC.
    idle_settle_max_ms: 40_000,
    file_mb: 256,
    downloads: nil,
    # `mix islet.bench` gives {:hsload, path} (it builds the client).
    handshake_client: :s_time,
    handshake_clients: nil,
    handshake_ms: 500,
    warmup: 1,
    workloads: nil,
    pairs: nil,
    nginx: true,
    quick: false,
    workdir: nil
  }
  @quick %{
    duration: 1,
    runs: 1,
    idle_runs: 1,
    idle_connections: 500,
    idle_settle_max_ms: 0,
    file_mb: 16,
    downloads: 1,
    handshake_ms: 300,
    warmup: 0
  }

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
        "#{Enum.map_join(pairs, ", ", & &1.title)}: #{config.runs} run(s) of " <>
        Enum.map_join(config.workloads, ", ", fn
          :idle -> "#{Workloads.label(:idle)} (#{config.idle_runs} run(s))"
          workload -> Workloads.label(workload)
        end)
    )

    started = System.monotonic_time(:millisecond)

    {samples, seconds} =
      with_affinity(client_cpu, fn ->
        run_plan(pairs, config, server_cpus, client_cpu, file, report)
      end)

    elapsed_s = (System.monotonic_time(:millisecond) - started) / 1000
    timing = %{elapsed_s: elapsed_s, workload_s: seconds}
    results(pairs, samples, config, server_cpus, client_cpu, timing)
  end

  ## Running the samples

  defp run_plan(pairs, config, server_cpus, client_cpu, file, report) do
    envs = Enum.map(pairs, &pair_env(&1, config, server_cpus, client_cpu, file))

    plan =
      for workload <- Workloads.all(),
          run <- 1..runs(workload, config),
          env <- envs,
          workload in workloads(env.pair, config),
          module <- order(env.pair, run) ++ outside_for(env.outside, workload),
          do: {env, workload, run, module}

    # Children left behind by an exception halt when this process exits
    # (their stdin closes). Each transport's long-lived server serves all
    # its pair's workloads; the idle client serves both pairs.
    # Seconds per workload include starting servers and warming them up.
    {samples, seconds, children} =
      Enum.reduce(plan, {%{}, %{}, %{}}, fn {env, workload, run, module},
                                            {samples, seconds, children} ->
        pair = env.pair
        started = System.monotonic_time(:millisecond)
        {sample, children} = take_sample(workload, module, children, env)
        took = (System.monotonic_time(:millisecond) - started) / 1000
        report.(progress(pair, workload, run, runs(workload, config), module, sample, took))
        key = {pair.id, workload, module}
        samples = Map.update(samples, key, [{run, sample}], &(&1 ++ [{run, sample}]))
        {samples, Map.update(seconds, "#{pair.id}.#{workload}", took, &(&1 + took)), children}
      end)

    Enum.each(children, fn {_key, child} -> stop_child(child) end)
    {samples, seconds}
  end

  defp pair_env(pair, config, server_cpus, client_cpu, file) do
    context = %{
      client_cpu: client_cpu,
      connections: config.connections,
      duration: config.duration,
      file: file,
      file_bytes: File.stat!(file).size,
      downloads: config.downloads || pair.downloads,
      idle_connections: config.idle_connections,
      idle_settle_max_ms: config.idle_settle_max_ms,
      idle_listener: pair.idle_listener,
      handshake_client: config.handshake_client,
      handshake_clients: handshake_clients(config),
      handshake_ms: config.handshake_ms,
      server_cpu_count: server_cpus |> String.split(",") |> length(),
      scheme: pair.scheme,
      client_tls: pair.client_tls
    }

    %{
      pair: pair,
      config: config,
      outside: outside_modules(pair, config),
      context: context,
      server_cpus: server_cpus,
      listen_options: pair.listen_options.(config.workdir),
      extra_listeners: pair.extra_listeners.(config.workdir)
    }
  end

  # The pair's outside references (nginx) that are installed and not turned off.
  defp outside_modules(pair, config) do
    if config.nginx, do: Enum.filter(pair.outside, & &1.available?()), else: []
  end

  defp outside_for(modules, workload), do: Enum.filter(modules, &(workload in &1.workloads()))

  defp label(pair, module), do: Map.get(pair.labels, module) || module.label()

  # The pair's workloads among those asked for, in the order of `Workloads.all/0`.
  defp workloads(pair, config),
    do: Enum.filter(Workloads.for_pair(pair), &(&1 in config.workloads))

  # Handshakes in flight: hsload keeps 16 from its one process (enough to
  # keep a server that is twice as fast as the client busy); each s_time
  # process has one.
  defp handshake_clients(%{handshake_clients: n}) when is_integer(n), do: n
  defp handshake_clients(%{handshake_client: {:hsload, _}}), do: 16
  defp handshake_clients(%{handshake_client: :s_time}), do: 4

  defp handshake_client_name({:hsload, _path}), do: "islet_hsload"
  defp handshake_client_name(:s_time), do: "openssl s_time"

  defp runs(:idle, config), do: config.idle_runs
  defp runs(_workload, config), do: config.runs

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
        started =
          if module in env.outside,
            do: start_outside(module, env),
            else: start_server(module, env, true)

        case started do
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
        # The idle client's CPU time is not measured: it may use every CPU
        # (TLS handshakes cost it more than they cost the server).
        cpus = Enum.uniq(String.split(env.server_cpus, ",") ++ [env.context.client_cpu])

        case Child.start("idle client", cpus: Enum.join(cpus, ","), schedulers: length(cpus)) do
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
       [
         transport: module,
         listen_options: env.listen_options,
         extra_listeners: env.extra_listeners,
         check_resumption: env.pair.scheme == "https",
         download: env.context.file
       ]}

    with {:ok, child} <- Child.start(name, options) do
      case Child.call(child, serve, 30_000) do
        {:ok, {:ok, %{main: port} = ports}} ->
          server = %{child: child, port: port, ports: ports}
          if warm_up?, do: Workloads.warm_up(server, env.context, env.config.warmup)
          {:ok, server}

        other ->
          Child.stop(child)
          {:error, {:serve_failed, other}}
      end
    end
  end

  # An outside reference serves the pair's certificates, as its BEAM servers
  # do: the main listener's and the extra ones'.
  defp start_outside(module, env) do
    certificates =
      Map.new([{:main, env.listen_options} | env.extra_listeners], fn {name, options} ->
        {name, {Keyword.fetch!(options, :certfile), Keyword.fetch!(options, :keyfile)}}
      end)

    dir = Path.join(env.config.workdir, module.label())

    with {:ok, server} <- module.start(dir, env.server_cpus, certificates) do
      {:ok, %{nginx: server, port: server.ports.main, ports: server.ports}}
    end
  end

  defp stop_child(%{nginx: nginx}), do: Islet.Bench.Nginx.stop(nginx)
  defp stop_child(%{child: child}), do: Child.stop(child)
  defp stop_child(child), do: Child.stop(child)

  defp progress(pair, workload, run, runs, module, sample, seconds) do
    head =
      "[#{pair.id}] #{String.pad_trailing(Workloads.label(workload), 12)} run #{run}/#{runs} " <>
        String.pad_trailing(label(pair, module), 10) <>
        String.pad_leading("#{round(seconds)} s", 5)

    case sample do
      {:ok, values, warnings} ->
        figures =
          Enum.map_join(Workloads.metrics(workload), "  ", fn metric ->
            "#{metric.label} #{Islet.Bench.Report.format_number(values[metric.key])}"
          end)

        Enum.join(
          [head, figures | busy(values)] ++ Enum.map(warnings, &"(#{warning_text(&1)})"),
          "  "
        )

      {:error, reason} ->
        "#{head}  FAILED: #{brief(reason)}"
    end
  end

  defp busy(%{busy: busy}) do
    {client, server} = Map.pop(busy, :client)

    percents =
      Enum.map_join(server, " ", fn
        {:server, fraction} -> "#{round(fraction * 100)}%"
        {key, fraction} -> "#{key} #{round(fraction * 100)}%"
      end)

    ["server busy #{percents}"] ++
      if(client, do: ["client CPU #{round(client * 100)}%"], else: [])
  end

  defp busy(_values), do: []

  defp warning_text({_metrics, text}), do: text
  defp warning_text(text), do: text

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

  defp results(pairs, samples, config, server_cpus, client_cpu, timing) do
    outside_of = Map.new(pairs, &{&1.id, outside_modules(&1, config)})

    rows =
      for pair <- pairs,
          workload <- workloads(pair, config),
          metric <- Workloads.metrics(workload) do
        candidate =
          side(pair, pair.candidate, samples[{pair.id, workload, pair.candidate}], metric)

        reference =
          side(pair, pair.reference, samples[{pair.id, workload, pair.reference}], metric)

        ratio = ratio(candidate.median, reference.median)
        goal = pair.goals[{workload, metric.key}]

        outside =
          for module <- outside_for(outside_of[pair.id], workload),
              module_samples = samples[{pair.id, workload, module}],
              module_samples != nil,
              do: side(pair, module, module_samples, metric)

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
          outside: outside,
          checks:
            Map.get(pair.checks, {workload, metric.key}, []) ++
              outside_checks(outside, goal, reference.label),
          warnings:
            Enum.uniq(
              warnings(samples[{pair.id, workload, pair.candidate}], metric.key) ++
                warnings(samples[{pair.id, workload, pair.reference}], metric.key)
            )
        }
      end

    rows = Enum.map(rows, &resolve_checks(&1, rows))

    # A failed sample of the pair's transports fails the run; one of an
    # outside reference (nginx) is only reported: the figures it would have
    # added read n/a.
    failed = fn modules_of ->
      for pair <- pairs,
          workload <- workloads(pair, config),
          module <- modules_of.(pair, workload),
          {run, {:error, reason}} <- samples[{pair.id, workload, module}] || [] do
        %{
          pair: pair.id,
          workload: workload,
          module: inspect(module),
          run: run,
          reason: brief(reason)
        }
      end
    end

    failures = failed.(fn pair, _workload -> [pair.candidate, pair.reference] end)

    outside_failures =
      failed.(fn pair, workload -> outside_for(outside_of[pair.id], workload) end)

    %{
      meta: meta(config, outside_of, pairs, server_cpus, client_cpu, timing),
      rows: rows,
      failures: failures,
      outside_failures: outside_failures
    }
  end

  defp side(pair, module, samples, metric) do
    samples = samples || []

    by_run =
      for {run, {:ok, values, _}} <- samples,
          is_number(values[metric.key]),
          do: {run, values[metric.key]}

    values = Enum.map(by_run, &elem(&1, 1))
    sorted = Enum.sort(values)

    %{
      module: inspect(module),
      label: label(pair, module),
      median: median(sorted),
      min: List.first(sorted),
      max: List.last(sorted),
      samples: values,
      by_run: Map.new(by_run),
      failed: Enum.count(samples, &match?({_, {:error, _}}, &1))
    }
  end

  # Where a row has a goal, each outside reference that ran adds two
  # figures without goals of their own: it against the reference (what the
  # goal was set from) and the candidate against it.
  defp outside_checks(_outside, nil, _reference), do: []

  defp outside_checks(outside, _goal, reference) do
    Enum.flat_map(outside, fn side ->
      [
        %{label: "#{side.label} vs #{reference}", against: {:outside, side.module, :reference}},
        %{label: "vs #{side.label}", against: {:outside, side.module, :candidate}}
      ]
    end)
  end

  defp warnings(nil, _metric), do: []

  defp warnings(samples, metric) do
    for {_run, {:ok, _, warnings}} <- samples,
        warning <- warnings,
        applies?(warning, metric),
        do: warning_text(warning)
  end

  defp applies?({metrics, _text}, metric), do: metric in metrics
  defp applies?(_text, _metric), do: true

  # A check's quotient: this row's candidate median over another pair's
  # candidate median (same workload and metric), this row's ratio over
  # another row's ratio, or an outside reference against this row's
  # reference or candidate (paired by run); nil when that row did not run
  # or has no figure.
  defp resolve_checks(row, rows) do
    checks =
      Enum.map(row.checks, fn %{label: label, against: against} = check ->
        goal = check[:goal]

        {quotient, other} =
          case against do
            {:outside, module, side} ->
              outside = Enum.find(row.outside, &(&1.module == module))

              quotient =
                case side do
                  :reference -> paired_ratio(outside.by_run, row.reference.by_run)
                  :candidate -> paired_ratio(row.candidate.by_run, outside.by_run)
                end

              {quotient, %{id: outside.label}}

            {:candidate_of, pair_id} ->
              other = find_row(rows, pair_id, row.workload, row.metric)
              {paired_ratio(row.candidate.by_run, other && other.candidate.by_run), other}

            {:ratio_of, workload, metric} ->
              other = find_row(rows, row.pair, workload, metric)
              {ratio(row.ratio, other && other.ratio), other}
          end

        %{
          label: label,
          against: other && other.id,
          quotient: quotient,
          goal: goal && %{op: elem(goal, 0), value: elem(goal, 1)},
          met: goal && quotient && met?(quotient, goal)
        }
      end)

    %{row | checks: checks}
  end

  # The median of run-by-run quotients (runs both sides have a figure for).
  defp paired_ratio(_mine, nil), do: nil

  defp paired_ratio(mine, theirs) do
    mine
    |> Enum.flat_map(fn {run, value} ->
      case ratio(value, theirs[run]) do
        nil -> []
        q -> [q]
      end
    end)
    |> Enum.sort()
    |> median()
  end

  defp find_row(rows, pair, workload, metric),
    do: Enum.find(rows, &(&1.pair == pair and &1.workload == workload and &1.metric == metric))

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

  defp meta(config, outside_of, pairs, server_cpus, client_cpu, timing) do
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
      idle_runs: config.idle_runs,
      pairs: Enum.map(pairs, & &1.id),
      outside: outside_meta(outside_of),
      duration_s: config.duration,
      connections: config.connections,
      idle_connections: config.idle_connections,
      idle_settle_max_ms: config.idle_settle_max_ms,
      file_bytes: config.file_mb * 1_048_576,
      downloads_per_sample: Map.new(pairs, &{&1.id, config.downloads || &1.downloads}),
      handshake_client: handshake_client_name(config.handshake_client),
      handshake_clients: handshake_clients(config),
      handshake_window_ms: config.handshake_ms,
      warmup_s: config.warmup,
      workloads: config.workloads,
      quick: config.quick,
      elapsed_s: timing.elapsed_s,
      workload_s: Map.new(timing.workload_s, fn {key, s} -> {key, Float.round(s * 1.0, 1)} end),
      statistic: "median of runs, with min and max; ratio = candidate median / reference median",
      cpu_time: "server BEAM OS process, all threads, from /proc (schedstat, else stat)"
    }
  end

  defp outside_meta(outside_of) do
    for module <- outside_of |> Map.values() |> List.flatten() |> Enum.uniq(),
        into: %{},
        do: {module.label(), module.version()}
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

defmodule Islet.Bench.Workloads do
  @moduledoc """
  The workloads, their metrics, and how one sample of each is measured.

    * `:keepalive` - wrk, `GET /` on keep-alive connections: requests/s,
      p50/p99 latency, server CPU seconds per 100k requests.
    * `:close` - the same with `Connection: close` (a connection per
      request): connections/s, server CPU seconds per 100k connections.
      Over TLS, wrk negotiates TLS 1.3 and, the servers issuing no session
      tickets, makes a full handshake per connection (it would resume TLS
      1.2 sessions: it keeps its `SSL` objects across connections).
    * `:handshake` (TLS only) - full TLS handshakes, with an ECDSA P-256
      and an RSA-2048 certificate, in TLS 1.3 and in TLS 1.2 (four windows
      per sample): handshakes per second (`hs/s`) and per second of server
      CPU (`hs/CPU-s`, what the server would sustain on a CPU of its own;
      each handshake is a whole connection: accept, handler, close).
      The client is the benchmark's own `islet_hsload` (`bench/hsload.cpp`:
      one process, 16 handshakes in flight, a new session per connection,
      never resumed, handshake only, no request; `openssl s_time -new`
      processes with `--handshake-client s_time`) on the client CPU.
      Rates are the server's completed handshakes over a window
      timed inside the server BEAM, after a ramp-up. The server counts
      resumed sessions and failed handshakes (warnings when any), and a
      warning says when the server was less than 85% busy: the client
      (OpenSSL 3.0: about 0.5 ms of CPU per handshake, 1 ms for s_time)
      then limits `hs/s`,
      and `hs/CPU-s` is the figure that compares the servers.
    * `:download` - curl fetches a file the server sends with `sendfile/4`,
      several times per sample on one connection (4 by default over TCP,
      to average out noise: one 256 MiB transfer takes well under a second;
      once over TLS, slower): MB/s, server CPU seconds per GB.
    * `:upload` - curl PUTs the same file, the server reads it with passive
      `recv/3`: MB/s, server CPU seconds per GB.
    * `:idle` - the idle client opens many keep-alive connections (one
      request each) and holds them: BEAM bytes (`:erlang.memory(:total)`),
      RSS bytes and processes per connection, deltas over a baseline, each
      after a full garbage collection, in a fresh server BEAM. Over TLS the
      client is `:ssl` (TLS 1.3, one X25519 key share: full handshakes) on
      the pair's idle listener (ECDSA, the cheaper handshake); the idle
      client may use every CPU, its time not being measured.

  Server CPU is the server BEAM's own CPU time, all threads, read from
  `/proc` (see `Islet.Bench.OS`), and "server busy" that time over the
  wall time of the measurement and the server's CPUs: below 85%, the
  client (one thread on one CPU) or other load limits the rate, and CPU
  per request, connection or handshake compares the servers better than
  the rate. MB is 10^6 bytes, GB 10^9.
  """

  alias Islet.Bench.{Child, Load, Nginx, OS}

  @typedoc "A workload."
  @type workload :: :keepalive | :close | :handshake | :download | :upload | :idle

  @typedoc "A metric of a workload: `better` says which way is good."
  @type metric :: %{key: atom(), label: String.t(), better: :higher | :lower}

  @typedoc """
  A warning of a sample: a text for every metric of the workload, or
  `{metric_keys, text}` for some.
  """
  @type warning :: String.t() | {[atom()], String.t()}

  @typedoc "One measurement: values per metric and warnings, or why it failed."
  @type sample :: {:ok, %{atom() => number()}, [warning()]} | {:error, term()}

  @typedoc """
  A running server child: the main listener's port, and every listener's
  (`:main` and the pair's extra ones) by name.
  """
  @type server :: %{
          child: Child.t(),
          port: :inet.port_number(),
          ports: %{atom() => :inet.port_number()}
        }

  @typedoc "What a measurement needs to know (built by `Islet.Bench.Runner`)."
  @type context :: %{
          client_cpu: String.t(),
          connections: pos_integer(),
          duration: pos_integer(),
          file: Path.t(),
          file_bytes: pos_integer(),
          downloads: pos_integer(),
          idle_connections: pos_integer(),
          idle_settle_max_ms: non_neg_integer(),
          idle_listener: atom(),
          handshake_client: Load.handshake_client(),
          handshake_clients: pos_integer(),
          handshake_ms: pos_integer(),
          server_cpu_count: pos_integer(),
          scheme: String.t(),
          client_tls: keyword() | nil
        }

  @doc "All workloads, in the order they run."
  @spec all() :: [workload()]
  def all, do: [:keepalive, :close, :handshake, :download, :upload, :idle]

  @doc "The workloads of `all/0` that apply to a transport pair, in order."
  @spec for_pair(%{workloads: [workload()]}) :: [workload()]
  def for_pair(pair), do: Enum.filter(all(), &(&1 in pair.workloads))

  @doc "The workload's name in tables."
  @spec label(workload()) :: String.t()
  def label(:keepalive), do: "keep-alive"
  def label(:close), do: "conn/request"
  def label(:handshake), do: "handshake"
  def label(:download), do: "download"
  def label(:upload), do: "upload"
  def label(:idle), do: "idle conns"

  # The handshake windows: metric key prefix, label, listener, s_time version flag.
  @handshakes [
    {:ecdsa13, "ECDSA TLS1.3", :ecdsa, "tls1_3"},
    {:rsa13, "RSA TLS1.3", :main, "tls1_3"},
    {:ecdsa12, "ECDSA TLS1.2", :ecdsa, "tls1_2"},
    {:rsa12, "RSA TLS1.2", :main, "tls1_2"}
  ]
  @handshake_labels for {key, label, _, _} <- @handshakes, do: {key, label}
  @handshake_ramp_ms 150

  @doc "The workload's metrics, in table order."
  @spec metrics(workload()) :: [metric()]
  def metrics(:keepalive) do
    [
      %{key: :req_per_s, label: "requests/s", better: :higher},
      %{key: :p50_ms, label: "p50 latency ms", better: :lower},
      %{key: :p99_ms, label: "p99 latency ms", better: :lower},
      %{key: :cpu_s_per_100k, label: "CPU s/100k req", better: :lower}
    ]
  end

  def metrics(:close) do
    [
      %{key: :conn_per_s, label: "connections/s", better: :higher},
      %{key: :cpu_s_per_100k, label: "CPU s/100k conn", better: :lower}
    ]
  end

  def metrics(:handshake) do
    rates =
      for {key, label} <- @handshake_labels,
          do: %{key: :"#{key}_per_s", label: "#{label} hs/s", better: :higher}

    cpu =
      for {key, label} <- @handshake_labels,
          do: %{key: :"#{key}_per_cpu_s", label: "#{label} hs/CPU-s", better: :higher}

    rates ++ cpu
  end

  def metrics(transfer) when transfer in [:download, :upload] do
    [
      %{key: :mb_per_s, label: "MB/s", better: :higher},
      %{key: :cpu_s_per_gb, label: "CPU s/GB", better: :lower}
    ]
  end

  def metrics(:idle) do
    [
      %{key: :beam_bytes_per_conn, label: "BEAM bytes/conn", better: :lower},
      %{key: :rss_bytes_per_conn, label: "RSS bytes/conn", better: :lower},
      %{key: :processes_per_conn, label: "processes/conn", better: :lower}
    ]
  end

  @doc "Parses a workload name as given to `--only`."
  @spec parse(String.t()) :: {:ok, workload()} | :error
  def parse(name) do
    case Enum.find(all(), &(Atom.to_string(&1) == name)) do
      nil -> :error
      workload -> {:ok, workload}
    end
  end

  @doc """
  Measures one sample of a workload on a long-lived server (every workload
  but `:idle`, see `measure_idle/3`).
  """
  @spec measure(workload(), server(), context()) :: sample()
  def measure(:keepalive, server, context) do
    measure_wrk(server, context, [], fn wrk, cpu_s, delta ->
      %{
        req_per_s: wrk.requests_per_s,
        p50_ms: wrk.p50_ms,
        p99_ms: wrk.p99_ms,
        cpu_s_per_100k: per(cpu_s, delta.requests, 100_000)
      }
    end)
  end

  def measure(:close, server, context) do
    measure_wrk(server, context, ["Connection: close"], fn wrk, cpu_s, delta ->
      %{conn_per_s: wrk.requests_per_s, cpu_s_per_100k: per(cpu_s, delta.accepted, 100_000)}
    end)
  end

  def measure(:download, server, context) do
    url = url(server, context, "/download")
    cache_file(context.file)

    measure_server(server, fn ->
      Load.download(url, cpu: context.client_cpu, timeout: 300, count: context.downloads)
    end)
    |> transfer_values(context.file_bytes * context.downloads, fn _delta -> [] end)
  end

  def measure(:upload, server, context) do
    url = url(server, context, "/upload")
    cache_file(context.file)

    measure_server(server, fn ->
      Load.upload(url, context.file, cpu: context.client_cpu, timeout: 300)
    end)
    |> transfer_values(context.file_bytes, fn delta ->
      if delta.body_bytes == context.file_bytes,
        do: [],
        else: ["server read #{delta.body_bytes} body bytes, expected #{context.file_bytes}"]
    end)
  end

  def measure(:handshake, server, context) do
    Enum.reduce_while(@handshakes, {:ok, %{}, []}, fn {key, _label, listener, version},
                                                      {:ok, values, warnings} ->
      case measure_handshakes(server, Map.fetch!(server.ports, listener), version, context) do
        {:ok, rate, capacity, busy, more} ->
          metrics = [:"#{key}_per_s", :"#{key}_per_cpu_s"]

          values =
            values
            |> Map.merge(%{:"#{key}_per_s" => rate, :"#{key}_per_cpu_s" => capacity})
            |> Map.update(:busy, %{key => busy}, &Map.put(&1, key, busy))

          {:cont, {:ok, values, warnings ++ Enum.map(more, &{metrics, "#{key}: #{&1}"})}}

        {:error, reason} ->
          {:halt, {:error, {key, reason}}}
      end
    end)
  end

  # Reads the transferred file once before a sample, outside its window, so
  # that every sample sends it from the page cache. The kernel reclaims
  # pages left idle for some minutes (on the VM of 2026-12-06, 60 of a
  # 64 MiB file within the hour): the run's first sample, the candidate's,
  # read part of the file from disk and measured the disk (TCP download
  # samples of 1,287 and 1,365 MB/s among 2,700-2,900).
  defp cache_file(path) do
    File.open!(path, [:read, :raw, :binary], &read_through/1)
    :ok
  end

  defp read_through(io) do
    case :file.read(io, 4_194_304) do
      {:ok, _data} -> read_through(io)
      _eof_or_error -> :ok
    end
  end

  @doc "A warm-up wrk run (not measured) of `seconds` on a new server."
  @spec warm_up(server(), context(), non_neg_integer()) :: :ok
  def warm_up(_server, _context, 0), do: :ok

  def warm_up(server, context, seconds) do
    _ =
      Load.wrk(url(server, context, "/"),
        cpu: context.client_cpu,
        connections: context.connections,
        duration: seconds
      )

    :ok
  end

  defp measure_wrk(server, context, headers, values) do
    options = [
      cpu: context.client_cpu,
      connections: context.connections,
      duration: context.duration,
      headers: headers
    ]

    run = fn ->
      before = OS.cpu_ticks(context.client_cpu)

      with {:ok, wrk} <- Load.wrk(url(server, context, "/"), options),
           do: {:ok, {wrk, fraction(before, OS.cpu_ticks(context.client_cpu))}}
    end

    case measure_server(server, run) do
      {:ok, {%{requests: 0} = wrk, _}, _cpu_s, delta} ->
        {:error, {:no_responses, wrk_errors: wrk.socket_errors, server_errors: delta.errors}}

      {:ok, {%{non_2xx: bad} = wrk, _}, _cpu_s, _delta} when bad > 0 ->
        {:error, {:non_2xx_responses, bad, of: wrk.requests}}

      {:ok, {wrk, client}, cpu_s, delta} ->
        wrk_warnings =
          if wrk.socket_errors > 0, do: ["wrk: #{wrk.socket_errors} socket errors"], else: []

        busy = cpu_s / delta.seconds / context.server_cpu_count
        shares = if client, do: %{server: busy, client: client}, else: %{server: busy}
        values = Map.put(values.(wrk, cpu_s, delta), :busy, shares)

        {:ok, values,
         wrk_warnings ++
           server_warnings(delta) ++ busy_warnings(busy, "rate") ++ client_warnings(client)}

      {:error, _} = error ->
        error
    end
  end

  # One window of full handshakes: the clients start, and after a ramp-up
  # the server is sampled twice, `handshake_ms` apart.
  defp measure_handshakes(server, port, version, context) do
    window = context.handshake_ms

    options = [
      cpu: context.client_cpu,
      client: context.handshake_client,
      clients: context.handshake_clients,
      limit_ms: @handshake_ramp_ms + window + 150
    ]

    during = fn ->
      Process.sleep(@handshake_ramp_ms)

      with {:ok, before} <- sample(server) do
        Process.sleep(window)

        with {:ok, later} <- sample(server) do
          {:ok, before, later}
        end
      end
    end

    case Load.handshakes("127.0.0.1", port, version, options, during) do
      {:ok, {:ok, before, later}} ->
        seconds = (later.at_ns - before.at_ns) / 1.0e9
        cpu_s = (later.cpu_ns - before.cpu_ns) / 1.0e9

        delta =
          Map.new(later.counters, fn {key, value} -> {key, value - before.counters[key]} end)

        handshake_values(delta, seconds, cpu_s, context)

      {:ok, {:error, _} = error} ->
        error

      {:error, _} = error ->
        error
    end
  end

  # A server's sample: a benchmark server BEAM's, or nginx's (the outside
  # reference, see Islet.Bench.Nginx).
  defp sample(%{child: child}), do: Child.call(child, :sample, 10_000)
  defp sample(%{nginx: nginx}), do: Nginx.sample(nginx)

  defp handshake_values(%{accepted: 0} = delta, _seconds, _cpu_s, _context),
    do: {:error, {:no_handshakes, failed: delta.failed_handshakes, errors: delta.errors}}

  defp handshake_values(delta, seconds, cpu_s, context) do
    busy = cpu_s / seconds / context.server_cpu_count
    # The clients of the window before were stopped mid-handshake: a server
    # that lags behind may see those fail only now.
    failed = delta.failed_handshakes - context.handshake_clients

    warnings =
      Enum.reject(
        [
          delta.resumed > 0 &&
            "#{delta.resumed} of #{delta.accepted} handshakes resumed a session",
          failed > 0 && "#{delta.failed_handshakes} handshakes failed in a window",
          delta.errors > 0 && "server: #{delta.errors} transport errors or crashes"
        ],
        &(&1 == false)
      ) ++ busy_warnings(busy, "hs/s (compare hs/CPU-s)")

    {:ok, delta.accepted / seconds, delta.accepted / cpu_s, busy, warnings}
  end

  defp transfer_values({:ok, result, cpu_s, delta}, expected_bytes, check) do
    cond do
      result.status != 200 ->
        {:error, {:http_status, result.status}}

      result.bytes != expected_bytes ->
        {:error, {:transferred, result.bytes, :expected, expected_bytes}}

      true ->
        values = %{
          mb_per_s: result.bytes / result.seconds / 1.0e6,
          cpu_s_per_gb: cpu_s / (result.bytes / 1.0e9)
        }

        {:ok, values, check.(delta) ++ server_warnings(delta)}
    end
  end

  defp transfer_values({:error, _} = error, _expected_bytes, _check), do: error

  # Runs the client between two samples of the server; returns the client's
  # result, the server's CPU seconds and the change of its counters (with
  # `:seconds`, the wall time between the samples).
  defp measure_server(%{child: child}, client) do
    with {:ok, before} <- Child.call(child, :sample, 10_000),
         {:ok, result} <- client.(),
         {:ok, later} <- Child.call(child, :sample, 10_000) do
      cpu_s = (later.cpu_ns - before.cpu_ns) / 1.0e9
      delta = Map.new(later.counters, fn {key, value} -> {key, value - before.counters[key]} end)
      {:ok, result, cpu_s, Map.put(delta, :seconds, (later.at_ns - before.at_ns) / 1.0e9)}
    end
  end

  @busy 0.85

  # The server was not kept busy: the client limits the rate.
  defp busy_warnings(busy, _what) when busy >= @busy, do: []

  defp busy_warnings(_busy, what) do
    [
      "server CPU < #{round(@busy * 100)}% busy in a sample: #{what} limited by the client " <>
        "(or by other load on the machine)"
    ]
  end

  # How busy the client's CPU was between two cpu_ticks readings (nil when
  # /proc/stat could not tell).
  defp fraction({:ok, {busy0, total0}}, {:ok, {busy1, total1}}) when total1 > total0,
    do: (busy1 - busy0) / (total1 - total0)

  defp fraction(_, _), do: nil

  @client_saturated 0.95

  # wrk used its whole CPU: the rate is the load generator's, and a server
  # that waits for it pays a wake-up per request or two (CPU per request is
  # higher than at full load).
  defp client_warnings(client) when is_float(client) and client >= @client_saturated do
    [
      "client CPU #{round(client * 100)}% busy: requests/s is the load generator's limit, " <>
        "and the server, waiting for it, pays wake-ups (compare CPU per request)"
    ]
  end

  defp client_warnings(_client), do: []

  defp server_warnings(delta) do
    Enum.reject(
      [
        delta.errors > 0 && "server: #{delta.errors} transport errors or crashes",
        delta.resumed > 0 && "#{delta.resumed} of #{delta.accepted} TLS sessions resumed"
      ],
      &(&1 == false)
    )
  end

  defp per(_cpu_s, 0, _unit), do: nil
  defp per(cpu_s, count, unit), do: cpu_s / count * unit

  defp url(%{port: port}, context, path), do: "#{context.scheme}://127.0.0.1:#{port}#{path}"

  @doc """
  Measures one sample of the idle workload on a fresh server: warms up with
  a few connections, takes a baseline, has the idle client open
  `context.idle_connections` connections to the pair's idle listener and
  measures again.
  """
  @idle_settle_ms 5_000

  @spec measure_idle(server(), Child.t(), context()) :: sample()
  def measure_idle(%{child: server, ports: ports}, client, context) do
    count = context.idle_connections
    port = Map.fetch!(ports, context.idle_listener)
    open = {:open, {127, 0, 0, 1}, port, nil, [tls: context.client_tls]}

    with {:ok, {:ok, _, _}} <- Child.call(client, put_elem(open, 3, 100), 60_000),
         {:ok, :ok} <- Child.call(client, :close_all, 60_000),
         {:ok, {:ok, 0}} <- Child.call(server, {:await_live, 0, 10_000}, 15_000),
         {:ok, :ok} <- Child.call(server, :gc, 30_000),
         {:ok, {:ok, _}} <- settle_rss(server, context),
         {:ok, before} <- Child.call(server, :sample, 10_000),
         {:ok, {:ok, opened, failed}} <- Child.call(client, put_elem(open, 3, count), 300_000),
         :ok <- if(opened > 0, do: :ok, else: {:error, {:no_connection_served, failed: failed}}),
         {:ok, {:ok, ^opened}} <- Child.call(server, {:await_live, opened, 30_000}, 35_000),
         # Idle means idle for a while: what a transport keeps only for
         # connections in use (Islet.TLS frees cipher contexts after 2-4 s
         # without records) is not counted for the last ones opened.
         :ok <- Process.sleep(@idle_settle_ms),
         {:ok, :ok} <- Child.call(server, :gc, 30_000),
         {:ok, {:ok, _}} <- settle_rss(server, context),
         {:ok, later} <- Child.call(server, :sample, 10_000),
         {:ok, :ok} <- Child.call(client, :close_all, 120_000) do
      values = %{
        beam_bytes_per_conn: (later.memory - before.memory) / opened,
        rss_bytes_per_conn: (later.rss - before.rss) / opened,
        processes_per_conn: (later.processes - before.processes) / opened
      }

      resumed = later.counters.resumed - before.counters.resumed

      warnings =
        Enum.reject(
          [
            failed > 0 && "#{failed} of #{count} connections failed",
            resumed > 0 && "#{resumed} of #{opened} TLS sessions resumed"
          ],
          &(&1 == false)
        )

      {:ok, values, warnings}
    else
      {:ok, unexpected} -> {:error, {:unexpected, unexpected}}
      {:error, _} = error -> error
    end
  end

  # RSS right after the forced collection is still falling (see
  # Islet.Bench.OS.await_rss_settled/2): the samples wait until it stays put.
  defp settle_rss(server, context) do
    max_ms = context.idle_settle_max_ms
    Child.call(server, {:settle_rss, max_ms}, max_ms + 10_000)
  end
end

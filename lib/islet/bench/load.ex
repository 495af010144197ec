defmodule Islet.Bench.Load do
  @moduledoc """
  The external load generators, each a separate OS process pinned with
  `taskset` to the client core and bounded with `timeout`: `wrk` for
  request/response workloads, `curl` for the download and the upload,
  the benchmark's own `islet_hsload` (or `openssl s_time`) for full TLS
  handshakes. URLs may be `https://` (wrk and
  curl speak TLS; curl is given `-k`).
  """

  @typedoc "What `wrk/2` measured."
  @type wrk_result :: %{
          requests_per_s: float(),
          requests: non_neg_integer(),
          p50_ms: float(),
          p99_ms: float(),
          socket_errors: non_neg_integer(),
          non_2xx: non_neg_integer()
        }

  @typedoc "A full-handshake client: the benchmark's own (its path) or `openssl s_time`."
  @type handshake_client :: {:hsload, Path.t()} | :s_time

  @typedoc "What a curl transfer measured."
  @type transfer_result :: %{
          bytes: non_neg_integer(),
          seconds: float(),
          status: non_neg_integer()
        }

  @programs ~w(timeout taskset wrk curl)

  @doc """
  The programs the load generators run (besides the benchmark's own
  handshake client, which it builds, and `openssl` for `s_time`):
  `scripts/setup.sh` installs those not in every Debian system.
  """
  @spec programs() :: [String.t()]
  def programs, do: @programs

  @doc "Those of `programs/0` that are not in `PATH`."
  @spec missing_programs() :: [String.t()]
  def missing_programs, do: Enum.reject(@programs, &System.find_executable/1)

  @doc """
  Runs `wrk -t1 -c CONNECTIONS -d DURATIONs --latency URL` (plus `-H` headers).

  Options: `:cpu` (required), `:connections`, `:duration` (seconds),
  `:headers` (list of strings).
  """
  @spec wrk(String.t(), keyword()) :: {:ok, wrk_result()} | {:error, term()}
  def wrk(url, options) do
    duration = Keyword.fetch!(options, :duration)
    headers = Enum.flat_map(Keyword.get(options, :headers, []), &["-H", &1])

    args =
      ["-t1", "-c#{Keyword.fetch!(options, :connections)}", "-d#{duration}s", "--latency"] ++
        ["--timeout", "5s"] ++ headers ++ [url]

    with {:ok, output} <- run(Keyword.fetch!(options, :cpu), "wrk", args, duration + 20) do
      parse_wrk(output)
    end
  end

  @doc "Parses wrk's `--latency` report."
  @spec parse_wrk(String.t()) :: {:ok, wrk_result()} | {:error, term()}
  def parse_wrk(output) do
    with [_, rps] <- Regex.run(~r/Requests\/sec:\s+([\d.]+)/, output),
         [_, requests] <- Regex.run(~r/(\d+) requests in/, output),
         [_, p50, u50] <- Regex.run(~r/^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$/m, output),
         [_, p99, u99] <- Regex.run(~r/^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$/m, output) do
      socket_errors =
        case Regex.run(
               ~r/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/,
               output
             ) do
          nil -> 0
          [_ | counts] -> counts |> Enum.map(&String.to_integer/1) |> Enum.sum()
        end

      non_2xx =
        case Regex.run(~r/Non-2xx or 3xx responses: (\d+)/, output) do
          nil -> 0
          [_, n] -> String.to_integer(n)
        end

      {:ok,
       %{
         requests_per_s: to_float(rps),
         requests: String.to_integer(requests),
         p50_ms: to_ms(p50, u50),
         p99_ms: to_ms(p99, u99),
         socket_errors: socket_errors,
         non_2xx: non_2xx
       }}
    else
      _ -> {:error, {:unparsable_wrk_output, output}}
    end
  end

  defp to_float(text) do
    {value, _} = Float.parse(text)
    value
  end

  defp to_ms(value, "us"), do: to_float(value) / 1000
  defp to_ms(value, "ms"), do: to_float(value)
  defp to_ms(value, "s"), do: to_float(value) * 1000
  defp to_ms(value, "m"), do: to_float(value) * 60_000

  @doc """
  Downloads `url` with curl into `/dev/null`, `:count` times (default 1) on
  one keep-alive connection; bytes and seconds are the totals, status the
  first non-200 one, if any. Options: `:cpu`, `:timeout` (seconds), `:count`.
  """
  @spec download(String.t(), keyword()) :: {:ok, transfer_result()} | {:error, term()}
  def download(url, options) do
    count = Keyword.get(options, :count, 1)
    outputs = Enum.flat_map(1..count, fn _ -> ["-o", "/dev/null"] end)
    urls = List.duplicate(url, count)
    curl(outputs ++ ["-w", "%{http_code} %{size_download} %{time_total}\\n" | urls], options)
  end

  @doc """
  Uploads the file at `path` to `url` with `curl -T` (a PUT with a
  content-length, no `Expect: 100-continue`). Options as `download/2`.
  """
  @spec upload(String.t(), Path.t(), keyword()) :: {:ok, transfer_result()} | {:error, term()}
  def upload(url, path, options) do
    args = ["-o", "/dev/null", "-H", "Expect:", "-T", path]
    curl(args ++ ["-w", "%{http_code} %{size_upload} %{time_total}\\n", url], options)
  end

  defp curl(args, options) do
    args = ["-sS", "-k", "--max-time", "#{Keyword.fetch!(options, :timeout)}"] ++ args

    with {:ok, output} <-
           run(Keyword.fetch!(options, :cpu), "curl", args, Keyword.fetch!(options, :timeout) + 5) do
      transfers =
        for line <- String.split(output, "\n", trim: true) do
          case String.split(line) do
            [status, bytes, seconds] ->
              {String.to_integer(status), String.to_integer(bytes), to_float(seconds)}

            _ ->
              nil
          end
        end

      if transfers == [] or nil in transfers do
        {:error, {:unparsable_curl_output, output}}
      else
        {:ok,
         %{
           status: Enum.find_value(transfers, 200, fn {s, _, _} -> s != 200 && s end),
           bytes: transfers |> Enum.map(&elem(&1, 1)) |> Enum.sum(),
           seconds: transfers |> Enum.map(&elem(&1, 2)) |> Enum.sum()
         }}
      end
    end
  end

  @doc """
  Makes full TLS handshakes (a new session each, never resumed; no request)
  against `host:port` with `version` (`"tls1_3"` or `"tls1_2"`), pinned to
  `:cpu`, for `:limit_ms`; calls `during` while they run and returns its
  result once the clients have ended. Fails if a client failed.

  `:client` says which: `{:hsload, path}`, the benchmark's own client
  (`bench/hsload.cpp`, CMake target `islet_hsload`), one process keeping
  `:clients` handshakes in flight; or `:s_time`, `:clients` `openssl s_time -new`
  processes, one handshake at a time each (about 1 ms of client CPU per
  handshake with OpenSSL 3.0, twice hsload's: a few of them on one CPU
  leave a fast server idle between handshakes).
  """
  @spec handshakes(String.t(), :inet.port_number(), String.t(), keyword(), (() -> result)) ::
          {:ok, result} | {:error, term()}
        when result: term()
  def handshakes(host, port, version, options, during) do
    limit_ms = Keyword.fetch!(options, :limit_ms)
    cpu = Keyword.fetch!(options, :cpu)
    clients = Keyword.fetch!(options, :clients)

    {programs, ok_status} =
      case Keyword.fetch!(options, :client) do
        {:hsload, hsload} ->
          args = [host, "#{port}", version, "#{clients}", "#{limit_ms / 1000}"]
          {[[hsload | args]], 0}

        :s_time ->
          openssl = executable!("openssl")
          args = ["-connect", "#{host}:#{port}", "-new", "-" <> version, "-time", "3600"]
          # s_time runs until stopped: `timeout` ends it (status 124).
          {List.duplicate([openssl, "s_time" | args] ++ no_ca_flags(openssl), clients), 124}
      end

    # hsload stops by itself at the limit; `timeout` bounds it anyway.
    seconds = if ok_status == 124, do: limit_ms / 1000, else: limit_ms / 1000 + 5

    ports =
      for program <- programs do
        Port.open({:spawn_executable, executable!("timeout")}, [
          :binary,
          :exit_status,
          :stderr_to_stdout,
          args: ["-k", "2", "#{seconds}", "taskset", "-c", cpu | program]
        ])
      end

    result = during.()
    statuses = Enum.map(ports, &await_exit(&1, "", limit_ms + 10_000))

    case Enum.find(statuses, &(elem(&1, 0) != ok_status)) do
      nil -> {:ok, result}
      {status, output} -> {:error, {:handshake_client, status, String.slice(output, -300, 300)}}
    end
  end

  defp await_exit(port, output, timeout) do
    receive do
      {^port, {:data, data}} ->
        await_exit(port, String.slice(output <> data, -2_000, 2_000), timeout)

      {^port, {:exit_status, status}} ->
        {status, output}
    after
      timeout ->
        Port.close(port)
        {:timed_out, output}
    end
  end

  # s_time would otherwise look every certificate up in the system's CA
  # store at each handshake (OpenSSL 3 reads the directory each time),
  # which costs the client more than the handshake.
  defp no_ca_flags(openssl) do
    case :persistent_term.get({__MODULE__, :no_ca_flags}, nil) do
      nil ->
        {help, _} = System.cmd(openssl, ["s_time", "-help"], stderr_to_stdout: true)
        flags = Enum.filter(~w(-no-CAfile -no-CApath -no-CAstore), &String.contains?(help, &1))
        :persistent_term.put({__MODULE__, :no_ca_flags}, flags)
        flags

      flags ->
        flags
    end
  end

  defp executable!(program),
    do: System.find_executable(program) || raise("#{program} not found in PATH")

  defp run(cpu, program, args, limit_s) do
    executable = executable!(program)
    timeout_args = ["-k", "5", "#{limit_s}", "taskset", "-c", cpu, executable | args]

    case System.cmd("timeout", timeout_args, stderr_to_stdout: true) do
      {output, 0} -> {:ok, output}
      {output, 124} -> {:error, {:timed_out, program, output}}
      {output, status} -> {:error, {:exit_status, program, status, output}}
    end
  end
end

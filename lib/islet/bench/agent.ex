defmodule Islet.Bench.Agent do
  @moduledoc """
  The entry point of the benchmark's child BEAMs (see `Islet.Bench.Child`).

  A child is either a server (it runs an `Islet.Bench.Server` and reports on
  its own OS process) or the idle-connection client (`Islet.Bench.IdleClient`).
  It reads one command per line on stdin and answers one line on stdout,
  both `Base.encode64(:erlang.term_to_binary(term))`, answers prefixed with
  `#{inspect("ISLET_BENCH ")}` so that other output (logs) can be told apart.
  It halts when stdin closes, so a child never outlives the `mix` process.
  """

  alias Islet.Bench.{Counters, IdleClient, OS, Server}

  @marker "ISLET_BENCH "

  @doc "The answer prefix on stdout."
  @spec marker() :: String.t()
  def marker, do: @marker

  @doc "Encodes a term as one protocol line (without newline)."
  @spec encode(term()) :: String.t()
  def encode(term), do: Base.encode64(:erlang.term_to_binary(term))

  @doc "Decodes one protocol line."
  @spec decode(String.t()) :: term()
  def decode(line), do: line |> String.trim() |> Base.decode64!() |> :erlang.binary_to_term()

  @doc "The benchmark's entry point: runs its command loop (see `run/3`)."
  @spec main() :: no_return()
  def main do
    # Islet's applications (:ssl among them), as a release would start them.
    {:ok, _} = Application.ensure_all_started(:islet)
    ready = %{fd_limit: OS.fd_limit(), schedulers: System.schedulers_online()}
    run(ready, %{server: nil, counters: nil, client: IdleClient.new()}, &handle/2)
  end

  @doc """
  A child's command loop: answers `{:ready, info}`, then one answer per
  command with `handle.(command, state)`, which returns `{answer, state}`,
  or `{:stop, answer}` to answer and halt. Halts when stdin closes.
  """
  @spec run(term(), state, (term(), state -> {term(), state} | {:stop, term()})) :: no_return()
        when state: term()
  def run(info, state, handle) do
    reply({:ready, info})
    loop(state, handle)
  end

  defp loop(state, handle) do
    case IO.read(:stdio, :line) do
      line when is_binary(line) ->
        case handle.(decode(line), state) do
          {:stop, answer} ->
            reply(answer)
            System.halt(0)

          {answer, state} ->
            reply(answer)
            loop(state, handle)
        end

      _eof_or_error ->
        System.halt(0)
    end
  end

  defp reply(term), do: IO.write(:stdio, [@marker, encode(term), ?\n])

  # Starts the server, and one more per extra listener (same options but the
  # listen options, same counters); answers the ports, the main one as :main.
  defp handle({:serve, options}, state) do
    {extra, options} = Keyword.pop(options, :extra_listeners, [])

    with {:ok, server} <- Server.start_link(options),
         counters = Server.counters(server),
         {:ok, ports} <- serve_extra(extra, options, counters, %{main: Server.port(server)}) do
      {{:ok, ports}, %{state | server: server, counters: counters}}
    else
      {:error, reason} -> {{:error, reason}, state}
    end
  end

  defp handle(:sample, state), do: {sample(state), state}

  defp handle(:gc, state) do
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    Process.sleep(100)
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    {:ok, state}
  end

  # RSS after the forced collection of `:gc` is still falling: see
  # Islet.Bench.OS.await_rss_settled/2. Answers the time waited.
  defp handle({:settle_rss, max_ms}, state) do
    started = System.monotonic_time(:millisecond)
    :ok = OS.await_rss_settled(max_ms)
    {{:ok, System.monotonic_time(:millisecond) - started}, state}
  end

  defp handle({:await_live, count, timeout}, state) do
    deadline = System.monotonic_time(:millisecond) + timeout
    {await_live(state.counters, count, deadline), state}
  end

  defp handle({:open, address, port, count, options}, state) do
    {opened, errors, client} = IdleClient.open(state.client, address, port, count, options)
    {{:ok, opened, errors}, %{state | client: client}}
  end

  defp handle(:close_all, state), do: {:ok, %{state | client: IdleClient.close_all(state.client)}}

  defp handle(:stop, state) do
    if state.server, do: Server.stop(state.server)
    {:stop, :ok}
  end

  defp handle(other, state), do: {{:error, {:unknown_command, other}}, state}

  defp serve_extra([], _options, _counters, ports), do: {:ok, ports}

  defp serve_extra([{name, listen_options} | rest], options, counters, ports) do
    options = Keyword.merge(options, listen_options: listen_options, counters: counters)

    case Server.start_link(options) do
      {:ok, server} ->
        serve_extra(rest, options, counters, Map.put(ports, name, Server.port(server)))

      {:error, reason} ->
        {:error, {name, reason}}
    end
  end

  defp sample(state) do
    # CPU time and clock are read together: at normal priority, on a busy
    # server, this process would queue behind the handlers after each of
    # the file reads (each a hop to a dirty I/O scheduler), and the clock
    # would be read tens of milliseconds after the CPU time.
    priority = Process.flag(:priority, :high)
    before_ns = System.monotonic_time(:nanosecond)
    {cpu_ns, source} = OS.cpu_ns()
    after_ns = System.monotonic_time(:nanosecond)
    Process.flag(:priority, priority)

    %{
      at_ns: div(before_ns + after_ns, 2),
      cpu_ns: cpu_ns,
      cpu_source: source,
      rss: OS.rss_bytes(),
      memory: :erlang.memory(:total),
      processes: :erlang.system_info(:process_count),
      ports: :erlang.system_info(:port_count),
      counters: state.counters && Counters.read(state.counters)
    }
  end

  defp await_live(counters, count, deadline) do
    live = Counters.read(counters).live

    cond do
      live == count ->
        {:ok, live}

      System.monotonic_time(:millisecond) > deadline ->
        {:timeout, live}

      true ->
        Process.sleep(20)
        await_live(counters, count, deadline)
    end
  end
end

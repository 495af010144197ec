defmodule Islet.Test.Diff do
  @moduledoc """
  Differential testing of a transport against the `:gen_tcp` reference.

  A scenario is a one-argument function that takes a transport module and
  returns what it observed. `run/2` runs it once with `Islet.Reference.TCP`
  and once with `Islet.TCP`, each time in a fresh process (so that mailboxes
  and ownership start clean), and returns both results normalized:

    * sockets (ports for `:gen_tcp`, references for Islet) registered with
      `name/2` become their name, any other port or reference becomes `:sock`;
    * a scenario that raises, exits or throws gives `{:raised, module}`,
      `{:exit, reason}` or `{:throw, value}` instead of failing the test;
    * a scenario that does not finish in time gives `{:hang, ms}` (and
      prints to stderr where it was waiting).

  `assert_same/2` asserts that the two results are equal. Set
  `ISLET_DIFF_SELF=1` to run the reference against itself instead, which
  shows whether a scenario is deterministic.
  """

  import ExUnit.Assertions

  @reference Islet.Reference.TCP

  @doc "The module compared with the reference (the reference itself with ISLET_DIFF_SELF=1)."
  @spec subject() :: module()
  def subject do
    if System.get_env("ISLET_DIFF_SELF") in [nil, "", "0"], do: Islet.TCP, else: @reference
  end

  @doc "Both modules, reference first, as `{label, module}` pairs."
  @spec modules() :: [{atom(), module()}]
  def modules, do: [gen_tcp: @reference, islet: subject()]

  @doc """
  Runs `scenario` against the reference and the subject; returns
  `{reference_result, subject_result}`, both normalized.
  Options: `:timeout` (ms, default 30_000).
  """
  @spec run((module() -> term()), keyword()) :: {term(), term()}
  def run(scenario, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, 30_000)
    {run_one(@reference, scenario, timeout), run_one(subject(), scenario, timeout)}
  end

  @doc """
  Fails the test when a scenario broke off on a bug of its own, which both
  modules then share, so that the comparison would pass without testing
  what follows: a call of a function that does not exist (a test once
  called `getstat/2` on both, which neither has), or a match that failed
  (a test's own `:ok = ...` on a client socket both had closed). Scenarios
  compare what calls return instead of matching on it.
  """
  @spec scenario_ran!(term(), term()) :: :ok
  def scenario_ran!(reference, subject) do
    for result <- [reference, subject],
        result in [{:raised, UndefinedFunctionError}, {:raised, MatchError}] do
      flunk("the scenario broke off: #{inspect(result)} (a bug of the test)")
    end

    :ok
  end

  @doc "Asserts that `scenario` gives the same normalized result on both modules."
  defmacro assert_same(scenario, opts \\ []) do
    quote do
      {gen_tcp, islet} = Islet.Test.Diff.run(unquote(scenario), unquote(opts))
      Islet.Test.Diff.scenario_ran!(gen_tcp, islet)

      if islet != gen_tcp do
        flunk(Islet.Test.Diff.report(gen_tcp, islet))
      end

      gen_tcp
    end
  end

  @doc "Describes how two results differ: each differing path with both values."
  @spec report(term(), term()) :: String.t()
  def report(gen_tcp, islet) do
    lines =
      for {path, g, i} <- differences(gen_tcp, islet, []) do
        "  at #{inspect(path)}:\n    gen_tcp: #{inspect(g, limit: 20)}\n    islet:   #{inspect(i, limit: 20)}"
      end

    full =
      "  whole results:\n    gen_tcp: #{inspect(gen_tcp, limit: 40, printable_limit: 200)}" <>
        "\n    islet:   #{inspect(islet, limit: 40, printable_limit: 200)}"

    "Islet.TCP differs from gen_tcp\n" <> Enum.join(lines, "\n") <> "\n" <> full
  end

  @doc "The paths at which two terms differ, as `{path, left, right}`."
  @spec differences(term(), term(), list()) :: [{list(), term(), term()}]
  def differences(same, same, _path), do: []

  def differences(%{} = a, %{} = b, path) when not is_struct(a) and not is_struct(b) do
    keys = Enum.uniq(Map.keys(a) ++ Map.keys(b))

    Enum.flat_map(keys, fn k ->
      differences(Map.get(a, k, :missing), Map.get(b, k, :missing), path ++ [k])
    end)
  end

  def differences(a, b, path)
      when is_tuple(a) and is_tuple(b) and tuple_size(a) == tuple_size(b) and
             tuple_size(a) > 1 and elem(a, 0) == elem(b, 0) do
    Enum.flat_map(0..(tuple_size(a) - 1), fn i ->
      differences(elem(a, i), elem(b, i), path ++ [i])
    end)
  end

  def differences(a, b, path)
      when is_list(a) and is_list(b) and length(a) == length(b) and a != [] do
    a
    |> Enum.zip(b)
    |> Enum.with_index()
    |> Enum.flat_map(fn {{x, y}, i} -> differences(x, y, path ++ [i]) end)
  end

  def differences(a, b, path), do: [{path, a, b}]

  @doc "Runs `scenario` with `module` in a fresh process and normalizes what it gives."
  @spec run_one(module(), (module() -> term()), timeout()) :: term()
  def run_one(module, scenario, timeout) do
    parent = self()
    tag = make_ref()

    {pid, mon} =
      spawn_monitor(fn ->
        result = catching(fn -> scenario.(module) end)

        Kernel.send(parent, {tag, normalize(result, names())})
        # An abnormal exit takes the scenario's linked helpers (and the
        # sockets they own) down with it.
        exit(:shutdown)
      end)

    receive do
      {^tag, result} ->
        Process.demonitor(mon, [:flush])
        result

      {:DOWN, ^mon, :process, ^pid, reason} ->
        {:died, normalize(reason, [])}
    after
      timeout ->
        # Where it waited, for the log: the result stays comparable.
        where = Process.info(pid, [:current_stacktrace, :status, :message_queue_len])
        IO.puts(:stderr, "#{inspect(module)} scenario hung #{timeout} ms at: #{inspect(where)}")
        Process.exit(pid, :kill)
        Process.demonitor(mon, [:flush])
        {:hang, timeout}
    end
  end

  @doc "Calls `fun`, turning a raise, exit or throw into a value as `run_one/3` does."
  @spec catching((() -> term())) :: term()
  def catching(fun) do
    fun.()
  rescue
    e -> {:raised, e.__struct__}
  catch
    :exit, reason -> {:exit, reason}
    :throw, value -> {:throw, value}
  end

  @doc """
  Waits (up to 2 s) until process `pid` is blocked in a `receive`: a recv
  is then waiting, so that what a test sends next meets a waiting reader.
  """
  @spec wait_blocked(pid(), non_neg_integer()) :: :ok
  def wait_blocked(pid, tries \\ 200) do
    if tries > 0 and Process.info(pid, :status) != {:status, :waiting} do
      Process.sleep(10)
      wait_blocked(pid, tries - 1)
    else
      :ok
    end
  end

  @doc "Names a socket (or any term) so that it shows as `name` in results."
  @spec name(term(), atom()) :: term()
  def name(term, name) do
    Process.put({__MODULE__, :names}, [{term, name} | names()])
    term
  end

  defp names, do: Process.get({__MODULE__, :names}, [])

  @doc "Replaces named terms with their names, and other ports and references with `:sock`."
  @spec normalize(term(), [{term(), atom()}]) :: term()
  def normalize(term, names) do
    case List.keyfind(names, term, 0) do
      {_, name} -> name
      nil -> walk(term, names)
    end
  end

  defp walk(term, _names) when is_port(term) or is_reference(term), do: :sock
  defp walk(list, names) when is_list(list), do: walk_list(list, names)

  defp walk(tuple, names) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> Enum.map(&normalize(&1, names)) |> List.to_tuple()

  defp walk(%{} = map, names) when not is_struct(map),
    do: Map.new(map, fn {k, v} -> {normalize(k, names), normalize(v, names)} end)

  defp walk(term, _names), do: term

  # Handles improper lists too.
  defp walk_list([], _names), do: []
  defp walk_list([h | t], names) when is_list(t), do: [normalize(h, names) | walk_list(t, names)]
  defp walk_list([h | t], names), do: [normalize(h, names) | normalize(t, names)]

  ## Helpers for scenarios (they run inside the scenario's process).

  @doc """
  Listens with `module` on loopback port 0 (unless `opts` gives an `ip`),
  connects a passive binary `:gen_tcp` client and accepts. Names the three
  sockets `:listener`, `:server` and `:client`. Returns `{listener, server, client}`.
  """
  @spec pair(module(), keyword(), keyword()) :: {term(), term(), port()}
  def pair(module, opts \\ [], client_opts \\ []) do
    opts = if Keyword.has_key?(opts, :ip), do: opts, else: [{:ip, :loopback} | opts]
    {:ok, listener} = module.listen(0, opts)
    client = connect(module, listener, client_opts)
    {:ok, server} = module.accept(listener)
    {name(listener, :listener), name(server, :server), name(client, :client)}
  end

  @doc "Connects a passive binary `:gen_tcp` client to `listener`."
  @spec connect(module(), term(), keyword()) :: port()
  def connect(module, listener, client_opts \\ []) do
    {:ok, client} =
      case module.sockname(listener) do
        {:ok, {:local, path}} ->
          :gen_tcp.connect({:local, path}, 0, [:local, :binary, active: false] ++ client_opts)

        {:ok, {ip, port}} ->
          ip = connect_ip(ip)
          family = if tuple_size(ip) == 8, do: [:inet6], else: []
          :gen_tcp.connect(ip, port, family ++ [:binary, active: false] ++ client_opts, 10_000)
      end

    client
  end

  defp connect_ip({0, 0, 0, 0}), do: {127, 0, 0, 1}
  defp connect_ip({0, 0, 0, 0, 0, 0, 0, 0}), do: {0, 0, 0, 0, 0, 0, 0, 1}
  defp connect_ip(ip), do: ip

  @doc "The port `listener` is bound to."
  @spec port(module(), term()) :: :inet.port_number()
  def port(module, listener) do
    {:ok, {_ip, port}} = module.sockname(listener)
    port
  end

  @doc "Receives exactly `n` bytes on a passive `:gen_tcp` socket (`{:error, r}` otherwise)."
  @spec recv_exact(port(), non_neg_integer(), timeout()) :: {:ok, binary()} | {:error, term()}
  def recv_exact(socket, n, timeout \\ 30_000), do: :gen_tcp.recv(socket, n, timeout)

  @doc "Reads a passive socket with `module` until it reports an error; returns {bytes, error}."
  @spec read_to_end(module(), term(), timeout()) :: {binary(), term()}
  def read_to_end(module, socket, timeout \\ 30_000) do
    read_to_end(module, socket, timeout, [])
  end

  defp read_to_end(module, socket, timeout, acc) do
    case module.recv(socket, 0, timeout) do
      {:ok, data} -> read_to_end(module, socket, timeout, [acc | data])
      other -> {IO.iodata_to_binary(acc), other}
    end
  end

  @doc """
  Reads with `recv` (`&:gen_tcp.recv/3`, `&:ssl.recv/3`, ...) until it
  reports an error, counting the bytes instead of keeping them: `{count,
  error}`.
  """
  @spec count_to_end((term(), non_neg_integer(), timeout() -> term()), term(), timeout()) ::
          {non_neg_integer(), term()}
  def count_to_end(recv, socket, timeout \\ 10_000), do: count_to_end(recv, socket, timeout, 0)

  defp count_to_end(recv, socket, timeout, n) do
    case recv.(socket, 0, timeout) do
      {:ok, data} -> count_to_end(recv, socket, timeout, n + IO.iodata_length(data))
      other -> {n, other}
    end
  end

  @doc "Runs `fun`: `{its result, the milliseconds it took}`."
  @spec timed((() -> term())) :: {term(), integer()}
  def timed(fun) do
    t0 = System.monotonic_time(:millisecond)
    result = fun.()
    {result, System.monotonic_time(:millisecond) - t0}
  end

  @doc "All the messages in the caller's mailbox now, oldest first."
  @spec messages() :: [term()]
  def messages, do: messages([])

  defp messages(acc) do
    receive do
      msg -> messages([msg | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  @doc "Waits (polling, up to `timeout` ms) until the caller's mailbox holds `n` messages."
  @spec await_mailbox(pos_integer(), timeout()) :: :ok | :timeout
  def await_mailbox(n, timeout \\ 10_000) do
    wait_until(fn -> Process.info(self(), :message_queue_len) |> elem(1) >= n end, timeout)
  end

  @doc "Polls `fun` every few ms until it returns a truthy value; `:ok` or `:timeout`."
  @spec wait_until((() -> term()), timeout()) :: :ok | :timeout
  def wait_until(fun, timeout \\ 10_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(fun, deadline)
  end

  defp poll(fun, deadline) do
    cond do
      fun.() ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        :timeout

      true ->
        pause(5)
        poll(fun, deadline)
    end
  end

  # A sleep that also moves signals in transit into the message queue:
  # Process.sleep/1 (a receive with no clause) does not, so a loop of it and
  # Process.info(self(), :message_queue_len) may not see a port's message for
  # seconds.
  defp pause(ms) do
    receive do
      {__MODULE__, :never} -> :ok
    after
      ms -> :ok
    end
  end

  @doc """
  Polls `recv(socket, 0, 0)` until it gives something other than
  `{:error, :timeout}` (for data that is on its way); returns that result.
  """
  @spec recv_when_ready(module(), term(), timeout()) :: term()
  def recv_when_ready(module, socket, timeout \\ 10_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    recv_poll(module, socket, deadline)
  end

  defp recv_poll(module, socket, deadline) do
    case module.recv(socket, 0, 0) do
      {:error, :timeout} = timeout ->
        if System.monotonic_time(:millisecond) > deadline do
          timeout
        else
          pause(5)
          recv_poll(module, socket, deadline)
        end

      other ->
        other
    end
  end

  @doc """
  Collects active-mode messages for `socket` until `bytes` bytes of data have
  come (or `timeout` ms pass). Returns `{data, other_messages}` where the
  other messages (closed, error, passive) keep their order, with the socket
  replaced by `:same` when it is `==` to `socket`, `:other` otherwise.
  `family` is `:tcp` (gen_tcp's messages) or `:ssl` (`:ssl`'s).
  """
  @spec collect_active(term(), non_neg_integer(), timeout(), :tcp | :ssl) :: {binary(), [term()]}
  def collect_active(socket, bytes, timeout \\ 30_000, family \\ :tcp) do
    deadline = System.monotonic_time(:millisecond) + timeout
    collect(tags(family), socket, bytes, deadline, [], [])
  end

  defp tags(:tcp), do: {:tcp, :tcp_closed, :tcp_passive, :tcp_error}
  defp tags(:ssl), do: {:ssl, :ssl_closed, :ssl_passive, :ssl_error}

  defp collect({data_tag, closed, passive, error} = tags, socket, bytes, deadline, data, others) do
    if IO.iodata_length(data) >= bytes do
      {IO.iodata_to_binary(data), Enum.reverse(others)}
    else
      left = max(deadline - System.monotonic_time(:millisecond), 0)

      receive do
        {^data_tag, s, d} when is_binary(d) ->
          others = if s == socket, do: others, else: [{data_tag, :other} | others]
          collect(tags, socket, bytes, deadline, [data | d], others)

        {tag, s} when tag in [closed, passive] ->
          collect(tags, socket, bytes, deadline, data, [{tag, same(s, socket)} | others])

        {^error, s, reason} ->
          others = [{error, same(s, socket), reason} | others]
          collect(tags, socket, bytes, deadline, data, others)
      after
        left -> {IO.iodata_to_binary(data), Enum.reverse([:collect_timeout | others])}
      end
    end
  end

  @doc """
  The socket's active-mode messages in the mailbox now (waiting up to
  `wait` ms for the first), with data joined: consecutive data messages
  become one `{tag, :same, all_data}`; sockets become `:same`/`:other`.
  `family` as in `collect_active/4`.
  """
  @spec active_messages(term(), timeout(), :tcp | :ssl) :: [term()]
  def active_messages(socket, wait \\ 0, family \\ :tcp) do
    first =
      receive do
        msg -> [msg]
      after
        wait -> []
      end

    (first ++ messages())
    |> Enum.map(&normalize_active(&1, socket, tags(family)))
    |> join_data()
  end

  @doc "Waits up to `timeout` ms for the first active-mode message of `family` for `socket`."
  @spec await_message(term(), timeout(), :tcp | :ssl) :: term()
  def await_message(socket, timeout \\ 30_000, family \\ :tcp) do
    {data_tag, closed, passive, error} = tags(family)

    receive do
      {^data_tag, s, d} -> {data_tag, same(s, socket), d}
      {tag, s} when tag in [closed, passive] -> {tag, same(s, socket)}
      {^error, s, r} -> {error, same(s, socket), r}
    after
      timeout -> :no_message
    end
  end

  defp normalize_active(msg, socket, {data_tag, closed, passive, error}) do
    case msg do
      {^data_tag, s, d} -> {data_tag, same(s, socket), d}
      {tag, s} when tag in [closed, passive] -> {tag, same(s, socket)}
      {^error, s, r} -> {error, same(s, socket), r}
      other -> {:unexpected, other}
    end
  end

  defp join_data([{tag, s, a}, {tag, s, b} | rest]) when is_binary(a) and is_binary(b),
    do: join_data([{tag, s, a <> b} | rest])

  defp join_data([m | rest]), do: [m | join_data(rest)]
  defp join_data([]), do: []

  defp same(s, socket), do: if(s == socket, do: :same, else: :other)

  defp normalize_tcp(msgs, socket),
    do: msgs |> Enum.map(&normalize_active(&1, socket, tags(:tcp))) |> join_data()

  @doc "A deterministic pseudo-random binary of `n` bytes."
  @spec pattern(non_neg_integer(), integer()) :: binary()
  def pattern(n, seed \\ 1) do
    :rand.seed(:exsss, {seed, seed * 7 + 1, seed * 13 + 2})
    :rand.bytes(n)
  end

  @doc "A unique path for a unix socket or a temporary file."
  @spec tmp_path(String.t()) :: String.t()
  def tmp_path(prefix) do
    unique = "#{System.pid()}_#{System.unique_integer([:positive])}_#{:rand.uniform(1_000_000)}"
    path = Path.join(System.tmp_dir!(), "#{prefix}_#{unique}")
    File.rm(path)
    path
  end

  @doc """
  Hands `socket` to a new process (by `controlling_process`) that sends the
  first 6 bytes of the file at `path` with `module.sendfile/4`, then looks
  at `Process.info(self(), :monitored_by)`, as Thousand Island's ownership
  tests do. Returns `{monitors, handler}` (`:no_answer` if none came within
  `timeout` ms); send the handler `:stop` when done.
  """
  @spec monitored_after_sendfile(module(), term(), Path.t(), timeout()) :: {term(), pid()}
  def monitored_after_sendfile(module, socket, path, timeout \\ 10_000) do
    parent = self()

    handler =
      spawn(fn ->
        receive do
          :go ->
            {:ok, 6} = module.sendfile(socket, path, 0, 6)
            {:monitored_by, monitors} = Process.info(self(), :monitored_by)
            Kernel.send(parent, {:watched, self(), monitors})
            receive do: (:stop -> :ok)
        end
      end)

    :ok = module.controlling_process(socket, handler)
    Kernel.send(handler, :go)
    monitors = receive(do: ({:watched, ^handler, m} -> m), after: (timeout -> :no_answer))
    {monitors, handler}
  end

  @doc """
  The socket's active-mode messages until `{:tcp_closed, _}` (included) or
  `timeout` ms, normalized and joined as `active_messages/2` gives them.
  """
  @spec active_until_closed(term(), timeout()) :: [term()]
  def active_until_closed(socket, timeout \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    until_closed(socket, deadline, [])
  end

  defp until_closed(socket, deadline, acc) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:tcp_closed, _} = msg -> normalize_tcp(Enum.reverse([msg | acc]), socket)
      msg -> until_closed(socket, deadline, [msg | acc])
    after
      left -> normalize_tcp(Enum.reverse(acc), socket) ++ [:no_close]
    end
  end
end

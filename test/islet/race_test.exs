defmodule Islet.RaceTest do
  # Races between processes on one Islet socket: close against recv, send and
  # accept in other processes, the owner dying while data is delivered,
  # controlling_process while data arrives, double close. Every call must end
  # with the right data or {:error, :closed} (what gen_tcp gives in each of
  # these cases), never a crash, a hang or a lost byte.
  use ExUnit.Case, async: false

  import Islet.Test.Async

  alias Islet.TCP

  @moduletag timeout: 180_000

  # How long any single call may take before it counts as a hang.
  @hang 15_000
  @chunk :binary.copy(<<"0123456789abcdef">>, 4096)

  setup do
    {:ok, l} = TCP.listen(0, ip: :loopback, backlog: 1024, sndbuf: 16_384)
    {:ok, {_, port}} = TCP.sockname(l)
    on_exit(fn -> TCP.close(l) end)
    %{l: l, port: port}
  end

  describe "close from another process" do
    test "wakes blocked recv with {:error, :closed} or the data sent", %{l: l, port: port} do
      for i <- 1..150 do
        {s, c} = pair(l, port)
        send_data? = rem(i, 3) == 0

        readers = for len <- [0, 5, 0], do: async(fn -> TCP.recv(s, len, 60_000) end)
        if send_data?, do: :ok = :gen_tcp.send(c, "hello")
        jitter(i)
        closer = async(fn -> TCP.close(s) end)

        assert await(closer) == :ok
        results = Enum.map(readers, &await/1)
        data = for {:ok, d} <- results, do: d
        others = Enum.reject(results, &match?({:ok, _}, &1))

        # A recv while another one is pending gets {:error, :ealready}, as
        # with gen_tcp; the pending one is woken by the close.
        assert Enum.all?(others, &(&1 in [{:error, :closed}, {:error, :ealready}])),
               "iteration #{i}: #{inspect(results)}"

        assert Enum.any?(results, &(&1 != {:error, :ealready})), "iteration #{i}"

        assert data in [[], ["hello"]], "iteration #{i}: #{inspect(results)}"
        if not send_data?, do: assert(data == [])

        # The fd really is closed: the peer sees the end of the stream.
        assert :gen_tcp.recv(c, 0, @hang) == {:error, :closed}
        assert TCP.recv(s, 0, 0) == {:error, :closed}
        :gen_tcp.close(c)
      end
    end

    test "wakes blocked and queued senders with {:error, :closed}", %{l: l, port: port} do
      for i <- 1..60 do
        {s, c} = pair(l, port, recbuf: 8192)
        # Half the time the peer reads, so sends complete until the close.
        drainer = if rem(i, 2) == 0, do: async(fn -> drain(c) end)
        # Else an abortive close, so that it does not wait for the queue to
        # go out first (as gen_tcp's close waits, up to 5 s without progress).
        if !drainer, do: :ok = TCP.setopts(s, linger: {true, 0})

        senders = for _ <- 1..2, do: async(fn -> send_until_error(s, @chunk, 0) end)
        Process.sleep(:rand.uniform(4) - 1)
        jitter(i)
        closer = async(fn -> TCP.close(s) end)
        assert await(closer) == :ok

        for sender <- senders do
          assert {n, {:error, :closed}} = await(sender), "iteration #{i}"
          assert is_integer(n)
        end

        if drainer, do: assert({:error, _} = await(drainer))
        assert TCP.send(s, "late") == {:error, :closed}
        :gen_tcp.close(c)
      end
    end

    # The reader's select often fires just before the close (the peer keeps
    # sending): the close must not wake it a second time. gen_tcp leaves
    # nothing; a stray message would reach a handler's handle_info.
    test "a recv woken by it leaves no message in the reader's mailbox", %{l: l, port: port} do
      for i <- 1..40 do
        {s, c} = pair(l, port)
        pinger = spawn_link(fn -> ping(c, 2_000) end)

        reader = async(fn -> with_mailbox(fn -> recv_until_error(s) end) end)

        spin_us(Enum.at([200, 500, 1_000, 2_000, 4_000], rem(i, 5)))
        assert TCP.close(s) == :ok
        assert await(reader) == {{:error, :closed}, []}, "iteration #{i}"
        Process.unlink(pinger)
        Process.exit(pinger, :kill)
        :gen_tcp.close(c)
      end
    end

    # A recv(n) past 1 MiB reads in slices, its caller coming straight back
    # between them (no wait, no select): a close then must not wake it.
    test "a large recv(n) ended by it leaves no message in the reader's mailbox",
         %{l: l, port: port} do
      data = :binary.copy("d", 8 * 1024 * 1024)

      for i <- 1..40 do
        {s, c} = pair(l, port)
        sender = spawn_link(fn -> :gen_tcp.send(c, data) end)

        reader = async(fn -> with_mailbox(fn -> TCP.recv(s, byte_size(data), @hang) end) end)

        spin_us(Enum.at([200, 500, 1_000, 2_000, 3_000], rem(i, 5)))
        assert TCP.close(s) == :ok
        {result, messages} = await(reader)
        assert result in [{:error, :closed}, {:ok, data}], "iteration #{i}"
        assert messages == [], "iteration #{i}: #{inspect(messages)}"
        Process.unlink(sender)
        Process.exit(sender, :kill)
        :gen_tcp.close(c)
      end
    end

    test "wakes every process blocked in accept on the listener" do
      for i <- 1..40 do
        {:ok, l} = TCP.listen(0, ip: :loopback, backlog: 1024)
        {:ok, {_, port}} = TCP.sockname(l)

        acceptors = for _ <- 1..4, do: async(fn -> accept_until_error(l, 0) end)
        connects = rem(i, 5) * 3
        connector = async(fn -> connect_n(port, connects) end)
        jitter(i)
        connected = if rem(i, 2) == 0, do: await(connector)
        closer = async(fn -> TCP.close(l) end)
        assert await(closer) == :ok

        for a <- acceptors do
          assert {n, {:error, :closed}} = await(a), "iteration #{i}"
          assert n <= connects
        end

        # Whatever the connector got (connected, refused or reset) it ends.
        if connected == nil, do: assert(await(connector) == :ok)
        assert TCP.accept(l) == {:error, :closed}
      end
    end
  end

  describe "owner death" do
    test "during active delivery closes the socket; other callers get {:error, :closed}",
         %{l: l, port: port} do
      parent = self()

      for i <- 1..90 do
        {s, c} = pair(l, port)
        mode = Enum.at([true, :once, 3], rem(i, 3))

        owner =
          spawn(fn ->
            receive do
              :go ->
                :ok = TCP.setopts(s, active: mode)
                send(parent, :ready)
                active_sink(s, mode)
            end
          end)

        assert TCP.controlling_process(s, owner) == :ok
        send(owner, :go)
        assert_receive :ready, @hang

        flooder = async(fn -> flood(c, 0) end)
        Process.sleep(:rand.uniform(3) - 1)
        jitter(i)
        ref = Process.monitor(owner)
        Process.exit(owner, :kill)
        assert_receive {:DOWN, ^ref, :process, ^owner, :killed}, @hang

        # The close runs from the monitor callback: wait for it, bounded.
        assert eventually(fn -> TCP.send(s, "x") == {:error, :closed} end),
               "iteration #{i}: socket still open after its owner died"

        assert TCP.recv(s, 0, 100) == {:error, :closed}
        assert TCP.setopts(s, active: :once) == {:error, :einval}
        assert TCP.close(s) == :ok
        assert TCP.controlling_process(s, self()) == {:error, :closed}
        # The peer sees the end (a reset, since unread data was dropped).
        assert {:error, _} = drain(c)
        assert {_, {:error, _}} = await(flooder)
        :gen_tcp.close(c)
      end
    end

    test "wakes a process blocked in passive recv with {:error, :closed}", %{l: l, port: port} do
      for i <- 1..100 do
        {s, c} = pair(l, port)
        owner = spawn(fn -> Process.sleep(:infinity) end)
        assert TCP.controlling_process(s, owner) == :ok
        reader = async(fn -> TCP.recv(s, 0, 60_000) end)
        jitter(i)
        Process.exit(owner, :kill)
        assert await(reader) == {:error, :closed}, "iteration #{i}"
        assert :gen_tcp.recv(c, 0, @hang) == {:error, :closed}
        :gen_tcp.close(c)
      end
    end
  end

  describe "controlling_process while data arrives" do
    test "hands every byte over exactly once and in order", %{l: l, port: port} do
      parent = self()

      for i <- 1..60 do
        {s, c} = pair(l, port)
        mode = Enum.at([true, :once, 4], rem(i, 3))
        payload = payload(i)
        size = byte_size(payload)

        b =
          spawn(fn ->
            receive do
              {:go, got} ->
                # Keeps whatever active state came with the socket; arms it
                # again where the state was used up.
                if mode != true, do: TCP.setopts(s, active: mode)
                send(parent, {:b_done, collect(s, mode, size - got, [])})
            end
          end)

        a =
          spawn(fn ->
            receive do
              :go ->
                :ok = TCP.setopts(s, active: mode)
                {acc, _} = collect_some(s, mode, :rand.uniform(6) - 1, [])
                result = TCP.controlling_process(s, b)
                send(parent, {:a_done, acc, result})
                send(b, {:go, byte_size(acc)})
            end
          end)

        assert TCP.controlling_process(s, a) == :ok
        writer = async(fn -> write_chunks(c, payload, i) end)
        send(a, :go)

        assert_receive {:a_done, a_data, :ok}, @hang
        assert_receive {:b_done, b_result}, @hang * 2
        assert {:ok, b_data} = b_result, "iteration #{i} (#{inspect(mode)})"
        assert await(writer) == :ok

        assert byte_size(a_data) + byte_size(b_data) == size, "iteration #{i}"
        assert a_data <> b_data == payload, "iteration #{i}: data reordered or corrupted"
        :gen_tcp.close(c)
        TCP.close(s)
      end
    end

    test "a non-owner gets {:error, :not_owner} while data flows", %{l: l, port: port} do
      for _ <- 1..30 do
        {s, c} = pair(l, port)
        :ok = TCP.setopts(s, active: true)
        flooder = async(fn -> for _ <- 1..20, do: :gen_tcp.send(c, "data") end)
        other = async(fn -> TCP.controlling_process(s, self()) end)
        assert await(other) == {:error, :not_owner}
        await(flooder)
        :gen_tcp.close(c)
        TCP.close(s)
        flush_socket(s)
      end
    end
  end

  describe "close during active delivery" do
    test "the owner closing gets no message once close returned", %{l: l, port: port} do
      parent = self()

      for i <- 1..60 do
        {s, c} = pair(l, port)
        mode = Enum.at([true, :once, 2], rem(i, 3))

        owner =
          spawn(fn ->
            receive do
              :go ->
                :ok = TCP.setopts(s, active: mode)
                {_, _} = collect_some(s, mode, :rand.uniform(4) - 1, [])
                :ok = TCP.close(s)
                send(self(), :marker)
                drain_until_marker(s)
                # Nothing may come for the socket after the close returned
                # (gen_tcp sends no tcp_closed for a local close either).
                late =
                  receive do
                    {tag, ^s, _} when tag in [:tcp, :tcp_error] -> tag
                    {tag, ^s} when tag in [:tcp_closed, :tcp_passive] -> tag
                  after
                    50 -> nil
                  end

                send(parent, {:owner_done, late})
            end
          end)

        assert TCP.controlling_process(s, owner) == :ok
        flooder = async(fn -> flood(c, 0) end)
        send(owner, :go)
        assert_receive {:owner_done, late}, @hang
        assert late == nil, "iteration #{i}: got #{inspect(late)} after close"
        assert {:error, _} = drain(c)
        assert {_, {:error, _}} = await(flooder)
        :gen_tcp.close(c)
      end
    end

    test "close from a third process while the owner re-arms active once", %{l: l, port: port} do
      parent = self()

      for i <- 1..60 do
        {s, c} = pair(l, port)

        owner =
          spawn(fn ->
            receive do
              :go ->
                # The close may already have happened (on a loaded box the
                # owner can run late): then setopts gives gen_tcp's einval.
                result =
                  case TCP.setopts(s, active: :once) do
                    :ok -> rearm_loop(s, 0)
                    {:error, :einval} -> wait_stop(s, 0, [])
                    other -> wait_stop(s, 0, [other])
                  end

                send(parent, {:owner_done, result})
            end
          end)

        assert TCP.controlling_process(s, owner) == :ok
        flooder = async(fn -> flood(c, 0) end)
        send(owner, :go)
        Process.sleep(:rand.uniform(3) - 1)
        jitter(i)
        closer = async(fn -> TCP.close(s) end)
        assert await(closer) == :ok
        # The owner is told nothing (it is a local close): stop it.
        send(owner, :stop)
        assert_receive {:owner_done, result}, @hang
        assert {:stopped, n, unexpected} = result
        assert is_integer(n)
        assert unexpected == [], "iteration #{i}: #{inspect(unexpected)}"
        assert {:error, _} = drain(c)
        await(flooder)
        :gen_tcp.close(c)
      end
    end
  end

  describe "double close" do
    test "closing twice, or from several processes at once, is :ok", %{l: l, port: port} do
      for i <- 1..150 do
        {s, c} = pair(l, port)
        # The peer does not read: an abortive close, which does not wait for
        # the queue to go out first.
        :ok = TCP.setopts(s, linger: {true, 0})
        reader = async(fn -> TCP.recv(s, 0, 60_000) end)
        sender = async(fn -> send_until_error(s, @chunk, 0) end)
        jitter(i)
        closers = for _ <- 1..4, do: async(fn -> {TCP.close(s), TCP.close(s)} end)
        for cl <- closers, do: assert(await(cl) == {:ok, :ok})
        assert TCP.close(s) == :ok
        assert await(reader) == {:error, :closed}
        assert {_, {:error, :closed}} = await(sender)
        assert {:error, _} = drain(c)
        :gen_tcp.close(c)
      end
    end

    test "closing a listener twice from several processes is :ok" do
      for _ <- 1..100 do
        {:ok, l} = TCP.listen(0, ip: :loopback)
        acceptor = async(fn -> TCP.accept(l) end)
        closers = for _ <- 1..3, do: async(fn -> {TCP.close(l), TCP.close(l)} end)
        for cl <- closers, do: assert(await(cl) == {:ok, :ok})
        assert await(acceptor) == {:error, :closed}
        assert TCP.close(l) == :ok
      end
    end
  end

  describe "sendfile while other processes use the socket" do
    # Files larger than one NIF call's 16 MiB, read at loopback speed: each
    # call runs its sendfile(2) syscalls for milliseconds.
    setup do
      {:ok, l} = TCP.listen(0, ip: :loopback)
      {:ok, {_, port}} = TCP.sockname(l)
      path = Islet.Test.Diff.tmp_path("islet_race_sendfile")
      data = Islet.Test.Diff.pattern(40 * 1024 * 1024 + 12_345, 5)
      File.write!(path, data)

      on_exit(fn ->
        TCP.close(l)
        File.rm(path)
      end)

      %{fl: l, fport: port, path: path, data: data}
    end

    test "leaves the socket's lock free while it sends", %{fl: l, fport: port} = ctx do
      # Whatever else takes the lock while a file goes out (a pump serving
      # the socket, a call from another process) runs on a normal
      # scheduler: it must not wait for sendfile(2) (milliseconds at
      # loopback speed, more from a cold disk). The reader is cat, fast
      # enough that the syscalls run long. When they ran under the lock, it
      # was held in 5.7-27% of the samples (the best of three transfers: 5.7-8%);
      # now in 0.5-1.4%. The best of three counts, as other load on the
      # machine may stall one.
      fractions =
        for _ <- 1..3 do
          {s, reader} = cat_pair(l, port)
          sender = owner_sendfile(s, ctx.path)
          {held, samples, result} = sample_lock(s, sender, 0, 0)
          assert result == {{:ok, byte_size(ctx.data)}, []}
          TCP.close(s)
          assert_receive {^reader, {:exit_status, 0}}, @hang
          if samples >= 100, do: held / samples, else: 1.0
        end

      assert Enum.min(fractions) < 0.04, "lock held in these shares: #{inspect(fractions)}"
    end

    test "another process's sends wait for it: nothing comes in between",
         %{fl: l, fport: port} = ctx do
      size = byte_size(ctx.data)

      for i <- 1..3 do
        {s, c} = pair(l, port)
        marks = 40
        reader = async(fn -> read_exactly(c, size + 4 * marks, []) end)
        sender = owner_sendfile(s, ctx.path)

        marker =
          async(fn ->
            for _ <- 1..marks do
              :ok = TCP.send(s, "MARK")
              Process.sleep(1)
            end
          end)

        assert await(sender, 60_000) == {{:ok, size}, []}
        await(marker, 60_000)
        got = await(reader, 60_000)
        # Marks before the file, the whole file, then marks: never a mark
        # inside it (at a syscall's or a NIF call's boundary).
        before = leading_marks(got, 0)
        assert binary_part(got, 4 * before, size) == ctx.data, "iteration #{i}"
        rest = binary_part(got, 4 * before + size, byte_size(got) - 4 * before - size)
        assert rest == String.duplicate("MARK", marks - before), "iteration #{i}"
        TCP.close(s)
        :gen_tcp.close(c)
      end
    end

    test "a close from another process ends it: fd closed once, no stray message",
         %{fl: l, fport: port} = ctx do
      for i <- 1..12 do
        {s, reader} = cat_pair(l, port)
        # linger 0 (an abortive close) does not wait for the write turn: the
        # close comes while sendfile(2) runs on the fd, which the stop
        # callback then leaves to the sendfile call to close.
        :ok = TCP.setopts(s, linger: {true, 0})

        sender = owner_sendfile(s, ctx.path)
        # Mostly while sendfile(2) runs; now and then before it starts.
        if rem(i, 4) != 0, do: await_probe(s, :sending_file)
        assert await(async(fn -> TCP.close(s) end)) == :ok
        {result, messages} = await(sender, 60_000)
        assert result in [{:error, :einval}, {:ok, byte_size(ctx.data)}], inspect(result)
        assert messages == [], "iteration #{i}: #{inspect(messages)}"
        # The fd is closed (cat sees a reset, or the end), and the socket
        # answers as a closed one.
        assert_receive {^reader, {:exit_status, _}}, @hang
        assert TCP.sendfile(s, ctx.path, 0, 10) == {:error, :einval}
      end
    end
  end

  ## Helpers

  defp pair(l, port, client_opts \\ []) do
    {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false] ++ client_opts)
    {:ok, s} = TCP.accept(l)
    {s, c}
  end

  # A little scheduling noise, so that the race windows move around.
  defp jitter(i) do
    case rem(i, 4) do
      0 -> :ok
      1 -> :erlang.yield()
      2 -> Enum.each(1..:rand.uniform(2000), fn _ -> :ok end)
      3 -> Process.sleep(:rand.uniform(2))
    end
  end

  defp eventually(fun, deadline \\ nil) do
    deadline = deadline || System.monotonic_time(:millisecond) + @hang

    cond do
      fun.() -> true
      System.monotonic_time(:millisecond) > deadline -> false
      true -> Process.sleep(5) && eventually(fun, deadline)
    end
  end

  defp send_until_error(s, chunk, n) do
    case TCP.send(s, chunk) do
      :ok -> send_until_error(s, chunk, n + 1)
      error -> {n, error}
    end
  end

  defp accept_until_error(l, n) do
    case TCP.accept(l) do
      {:ok, s} ->
        TCP.close(s)
        accept_until_error(l, n + 1)

      error ->
        {n, error}
    end
  end

  defp connect_n(_port, 0), do: :ok

  defp connect_n(port, n) do
    case :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], 5_000) do
      {:ok, c} -> :gen_tcp.close(c)
      {:error, _} -> :ok
    end

    connect_n(port, n - 1)
  end

  # Reads the client side until the connection ends; gives the error.
  defp read_exactly(_c, 0, acc), do: IO.iodata_to_binary(Enum.reverse(acc))

  defp read_exactly(c, n, acc) do
    {:ok, data} = :gen_tcp.recv(c, 0, @hang)
    if byte_size(data) > n, do: raise("#{byte_size(data) - n} bytes too many")
    read_exactly(c, n - byte_size(data), [data | acc])
  end

  # Spins until the socket's probe says state (or @hang ms went by).
  defp await_probe(s, state, deadline \\ nil) do
    deadline = deadline || System.monotonic_time(:millisecond) + @hang

    cond do
      Islet.Nif.lock_probe(s) == state -> :ok
      System.monotonic_time(:millisecond) > deadline -> :timeout
      true -> await_probe(s, state, deadline)
    end
  end

  # Runs TCP.sendfile(s, path, 0, 0) in a new process made the socket's
  # owner first (gen_tcp takes a file only from the owner), which hands it
  # back after; await/2 gives {its result, the messages left in its mailbox
  # right after the call}.
  defp owner_sendfile(s, path) do
    parent = self()
    ref = make_ref()

    pid =
      spawn(fn ->
        receive(do: (:own -> :ok))
        result = TCP.sendfile(s, path, 0, 0)
        {:messages, messages} = Process.info(self(), :messages)
        # Back to the test (unless closed): the socket outlives this process.
        _ = TCP.controlling_process(s, parent)
        Kernel.send(parent, {ref, {result, messages}})
      end)

    :ok = TCP.controlling_process(s, pid)
    Kernel.send(pid, :own)
    ref
  end

  # A connection whose peer is `cat > /dev/null` (bash's /dev/tcp), which
  # reads faster than a BEAM process would.
  defp cat_pair(l, port) do
    bash = System.find_executable("bash")
    script = "exec cat < /dev/tcp/127.0.0.1/#{port} > /dev/null 2> /dev/null"
    reader = Port.open({:spawn_executable, bash}, [:exit_status, args: ["-c", script]])
    {:ok, s} = TCP.accept(l)
    {s, reader}
  end

  defp leading_marks(<<"MARK", rest::binary>>, n), do: leading_marks(rest, n + 1)
  defp leading_marks(_, n), do: n

  # Samples whether the socket's lock is held until the async call ref
  # returns: {held, samples, its result}.
  defp sample_lock(s, ref, held, samples) do
    receive do
      {^ref, result} -> {held, samples, result}
    after
      0 ->
        held = if Islet.Nif.lock_probe(s) == :locked, do: held + 1, else: held
        # A pause, so that the samples spread over the transfer.
        Enum.each(1..200, fn _ -> :ok end)
        sample_lock(s, ref, held, samples + 1)
    end
  end

  defp drain(c) do
    case :gen_tcp.recv(c, 0, @hang) do
      {:ok, _} -> drain(c)
      error -> error
    end
  end

  # fun's result, and what is in this process's mailbox 20 ms later (a
  # select that fired before a close has sent its message by then).
  defp with_mailbox(fun) do
    result = fun.()
    Process.sleep(20)
    {:messages, messages} = Process.info(self(), :messages)
    {result, messages}
  end

  defp recv_until_error(s) do
    case TCP.recv(s, 0, @hang) do
      {:ok, _} -> recv_until_error(s)
      error -> error
    end
  end

  # Small sends, each as its own segment, for as long as `n` lasts.
  defp ping(_c, 0), do: :ok

  defp ping(c, n) do
    :gen_tcp.send(c, "ping")
    Process.sleep(0)
    ping(c, n - 1)
  end

  # A delay of `us` microseconds, shorter than Process.sleep/1 can wait.
  defp spin_us(us), do: spin_until(System.monotonic_time(:microsecond) + us)

  defp spin_until(t) do
    if System.monotonic_time(:microsecond) < t, do: spin_until(t), else: :ok
  end

  defp flood(c, n) do
    case :gen_tcp.send(c, @chunk) do
      :ok when n < 2_000 -> flood(c, n + 1)
      :ok -> {n, {:error, :limit}}
      error -> {n, error}
    end
  end

  defp active_sink(s, mode) do
    receive do
      {:tcp, ^s, _} ->
        if mode == :once, do: TCP.setopts(s, active: :once)
        active_sink(s, mode)

      {:tcp_passive, ^s} ->
        TCP.setopts(s, active: mode)
        active_sink(s, mode)

      _ ->
        active_sink(s, mode)
    end
  end

  # Receives up to n data messages in active mode, re-arming as needed.
  defp collect_some(_s, _mode, 0, acc), do: {IO.iodata_to_binary(Enum.reverse(acc)), 0}

  defp collect_some(s, mode, n, acc) do
    receive do
      {:tcp, ^s, d} ->
        if mode == :once, do: :ok = TCP.setopts(s, active: :once)
        collect_some(s, mode, n - 1, [d | acc])

      {:tcp_passive, ^s} ->
        :ok = TCP.setopts(s, active: mode)
        collect_some(s, mode, n, acc)
    after
      20 -> {IO.iodata_to_binary(Enum.reverse(acc)), n}
    end
  end

  # Receives exactly `left` more bytes in active mode.
  defp collect(_s, _mode, 0, acc), do: {:ok, IO.iodata_to_binary(Enum.reverse(acc))}
  defp collect(_s, _mode, left, _acc) when left < 0, do: {:error, :too_much_data}

  defp collect(s, mode, left, acc) do
    receive do
      {:tcp, ^s, d} ->
        if mode == :once and left - byte_size(d) > 0, do: :ok = TCP.setopts(s, active: :once)
        collect(s, mode, left - byte_size(d), [d | acc])

      {:tcp_passive, ^s} ->
        :ok = TCP.setopts(s, active: mode)
        collect(s, mode, left, acc)

      {:tcp_closed, ^s} ->
        {:error, :tcp_closed}

      {:tcp_error, ^s, reason} ->
        {:error, {:tcp_error, reason}}
    after
      @hang -> {:error, {:timeout, left}}
    end
  end

  defp rearm_loop(s, n) do
    receive do
      {:tcp, ^s, _} ->
        case TCP.setopts(s, active: :once) do
          :ok -> rearm_loop(s, n + 1)
          {:error, :einval} -> wait_stop(s, n, [])
          other -> wait_stop(s, n, [other])
        end

      :stop ->
        {:stopped, n, []}

      {tag, ^s} = msg when tag in [:tcp_closed, :tcp_passive] ->
        wait_stop(s, n, [msg])

      {:tcp_error, ^s, _} = msg ->
        wait_stop(s, n, [msg])
    end
  end

  defp wait_stop(s, n, unexpected) do
    receive do
      :stop -> {:stopped, n, Enum.reverse(unexpected)}
      {:tcp, ^s, _} -> wait_stop(s, n, unexpected)
      {_, ^s} = msg -> wait_stop(s, n, [msg | unexpected])
      {_, ^s, _} = msg -> wait_stop(s, n, [msg | unexpected])
    end
  end

  defp drain_until_marker(s) do
    receive do
      :marker -> :ok
      {_, ^s, _} -> drain_until_marker(s)
      {_, ^s} -> drain_until_marker(s)
    end
  end

  defp flush_socket(s) do
    receive do
      {_, ^s, _} -> flush_socket(s)
      {_, ^s} -> flush_socket(s)
    after
      0 -> :ok
    end
  end

  defp payload(i) do
    for k <- 1..(1000 + rem(i, 7) * 300),
        into: <<>>,
        do: <<k::32, i::32, :binary.copy(<<k>>, 56)::binary>>
  end

  # Writes the payload in pieces of varying size.
  defp write_chunks(_c, <<>>, _i), do: :ok

  defp write_chunks(c, payload, i) do
    n = min(byte_size(payload), 1 + :rand.uniform(3000))
    {piece, rest} = :erlang.split_binary(payload, n)
    :ok = :gen_tcp.send(c, piece)
    if rem(i, 2) == 0, do: :erlang.yield()
    write_chunks(c, rest, i)
  end
end

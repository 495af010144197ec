defmodule Islet.HostileTest.Ref do
  @moduledoc false
  # :gen_tcp and :inet behind the calls the scenarios make, so that each
  # scenario runs unchanged against gen_tcp (the reference) and Islet.TCP.

  def listen(opts) do
    :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}, reuseaddr: true] ++ opts)
  end

  def port(l), do: elem(:inet.port(l), 1)
  def accept(l), do: :gen_tcp.accept(l)
  def recv(s, n, t), do: :gen_tcp.recv(s, n, t)
  def send(s, d), do: :gen_tcp.send(s, d)
  def close(s), do: :gen_tcp.close(s)
  def getopts(s, o), do: :inet.getopts(s, o)
  def peername(s), do: :inet.peername(s)
  def controlling_process(s, pid), do: :gen_tcp.controlling_process(s, pid)
end

defmodule Islet.HostileTest.Subject do
  @moduledoc false
  def listen(opts), do: Islet.TCP.listen(0, [ip: :loopback] ++ opts)
  def port(l), do: elem(elem(Islet.TCP.sockname(l), 1), 1)
  defdelegate accept(l), to: Islet.TCP
  defdelegate recv(s, n, t), to: Islet.TCP
  defdelegate send(s, d), to: Islet.TCP
  defdelegate close(s), to: Islet.TCP
  defdelegate getopts(s, o), to: Islet.TCP
  defdelegate peername(s), to: Islet.TCP
  defdelegate controlling_process(s, pid), to: Islet.TCP
end

defmodule Islet.HostileTest do
  # Hostile and broken peers: clients that never send, never read, reset the
  # connection in the middle of a send, hold thousands of connections open,
  # or go away while the server is blocked in recv, accept or send. Where
  # gen_tcp defines the outcome, each scenario runs against both gen_tcp and
  # Islet.TCP and the results must be the same.
  use ExUnit.Case, async: false

  import Islet.Test.Async

  alias Islet.HostileTest.{Ref, Subject}
  alias Islet.TCP

  @moduletag timeout: 180_000
  @hang 15_000
  @chunk :binary.copy(<<"0123456789abcdef">>, 4096)
  # The options Thousand Island would use, spelled out for both sides.
  @common [nodelay: true, backlog: 1024]

  describe "a client that never sends" do
    test "recv times out, keeps partial data and later completes, as gen_tcp" do
      scenario = fn m ->
        {s, c} = pair(m, [])

        steps = [
          timed(50, fn -> m.recv(s, 0, 50) end),
          timed(50, fn -> m.recv(s, 10, 50) end),
          timed(0, fn -> m.recv(s, 0, 0) end),
          timed(0, fn -> m.recv(s, 10, 0) end),
          :gen_tcp.send(c, "12345"),
          Process.sleep(50),
          timed(50, fn -> m.recv(s, 10, 50) end),
          :gen_tcp.send(c, "67890"),
          timed(0, fn -> m.recv(s, 10, 5_000) end),
          timed(0, fn -> m.recv(s, 0, 0) end),
          m.getopts(s, [:active])
        ]

        m.close(s)
        :gen_tcp.close(c)
        steps
      end

      {gen, islet} = both(scenario)
      assert islet == gen
    end

    test "many idle connections time out concurrently and stay usable" do
      {:ok, l} = TCP.listen(0, [ip: :loopback] ++ @common)
      port = Subject.port(l)
      pairs = for _ <- 1..100, do: accept_pair(TCP, l, port)
      parent = self()

      for {{s, _c}, i} <- Enum.with_index(pairs) do
        spawn(fn ->
          results = for _ <- 1..5, do: TCP.recv(s, rem(i, 2) * 4, 20)
          send(parent, {:idle, i, results})
        end)
      end

      for i <- 0..99 do
        assert_receive {:idle, ^i, results}, @hang
        assert results == List.duplicate({:error, :timeout}, 5)
      end

      for {s, c} <- pairs do
        :ok = :gen_tcp.send(c, "data")
        assert {:ok, "data"} = TCP.recv(s, 4, @hang)
        TCP.close(s)
        :gen_tcp.close(c)
      end

      TCP.close(l)
    end
  end

  describe "a slow reader (never reads)" do
    test "send_timeout_close true: send times out and the connection is closed" do
      for m <- [Ref, Subject] do
        {s, c} = pair(m, send_timeout: 200, send_timeout_close: true)
        {t, {n, result}} = :timer.tc(fn -> send_until_error(m, s, 0) end)
        assert result == {:error, :timeout}, inspect(m)
        assert n > 0
        # Bounded by send_timeout (with generous slack for a loaded box).
        assert t < 10_000_000
        # The peer sees the end of the stream once it reads.
        assert {_bytes, {:error, :closed}} = drain(c), inspect(m)
        assert {:error, _} = m.send(s, "x")
        assert {:error, _} = m.recv(s, 0, 100)
        m.close(s)
        :gen_tcp.close(c)
      end
    end

    test "send_timeout_close true: later calls give what gen_tcp gives" do
      scenario = fn m ->
        {s, c} = pair(m, send_timeout: 200, send_timeout_close: true)
        {_, timeout} = send_until_error(m, s, 0)
        later = [m.send(s, "x"), m.recv(s, 0, 100), m.send(s, "x"), m.recv(s, 0, 100)]
        m.close(s)
        :gen_tcp.close(c)
        {timeout, later}
      end

      {gen, islet} = both(scenario)
      assert islet == gen
    end

    test "send_timeout_close false: the socket stays open and the stream intact" do
      for m <- [Ref, Subject] do
        {s, c} = pair(m, send_timeout: 200, send_timeout_close: false)
        {n, result} = send_until_error(m, s, 0)
        assert result == {:error, :timeout}, inspect(m)
        assert {:ok, [active: false]} = m.getopts(s, [:active])
        assert {:ok, _} = m.peername(s)
        # The reader wakes up: what was accepted plus a last message arrive,
        # nothing lost or duplicated (the timed-out send may be in or out).
        {got, _} = drain(c, 300)
        assert :ok = m.send(s, "END")
        {rest, _} = drain_until_end(c, 0)
        total = got + rest
        assert total in [n * byte_size(@chunk) + 3, (n + 1) * byte_size(@chunk) + 3], inspect(m)
        m.close(s)
        :gen_tcp.close(c)
      end
    end

    test "sendfile: {:error, :timeout} once send_timeout passes without progress" do
      # gen_tcp's sendfile has no bound here: it waits for as long as the
      # peer does not read (README, "Differences from gen_tcp"). Islet's
      # send_timeout bounds each wait without progress, as for send, and
      # send_timeout_close closes the connection.
      path =
        Path.join(
          System.tmp_dir!(),
          "islet_hostile_sendfile_#{System.unique_integer([:positive])}"
        )

      # More than loopback's socket buffers can hold.
      File.write!(path, :binary.copy(@chunk, 512))

      try do
        {s, c} = pair(Subject, send_timeout: 300, send_timeout_close: true)
        {t, result} = :timer.tc(fn -> TCP.sendfile(s, path, 0, 0) end)
        assert result == {:error, :timeout}
        assert t < 10_000_000
        assert {bytes, {:error, :closed}} = drain(c)
        assert bytes > 0 and bytes < 512 * byte_size(@chunk)
        TCP.close(s)
        :gen_tcp.close(c)
      after
        File.rm(path)
      end
    end

    test "send_timeout_close false: the timed-out data is still delivered, as gen_tcp" do
      # gen_tcp keeps the data of a timed-out send queued and writes it out
      # once the peer reads, without any further call on the socket.
      scenario = fn m ->
        {s, c} = pair(m, send_timeout: 200, send_timeout_close: false)
        {n, {:error, :timeout}} = send_until_error(m, s, 0)
        {got, _} = drain(c, 500)
        m.close(s)
        :gen_tcp.close(c)
        {:bytes_after_the_last_ok_send, got - n * byte_size(@chunk)}
      end

      {gen, islet} = both(scenario)
      assert gen == {:bytes_after_the_last_ok_send, byte_size(@chunk)}
      assert islet == gen
    end
  end

  describe "the client resets the connection in the middle of a send" do
    test "later calls give what gen_tcp gives" do
      scenario = fn m ->
        {s, c} = pair(m, [])
        sender = async(fn -> send_until_error(m, s, 0) end)
        Process.sleep(200)
        :ok = :inet.setopts(c, linger: {true, 0})
        :gen_tcp.close(c)
        {_n, error} = await(sender)
        later = [m.send(s, "x"), m.recv(s, 0, 100), m.send(s, "x"), m.recv(s, 0, 100)]
        m.close(s)
        {error, later}
      end

      {gen, islet} = both(scenario)
      assert islet == gen
    end
  end

  describe "a client that goes away while the server is blocked" do
    for linger <- [true, false] do
      # In the context, not unquoted: a literal makes one branch of each
      # `if linger` dead code, which Elixir 1.18+ warns about.
      @tag linger: linger
      test "in recv: {:error, :closed} as gen_tcp (linger #{linger})", %{linger: linger} do
        scenario = fn m ->
          {s, c} = pair(m, [])
          reader = async(fn -> m.recv(s, 0, 30_000) end)
          reader_n = async(fn -> Process.sleep(20) && m.recv(s, 0, 30_000) end)
          Process.sleep(100)
          if linger, do: :ok = :inet.setopts(c, linger: {true, 0})
          :gen_tcp.close(c)
          first = await(reader)
          _ = await(reader_n)
          m.close(s)
          first
        end

        {gen, islet} = both(scenario)
        assert islet == {:error, :closed}
        assert islet == gen
      end
    end

    test "in recv: later calls give what gen_tcp gives" do
      scenario = fn m ->
        {s, c} = pair(m, [])
        reader = async(fn -> m.recv(s, 0, 30_000) end)
        Process.sleep(100)
        :gen_tcp.close(c)
        first = await(reader)
        later = [m.send(s, "x"), m.recv(s, 0, 100), m.send(s, "x"), m.recv(s, 0, 100)]
        m.close(s)
        {first, later}
      end

      {gen, islet} = both(scenario)
      assert islet == gen
    end

    for linger <- [true, false] do
      # In the context, not unquoted: a literal makes one branch of each
      # `if linger` dead code, which Elixir 1.18+ warns about.
      @tag linger: linger
      test "in accept: the connection is still accepted, as gen_tcp (linger #{linger})", %{
        linger: linger
      } do
        scenario = fn m ->
          {:ok, l} = m.listen(@common)
          me = self()

          # Hands the socket over: it would close with the acceptor.
          acceptor =
            async(fn ->
              with {:ok, s} <- m.accept(l), do: {m.controlling_process(s, me), s}
            end)

          Process.sleep(50)
          {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, m.port(l), [:binary, active: false])
          :ok = :gen_tcp.send(c, "hi")
          if linger, do: :ok = :inet.setopts(c, linger: {true, 0})
          :gen_tcp.close(c)
          assert {:ok, s} = await(acceptor)
          Process.sleep(50)

          steps = [m.recv(s, 0, 1_000), m.recv(s, 0, 100), m.send(s, "x")]
          m.close(s)
          # The listener is unaffected.
          acceptor2 = async(fn -> m.accept(l) end)
          {:ok, c2} = :gen_tcp.connect({127, 0, 0, 1}, m.port(l), [:binary, active: false])
          assert {:ok, s2} = await(acceptor2)
          m.close(s2)
          :gen_tcp.close(c2)
          m.close(l)
          steps
        end

        {gen, islet} = both(scenario)
        assert islet == gen
      end
    end

    for linger <- [true, false] do
      # In the context, not unquoted: a literal makes one branch of each
      # `if linger` dead code, which Elixir 1.18+ warns about.
      @tag linger: linger
      test "in send: {:error, :closed} as gen_tcp (linger #{linger})", %{linger: linger} do
        scenario = fn m ->
          {s, c} = pair(m, [])
          sender = async(fn -> send_until_error(m, s, 0) end)
          Process.sleep(200)
          if linger, do: :ok = :inet.setopts(c, linger: {true, 0})
          :gen_tcp.close(c)
          {_, error} = await(sender)
          m.close(s)
          error
        end

        {gen, islet} = both(scenario)
        assert islet == {:error, :closed}
        assert islet == gen
      end
    end

    test "in send: two blocked senders get what gen_tcp gives them" do
      scenario = fn m ->
        {s, c} = pair(m, [])
        senders = for _ <- 1..2, do: async(fn -> send_until_error(m, s, 0) end)
        Process.sleep(200)
        :gen_tcp.close(c)
        errors = for sender <- senders, do: elem(await(sender), 1)
        m.close(s)
        Enum.sort(errors)
      end

      {gen, islet} = both(scenario)
      assert islet == gen
    end
  end

  describe "thousands of half-open connections" do
    @tag timeout: 180_000
    test "2000 connections that never send are held; the server stays responsive" do
      count = 2_000
      parent = self()
      {:ok, l} = TCP.listen(0, [ip: :loopback] ++ @common)
      port = Subject.port(l)
      acceptors = for _ <- 1..4, do: spawn_link(fn -> acceptor(l, parent) end)

      clients =
        for _ <- 1..count do
          {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], @hang)
          c
        end

      # Every connection is accepted and has a handler blocked in recv
      # (passive) or waiting for active-mode data.
      handlers = for _ <- 1..count, do: receive_handler()
      assert length(handlers) == count

      # The server answers new and held connections promptly meanwhile.
      latencies =
        for k <- 1..20 do
          {:ok, fresh} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], @hang)

          _ = receive_handler()
          held = Enum.at(clients, :rand.uniform(count) - 1)

          for c <- [fresh, held] do
            msg = "ping #{k}"
            {t, reply} = :timer.tc(fn -> :gen_tcp.send(c, msg) && :gen_tcp.recv(c, 0, @hang) end)
            assert reply == {:ok, msg}
            t
          end
          |> tap(fn _ -> :gen_tcp.close(fresh) end)
        end
        |> List.flatten()

      # 2 s is far above what an idle box needs (well under 10 ms).
      assert Enum.max(latencies) < 2_000_000, "max latency #{Enum.max(latencies)} us"

      # Every handler wakes with the end of the stream when its client goes.
      for c <- clients, do: :gen_tcp.close(c)
      ends = for _ <- 1..(count + 20), do: receive_end()

      assert Enum.all?(ends, &(&1 in [{:error, :closed}, :tcp_closed])),
             inspect(Enum.frequencies(ends))

      TCP.close(l)
      for a <- acceptors, do: assert_receive({:acceptor_done, ^a, {:error, :closed}}, @hang)
    end
  end

  ## Helpers

  # Runs the scenario against gen_tcp and Islet, each in a fresh process.
  defp both(scenario) do
    {run(fn -> scenario.(Ref) end), run(fn -> scenario.(Subject) end)}
  end

  defp run(fun), do: await(async(fun), @hang * 3)

  defp pair(m, opts) do
    {:ok, l} = m.listen(opts ++ @common)
    {s, c} = accept_pair(m, l, m.port(l))
    m.close(l)
    {s, c}
  end

  defp accept_pair(m, l, port) do
    {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], @hang)
    {:ok, s} = m.accept(l)
    {s, c}
  end

  # The result, and whether a timeout came no earlier than asked.
  defp timed(timeout, fun) do
    t0 = System.monotonic_time(:millisecond)
    result = fun.()
    elapsed = System.monotonic_time(:millisecond) - t0
    {result, result != {:error, :timeout} or elapsed >= timeout}
  end

  defp send_until_error(m, s, n) do
    case m.send(s, @chunk) do
      :ok when n < 100_000 -> send_until_error(m, s, n + 1)
      other -> {n, other}
    end
  end

  # Reads the client side until it ends or stays quiet for `quiet` ms.
  defp drain(c, quiet \\ @hang, acc \\ 0) do
    case :gen_tcp.recv(c, 0, quiet) do
      {:ok, d} -> drain(c, quiet, acc + byte_size(d))
      error -> {acc, error}
    end
  end

  defp drain_until_end(c, acc) do
    case :gen_tcp.recv(c, 0, @hang) do
      {:ok, d} ->
        if String.ends_with?(d, "END"),
          do: {acc + byte_size(d), :ok},
          else: drain_until_end(c, acc + byte_size(d))

      error ->
        {acc, error}
    end
  end

  defp acceptor(l, parent) do
    case TCP.accept(l) do
      {:ok, s} ->
        mode = Enum.random([:passive, :once])
        h = spawn(fn -> handler(s, mode, parent) end)
        :ok = TCP.controlling_process(s, h)
        send(h, :go)
        acceptor(l, parent)

      error ->
        send(parent, {:acceptor_done, self(), error})
    end
  end

  defp handler(s, mode, parent) do
    receive do
      :go -> :ok
    end

    send(parent, {:handler, self()})
    echo(s, mode, parent)
  end

  defp echo(s, :passive, parent) do
    case TCP.recv(s, 0, :infinity) do
      {:ok, data} ->
        :ok = TCP.send(s, data)
        echo(s, :passive, parent)

      error ->
        send(parent, {:handler_end, error})
    end
  end

  defp echo(s, :once, parent) do
    :ok = TCP.setopts(s, active: :once)

    receive do
      {:tcp, ^s, data} ->
        :ok = TCP.send(s, data)
        echo(s, :once, parent)

      {:tcp_closed, ^s} ->
        send(parent, {:handler_end, :tcp_closed})

      {:tcp_error, ^s, reason} ->
        send(parent, {:handler_end, {:tcp_error, reason}})
    end
  end

  defp receive_handler do
    receive do
      {:handler, pid} -> pid
    after
      @hang * 2 -> flunk("a connection was not accepted in time")
    end
  end

  defp receive_end do
    receive do
      {:handler_end, result} -> result
    after
      @hang * 2 -> flunk("a handler was not woken by its client's close")
    end
  end
end

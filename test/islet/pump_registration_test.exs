defmodule Islet.PumpRegistrationTest do
  # Pumps' edge-triggered epoll sets (pump mode, the default): when a socket
  # enters one, and what an edge tells. The first activation reads what is
  # already there before registering: a connection whose data (or end) came
  # with it is served at once and costs no epoll_ctl, and is not registered
  # ready, which would wake the pump for an event already handled. One that
  # must wait is registered, edge-triggered, and gets its data when it
  # comes. The kernel tells which sockets an epoll set holds:
  # /proc/self/fdinfo/<epoll fd> has a "tfd:" line for each. Not async: a
  # closed fd's number must not be taken by another test's socket before the
  # last check.
  use ExUnit.Case, async: false

  @epollet 0x80000000

  # Left out (test_helper.exs) when the poller thread delivers.
  @moduletag :pump_mode

  setup do
    {:ok, listener} = Islet.TCP.listen(0, ip: {127, 0, 0, 1})
    {:ok, {_, port}} = Islet.TCP.sockname(listener)
    {:ok, client} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])
    {:ok, server} = Islet.TCP.accept(listener)

    on_exit(fn ->
      :gen_tcp.close(client)
      Islet.TCP.close(listener)
    end)

    %{client: client, server: server}
  end

  test "data there at activation is delivered without registering; waiting registers", ctx do
    %{client: client, server: server} = ctx
    :ok = :gen_tcp.send(client, "first")
    wait_queued(server)
    fd = fd_of(server)

    fresh_timeslice()
    :ok = Islet.TCP.setopts(server, active: :once)
    assert_receive {:tcp, ^server, "first"}, 1_000
    refute registered?(fd)

    # Nothing there now: it waits in a pump's set, edge-triggered.
    :ok = Islet.TCP.setopts(server, active: :once)
    assert registered?(fd)
    refute_received {:tcp, ^server, _}
    :ok = :gen_tcp.send(client, "second")
    assert_receive {:tcp, ^server, "second"}, 1_000

    # Registered for good: later activations find data by the set.
    :ok = :gen_tcp.send(client, "third")
    wait_queued(server)
    :ok = Islet.TCP.setopts(server, active: :once)
    assert_receive {:tcp, ^server, "third"}, 1_000

    :ok = Islet.TCP.close(server)
    refute registered?(fd)
  end

  test "an end there at activation is delivered without registering", ctx do
    %{client: client, server: server} = ctx
    fd = fd_of(server)
    :ok = :gen_tcp.send(client, "bye")
    :ok = :gen_tcp.close(client)
    # The data and the FIN both: with only the data there, the activation
    # would rightly register to wait for the end.
    wait_close_wait(server)

    fresh_timeslice()
    :ok = Islet.TCP.setopts(server, active: true)
    assert_receive {:tcp, ^server, "bye"}, 1_000
    assert_receive {:tcp_closed, ^server}, 1_000
    refute registered?(fd)
    Islet.TCP.close(server)
  end

  test "active true with nothing there registers, and every byte comes", ctx do
    %{client: client, server: server} = ctx
    fd = fd_of(server)
    :ok = Islet.TCP.setopts(server, active: true)
    assert registered?(fd)
    for i <- 1..20, do: :ok = :gen_tcp.send(client, "m#{i};")
    expected = Enum.map_join(1..20, &"m#{&1};")
    assert collect(server, byte_size(expected)) == expected
  end

  # A pump that gets one edge for data and the peer's end together reads
  # the data in a short read, which used to count as "socket emptied": a
  # socket in active: :once then never heard of the end (no new edge comes
  # for it), and the owner waited for a close that was already there. The
  # race hit a few connections in a few hundred.
  test "data and the peer's close in one edge: the close comes on the next activation" do
    {:ok, listener} = Islet.TCP.listen(0, ip: {127, 0, 0, 1})
    {:ok, {_, port}} = Islet.TCP.sockname(listener)

    lost =
      for i <- 1..300, reduce: 0 do
        lost ->
          {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])
          {:ok, s} = Islet.TCP.accept(listener)
          # In the pump's set, active, before anything comes.
          :ok = Islet.TCP.setopts(s, active: :once)
          :ok = :gen_tcp.send(c, "x#{i}")
          :ok = :gen_tcp.close(c)
          assert_receive {:tcp, ^s, _}, 2_000
          :ok = Islet.TCP.setopts(s, active: :once)

          closed =
            receive do
              {:tcp_closed, ^s} -> true
            after
              1_000 -> false
            end

          Islet.TCP.close(s)
          if closed, do: lost, else: lost + 1
      end

    Islet.TCP.close(listener)
    assert lost == 0
  end

  # An activation that finds its process's timeslice used up reads one
  # chunk, then leaves the rest to a pump (registering the socket), as it
  # should: the one way it registers with the data and the end both there.
  # The tests that check it does not register start it with a fresh slice.
  # (One CI run under ASan, 2026-12-06, failed there; burning reductions
  # before the activation did not reproduce it.)
  defp fresh_timeslice, do: :erlang.yield()

  defp collect(server, size, acc \\ "") do
    if byte_size(acc) >= size do
      acc
    else
      assert_receive {:tcp, ^server, data}, 1_000
      collect(server, size, acc <> data)
    end
  end

  # The socket's fd: the /proc/self/fd entry that is the socket whose inode
  # /proc/net/tcp gives for its local port.
  defp fd_of(socket) do
    inode = tcp_row(socket).inode
    link = "socket:[#{inode}]"

    "/proc/self/fd"
    |> File.ls!()
    |> Enum.find(fn fd -> File.read_link("/proc/self/fd/" <> fd) == {:ok, link} end)
    |> String.to_integer()
  end

  # Bytes received but not yet read by the server, as the kernel counts them.
  # Until the peer's FIN has come (CLOSE_WAIT, "08" in /proc/net/tcp).
  defp wait_close_wait(socket, tries \\ 200) do
    cond do
      tcp_row(socket).state == "08" -> :ok
      tries == 0 -> flunk("the peer's FIN did not come")
      true -> Process.sleep(5) && wait_close_wait(socket, tries - 1)
    end
  end

  defp wait_queued(socket, tries \\ 200) do
    row = tcp_row(socket)

    cond do
      row.rx_queue > 0 or row.state != "01" ->
        :ok

      tries == 0 ->
        flunk("no data queued on the server socket")

      true ->
        Process.sleep(5)
        wait_queued(socket, tries - 1)
    end
  end

  defp tcp_row(socket) do
    {:ok, {_, port}} = Islet.TCP.sockname(socket)
    {:ok, {_, peer_port}} = Islet.TCP.peername(socket)
    local = "0100007F:" <> hex4(port)
    remote = "0100007F:" <> hex4(peer_port)

    "/proc/net/tcp"
    |> File.read!()
    |> String.split("\n", trim: true)
    |> Enum.drop(1)
    |> Enum.map(&String.split/1)
    |> Enum.find_value(fn
      [_, ^local, ^remote, state, queues | rest] ->
        [_tx, rx] = String.split(queues, ":")
        %{state: state, rx_queue: String.to_integer(rx, 16), inode: Enum.at(rest, 4)}

      _ ->
        nil
    end)
  end

  defp hex4(port), do: port |> Integer.to_string(16) |> String.pad_leading(4, "0")

  # Whether any epoll set of this VM holds fd edge-triggered (the BEAM's
  # own poll sets use one-shot events, the pumps' sets edge-triggered ones).
  defp registered?(fd) do
    "/proc/self/fd"
    |> File.ls!()
    |> Enum.filter(&(File.read_link("/proc/self/fd/" <> &1) == {:ok, "anon_inode:[eventpoll]"}))
    |> Enum.any?(fn epfd ->
      case File.read("/proc/self/fdinfo/" <> epfd) do
        {:ok, info} -> holds_edge_triggered?(info, fd)
        {:error, _} -> false
      end
    end)
  end

  defp holds_edge_triggered?(info, fd) do
    info
    |> String.split("\n")
    |> Enum.any?(fn line ->
      case String.split(line) do
        ["tfd:", tfd, "events:", events | _] ->
          String.to_integer(tfd) == fd and
            Bitwise.band(String.to_integer(events, 16), @epollet) != 0

        _ ->
          false
      end
    end)
  end
end

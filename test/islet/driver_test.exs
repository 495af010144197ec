defmodule Islet.DriverTest do
  # Drives a transport the way Thousand Island's acceptors and handlers do
  # (see CONTRACT.md "Per connection"), with many concurrent clients, and
  # checks every byte. Runs against the gen_tcp reference and Islet.TCP.
  #
  # Per connection: an acceptor (one of 100 looping on accept on one
  # listener) starts a handler, calls controlling_process (result ignored)
  # and sends it the socket. The handler calls peername, handshake/2, then
  # runs an active-once loop (setopts(active: :once) after every packet),
  # then a passive phase (recv 0 / recv n / recv 0 with timeout 0), reads
  # getstat (send_oct, send_cnt, recv_oct, recv_cnt) and closes.
  #
  # Protocol: frames <<len::32, id::32, seq::32, pattern::binary>>; the
  # handler checks each payload and echoes the frame. The client sends its
  # active-phase frames all at once (so packets coalesce and split), a
  # switch frame (seq 0xFFFFFFFF), passive-phase frames one at a time, and
  # a bye frame (seq 0xFFFFFFFE) after which the handler closes.
  use ExUnit.Case, async: false

  alias Islet.Test.Diff

  @moduletag timeout: 120_000

  @acceptors 100
  @clients 200
  @active_frames 20
  @passive_frames 10
  @switch 0xFFFFFFFF
  @bye 0xFFFFFFFE

  for {label, mod} <- Diff.modules() do
    @mod mod
    test "#{@clients} concurrent clients on #{@acceptors} acceptors (#{label})" do
      run(@mod)
    end
  end

  defp run(mod) do
    test = self()

    # The listener process owns the listener, as Thousand Island's does.
    listener =
      spawn_link(fn ->
        {:ok, l} = mod.listen(0, ip: :loopback)
        {:ok, {_, port}} = mod.sockname(l)
        Kernel.send(test, {:listening, l, port})
        receive(do: (:shutdown -> Kernel.send(test, {:listener_closed, mod.close(l)})))
      end)

    {l, port} = receive(do: ({:listening, l, port} -> {l, port}))

    for i <- 1..@acceptors do
      spawn_link(fn -> acceptor(mod, l, test, i) end)
    end

    clients =
      for id <- 1..@clients do
        spawn_link(fn -> Kernel.send(test, {:client, id, client(port, id)}) end)
      end

    client_results = for id <- 1..@clients, do: receive_within({:client, id})
    handler_results = for _ <- 1..@clients, do: receive_within(:handler)

    Kernel.send(listener, :shutdown)
    assert receive_within(:listener_closed) == :ok
    acceptor_results = for i <- 1..@acceptors, do: receive_within({:acceptor, i})

    handler_errors = for {:error, e} <- handler_results, do: e

    assert handler_errors == [],
           "#{length(handler_errors)} handlers failed, first:\n#{hd(handler_errors ++ [nil])}"

    assert Enum.frequencies(Enum.map(client_results, &elem(&1, 0))) == %{ok: @clients},
           inspect(Enum.reject(client_results, &match?({:ok, _}, &1)) |> Enum.take(5))

    client_ports =
      for {id, {:ok, port}} <- Enum.zip(1..@clients, client_results), into: %{}, do: {id, port}

    assert Enum.frequencies(acceptor_results) == %{{:error, :closed} => @acceptors}

    # Every handler saw its own client as peer, and its statistics match
    # the bytes it read and wrote.
    assert length(handler_results) == @clients

    for result <- handler_results do
      assert {:ok, %{id: id, peer: peer, stats: stats, counted: counted}} = result
      assert peer == {{127, 0, 0, 1}, client_ports[id]}
      assert stats[:recv_oct] == counted.recv_oct
      assert stats[:send_oct] == counted.send_oct
      assert stats[:send_cnt] == counted.send_cnt
      assert stats[:recv_cnt] >= 1 and stats[:recv_cnt] <= counted.recv_oct
    end

    ids = for {:ok, %{id: id}} <- handler_results, do: id
    assert Enum.sort(ids) == Enum.to_list(1..@clients)
    assert length(clients) == @clients
    assert Diff.messages() == []
  end

  defp receive_within(tag) do
    receive do
      {^tag, result} -> result
      {:client, id, result} when tag == {:client, id} -> result
      {:acceptor, i, result} when tag == {:acceptor, i} -> result
    after
      60_000 -> flunk("no #{inspect(tag)} within 60 s")
    end
  end

  ## Server side, as Thousand Island runs it.

  defp acceptor(mod, l, test, i) do
    case mod.accept(l) do
      {:ok, socket} ->
        handler = spawn(fn -> handler(mod, test) end)
        _ = mod.controlling_process(socket, handler)
        Kernel.send(handler, {:socket, socket})
        acceptor(mod, l, test, i)

      other ->
        Kernel.send(test, {:acceptor, i, other})
    end
  end

  defp handler(mod, test) do
    result =
      try do
        raw = receive(do: ({:socket, s} -> s))
        {:ok, peer} = mod.peername(raw)
        {:ok, s} = mod.handshake(raw, 15_000)
        :ok = mod.setopts(s, active: :once)
        st = %{mod: mod, s: s, id: nil, recv_oct: 0, send_oct: 0, send_cnt: 0}
        {st, rest} = active_loop(st, "")
        {st, :bye} = passive_loop(st, rest)
        {:ok, stats} = mod.getstat(s)
        counted = Map.take(st, [:recv_oct, :send_oct, :send_cnt])
        :ok = mod.close(s)
        {:ok, %{id: st.id, peer: peer, stats: Map.new(stats), counted: counted}}
      rescue
        e -> {:error, Exception.format(:error, e, __STACKTRACE__)}
      end

    Kernel.send(test, {:handler, result})
  end

  defp active_loop(%{s: s} = st, buf) do
    receive do
      {:tcp, ^s, data} ->
        st = %{st | recv_oct: st.recv_oct + byte_size(data)}

        case frames(st, buf <> data) do
          {st, rest, :continue} ->
            :ok = st.mod.setopts(s, active: :once)
            active_loop(st, rest)

          {st, rest, :switch} ->
            {st, rest}
        end

      {:tcp_closed, ^s} ->
        raise "closed in active phase"

      {:tcp_error, ^s, reason} ->
        raise "tcp_error #{inspect(reason)}"

      other ->
        raise "unexpected message #{inspect(other)}"
    after
      30_000 -> raise "no data in active phase"
    end
  end

  # Handles the complete frames in buf; stops after a switch frame.
  defp frames(st, <<len::32, frame::binary-size(len), rest::binary>>) do
    <<id::32, seq::32, _::binary>> = frame
    check_frame!(frame)
    st = echo(st, len, frame)
    st = %{st | id: id}

    if seq == @switch, do: {st, rest, :switch}, else: frames(st, rest)
  end

  defp frames(st, buf), do: {st, buf, :continue}

  defp passive_loop(st, buf) do
    # Header: whatever is there (recv 0), until 4 bytes are in hand.
    {st, buf} = fill(st, buf, 4)
    <<len::32, buf::binary>> = buf
    # Payload: exactly what is missing (recv n).
    {st, frame, buf} =
      if byte_size(buf) >= len do
        {frame, rest} = :erlang.split_binary(buf, len)
        {st, frame, rest}
      else
        {:ok, more} = st.mod.recv(st.s, len - byte_size(buf), 30_000)
        {%{st | recv_oct: st.recv_oct + byte_size(more)}, buf <> more, ""}
      end

    check_frame!(frame)
    <<_id::32, seq::32, _::binary>> = frame
    st = echo(st, len, frame)

    if seq == @bye do
      "" = buf
      {st, :bye}
    else
      # Only what is already buffered (the client waits for our echo, so
      # usually nothing): recv(s, 0, 0).
      case st.mod.recv(st.s, 0, 0) do
        {:error, :timeout} -> passive_loop(st, buf)
        {:ok, more} -> passive_loop(%{st | recv_oct: st.recv_oct + byte_size(more)}, buf <> more)
      end
    end
  end

  defp fill(st, buf, n) when byte_size(buf) >= n, do: {st, buf}

  defp fill(st, buf, n) do
    {:ok, more} = st.mod.recv(st.s, 0, 30_000)
    fill(%{st | recv_oct: st.recv_oct + byte_size(more)}, buf <> more, n)
  end

  # Every other frame goes out as one binary, the others as an iolist
  # (handlers send whatever iodata they have).
  defp echo(st, len, frame) do
    data = if rem(st.send_cnt, 2) == 0, do: [<<len::32>>, frame], else: <<len::32, frame::binary>>
    :ok = st.mod.send(st.s, data)
    %{st | send_oct: st.send_oct + 4 + len, send_cnt: st.send_cnt + 1}
  end

  ## Client side: a plain gen_tcp client.

  defp frame(id, seq) do
    size = rem(id * 7919 + seq * 104_729, 20_000) + 1
    payload = pattern(id, seq, size)
    <<byte_size(payload) + 8::32, id::32, seq::32, payload::binary>>
  end

  defp pattern(id, seq, size) do
    seed = :crypto.hash(:sha256, <<id::32, seq::32>>)
    :binary.part(:binary.copy(seed, div(size, 32) + 1), 0, size)
  end

  defp check_frame!(<<id::32, seq::32, payload::binary>>) do
    unless payload == pattern(id, seq, byte_size(payload)) do
      raise "corrupt payload from client #{id}, frame #{seq}"
    end
  end

  defp client(port, id) do
    {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], 30_000)
    {:ok, {_, local_port}} = :inet.sockname(c)

    active = for seq <- 1..@active_frames, do: frame(id, seq)
    switch = frame(id, @switch)
    :ok = :gen_tcp.send(c, active ++ [switch])

    for f <- active ++ [switch] do
      {:ok, ^f} = :gen_tcp.recv(c, byte_size(f), 30_000)
    end

    for seq <- (@active_frames + 1)..(@active_frames + @passive_frames) do
      f = frame(id, seq)
      :ok = :gen_tcp.send(c, f)
      {:ok, ^f} = :gen_tcp.recv(c, byte_size(f), 30_000)
    end

    bye = frame(id, @bye)
    :ok = :gen_tcp.send(c, bye)
    {:ok, ^bye} = :gen_tcp.recv(c, byte_size(bye), 30_000)
    {:error, :closed} = :gen_tcp.recv(c, 0, 30_000)
    :gen_tcp.close(c)
    {:ok, local_port}
  rescue
    e -> {:error, Exception.message(e)}
  end
end

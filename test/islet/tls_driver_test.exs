defmodule Islet.TLSDriverTest do
  # Drives a TLS transport the way Thousand Island's acceptors and handlers
  # do (1.3 to 1.5): 100 acceptor processes share one listener; each accepted
  # socket is handed to a new handler process with controlling_process; the
  # handler calls peername, handshake(socket, timeout), reads the first bytes
  # in passive mode, then loops in active-once mode (setopts(active: :once)
  # after each packet, matching the socket it holds), echoes with send, and
  # on close reads getstat and closes. About 100 concurrent :ssl clients send
  # several messages each; every byte is checked. Runs against Islet.TLS and
  # against Islet.Reference.SSL (:ssl), and the outcomes must agree.
  use ExUnit.Case, async: false

  alias Islet.Test.{Certs, Diff, TLSDiff}

  require Islet.Test.TLSDiff

  @moduletag :capture_log
  @moduletag timeout: 180_000

  @acceptors 100
  @clients 100
  @messages 6

  setup_all do
    Certs.dir()
    :ok
  end

  ## The miniature Thousand Island.

  defp start_server(mod, opts) do
    {:ok, l} = mod.listen(0, [ip: :loopback] ++ opts ++ Certs.server_opts())
    {:ok, {_, port}} = mod.sockname(l)
    test = self()

    acceptors =
      for _ <- 1..@acceptors do
        spawn_link(fn -> accept_loop(mod, l, test) end)
      end

    {l, port, acceptors}
  end

  defp accept_loop(mod, l, test) do
    case mod.accept(l) do
      {:ok, s} ->
        handler = spawn(fn -> handler_init(mod, test) end)
        # Thousand Island ignores the result.
        _ = mod.controlling_process(s, handler)
        Kernel.send(handler, {:thousand_island_ready, s})
        accept_loop(mod, l, test)

      {:error, reason} ->
        Kernel.send(test, {:acceptor_stopped, reason})
    end
  end

  defp handler_init(mod, test) do
    receive do
      {:thousand_island_ready, raw} ->
        with {:ok, _peer} <- mod.peername(raw),
             {:ok, s} <- mod.handshake(raw, 15_000) do
          # The first bytes, in passive mode (as a handler's handle_connection may).
          case mod.recv(s, 0, 15_000) do
            {:ok, data} ->
              :ok = mod.send(s, data)
              active_loop(mod, s, test, %{packets: 1, bytes: byte_size(data)})

            error ->
              finish(mod, s, test, {:first_recv, error}, %{})
          end
        else
          error ->
            mod.close(raw)
            Kernel.send(test, {:handler, {:handshake_failed, error}})
        end
    after
      15_000 -> Kernel.send(test, {:handler, :never_got_socket})
    end
  end

  defp active_loop(mod, s, test, acc) do
    :ok = mod.setopts(s, active: :once)

    receive do
      {:ssl, ^s, data} ->
        case mod.send(s, data) do
          :ok ->
            active_loop(mod, s, test, %{
              acc
              | packets: acc.packets + 1,
                bytes: acc.bytes + byte_size(data)
            })

          error ->
            finish(mod, s, test, {:send, error}, acc)
        end

      {:ssl_closed, ^s} ->
        finish(mod, s, test, :closed, acc)

      {:ssl_error, ^s, reason} ->
        finish(mod, s, test, {:ssl_error, reason}, acc)

      other ->
        finish(mod, s, test, {:unexpected, other}, acc)
    after
      30_000 -> finish(mod, s, test, :stuck, acc)
    end
  end

  defp finish(mod, s, test, how, acc) do
    # After the peer's close, :ssl answers getstat with {:error, :einval}
    # or the statistics depending on timing: either is accepted, anything
    # else is reported.
    stats =
      case mod.getstat(s) do
        {:ok, stats} ->
          Enum.all?([:send_oct, :send_cnt, :recv_oct, :recv_cnt], &is_integer(stats[&1])) or
            {:bad_stats, stats}

        {:error, _} ->
          true

        other ->
          other
      end

    Kernel.send(test, {:handler, {how, stats, Map.get(acc, :bytes)}})
    mod.close(s)
  end

  ## The clients.

  defp client(port, i) do
    opts = Keyword.merge(Certs.client_opts(), active: false)

    case :ssl.connect(~c"localhost", port, opts, 30_000) do
      {:ok, c} ->
        sizes = for j <- 1..@messages, do: 1 + rem(i * 7919 + j * 104_729, 40_000)

        checked =
          Enum.map(Enum.with_index(sizes), fn {size, j} ->
            data = Diff.pattern(size, i * 100 + j)
            :ok = :ssl.send(c, data)

            case TLSDiff.ssl_recv_exact(c, size, 30_000) do
              {:ok, ^data} -> :ok
              {:ok, other} -> {:corrupt, byte_size(other)}
              error -> error
            end
          end)

        :ssl.close(c)
        {checked, Enum.sum(sizes)}

      error ->
        {:connect, error}
    end
  end

  defp run_driver(mod, opts \\ []) do
    {l, port, _acceptors} = start_server(mod, opts)
    test = self()

    for i <- 1..@clients do
      spawn_link(fn -> Kernel.send(test, {:client, i, client(port, i)}) end)
    end

    clients =
      for _ <- 1..@clients do
        receive do
          {:client, i, result} -> {i, result}
        after
          90_000 -> {:hang, :client}
        end
      end

    handlers =
      for _ <- 1..@clients do
        receive do
          {:handler, result} -> result
        after
          30_000 -> :handler_hang
        end
      end

    # Shutting down: closing the listener wakes every acceptor with :closed.
    :ok = mod.close(l)

    stopped =
      for _ <- 1..@acceptors do
        receive do
          {:acceptor_stopped, reason} -> reason
        after
          10_000 -> :acceptor_hang
        end
      end

    client_ok =
      Enum.count(clients, fn
        {_, {checks, _}} -> Enum.all?(checks, &(&1 == :ok))
        _ -> false
      end)

    bytes =
      clients
      |> Enum.map(fn
        {_, {_, n}} when is_integer(n) -> n
        _ -> 0
      end)
      |> Enum.sum()

    %{
      clients_ok: client_ok,
      client_failures:
        Enum.reject(clients, fn
          {_, {checks, _}} when is_list(checks) -> Enum.all?(checks, &(&1 == :ok))
          _ -> false
        end),
      handler_ends:
        handlers
        |> Enum.map(fn
          {how, stats, _} -> {how, stats}
          other -> other
        end)
        |> Enum.frequencies(),
      handler_bytes:
        handlers
        |> Enum.map(fn
          {_, _, b} when is_integer(b) -> b
          _ -> 0
        end)
        |> Enum.sum(),
      client_bytes: bytes,
      acceptors: Enum.frequencies(stopped)
    }
  end

  for {label, mod} <- [ssl: Islet.Reference.SSL, islet: Islet.TLS] do
    @mod mod
    test "#{label}: 100 acceptors, ~100 concurrent clients x #{@messages} messages, every byte checked" do
      result = run_driver(@mod)

      assert result.client_failures == []
      assert result.clients_ok == @clients
      assert result.handler_ends == %{{:closed, true} => @clients}
      assert result.handler_bytes == result.client_bytes
      assert result.acceptors == %{closed: @acceptors}
    end
  end

  test "both transports give the same outcome (TLS 1.2, ECDSA certificate)" do
    opts = [versions: [:"tlsv1.2"]] ++ Certs.server_opts(:server_ec)

    TLSDiff.assert_same(
      fn mod ->
        result = run_driver(mod, opts)

        Map.drop(result, [:client_bytes, :handler_bytes])
        |> Map.put(:bytes_match, result.client_bytes == result.handler_bytes)
      end,
      timeout: 150_000
    )
  end
end

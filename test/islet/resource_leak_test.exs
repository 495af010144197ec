defmodule Islet.ResourceLeakTest do
  # A socket that is closed and no longer referenced is destroyed, even when
  # what it holds refers back to it. The case: a STARTTLS upgrade whose
  # sni_fun closes over the socket being upgraded. The socket holds its TLS
  # state, which holds the context, which holds the sni_fun, which holds the
  # socket: if the TLS state lived until the destructor, none of them would
  # ever go (found by fuzz/fuzz_terms.cpp).
  #
  # async: false: the count of live sockets (a test-only NIF) is global.
  use ExUnit.Case, async: false

  alias Islet.Test.{Certs, Diff}

  @rounds 8

  # Runs `rounds` upgrades in a process of their own, then waits for every
  # socket they made to be destroyed.
  defp assert_all_freed(client_fun) do
    :erlang.garbage_collect()
    Diff.wait_until(fn -> Islet.Nif.live_sockets() == settle() end, 2_000)
    before = Islet.Nif.live_sockets()

    {pid, ref} =
      spawn_monitor(fn ->
        {:ok, l} = Islet.TCP.listen(0, ip: :loopback)
        {:ok, {_, port}} = Islet.TCP.sockname(l)

        results =
          for _ <- 1..@rounds do
            client = Task.async(fn -> client_fun.(port) end)
            {:ok, s} = Islet.TCP.accept(l)
            # The closure keeps the socket: socket -> context -> sni_fun -> socket.
            fun = fn _name ->
              Process.put(:sni_peer, Islet.TLS.peername(s))
              []
            end

            opts = Certs.server_opts() ++ [sni_fun: fun, handshake_timeout: 10_000]

            result =
              case Islet.TLS.upgrade(s, opts) do
                {:ok, tls} ->
                  Islet.TLS.close(tls)
                  :ok

                {:error, _} ->
                  Islet.TCP.close(s)
                  :failed
              end

            {result, Task.await(client, 15_000)}
          end

        Islet.TCP.close(l)
        exit({:done, results})
      end)

    assert_receive {:DOWN, ^ref, :process, ^pid, {:done, results}}, 60_000
    settled = Diff.wait_until(fn -> Islet.Nif.live_sockets() <= before end, 5_000)
    left = Islet.Nif.live_sockets() - before
    assert settled == :ok, "#{left} sockets of #{@rounds * 2 + 1} outlived their close"
    results
  end

  # The count once sockets other tests left to the garbage collector are gone.
  defp settle do
    n = Islet.Nif.live_sockets()
    Process.sleep(50)
    min(n, Islet.Nif.live_sockets())
  end

  test "an upgraded socket whose sni_fun holds it is freed once closed (handshake done)" do
    results =
      assert_all_freed(fn port ->
        {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])

        case :ssl.connect(c, Certs.client_opts(), 10_000) do
          {:ok, tls} ->
            # Wait for the server's close: the server side is done with it.
            _ = :ssl.recv(tls, 0, 10_000)
            :ssl.close(tls)
            :ok

          error ->
            error
        end
      end)

    assert results == List.duplicate({:ok, :ok}, @rounds)
  end

  test "an upgraded socket whose sni_fun holds it is freed once closed (handshake failed)" do
    results =
      assert_all_freed(fn port ->
        {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])
        :ok = :gen_tcp.send(c, "not a ClientHello, not TLS at all\r\n")
        _ = :gen_tcp.recv(c, 0, 10_000)
        :gen_tcp.close(c)
      end)

    assert results == List.duplicate({:failed, :ok}, @rounds)
  end
end

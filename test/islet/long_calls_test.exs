defmodule Islet.LongCallsTest do
  # A send's cost grows with its iodata: a normal scheduler takes a bounded
  # share of it (a list of up to 8,192 binaries, 1 MiB written per call) and
  # the rest runs on a dirty scheduler (a longer list) or in later calls (a
  # pump writes what is queued). Microstate accounting is global: the module
  # runs alone (async: false).
  use ExUnit.Case, async: false

  import Bitwise
  require Islet.Test.Diff

  alias Islet.TCP

  @moduletag timeout: 120_000
  @budget 1 <<< 20

  setup do
    {:ok, l} = TCP.listen(0, ip: :loopback)
    {:ok, {_, port}} = TCP.sockname(l)
    {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])
    {:ok, s} = TCP.accept(l)
    on_exit(fn -> :gen_tcp.close(c) end)
    %{s: s, c: c, l: l}
  end

  test "a send of 40,000 binaries runs on a dirty CPU scheduler", %{s: s, c: c} do
    data = for i <- 1..40_000, do: <<i::32, 0::unit(8)-size(1_000)>>
    total = 40_000 * 1_004
    reader = Task.async(fn -> recv_all(c, total, []) end)

    :erlang.system_flag(:microstate_accounting, :reset)
    :erlang.system_flag(:microstate_accounting, true)
    result = TCP.send(s, data)
    :erlang.system_flag(:microstate_accounting, false)

    assert result == :ok
    assert Task.await(reader, 60_000) == IO.iodata_to_binary(data)

    dirty_cpu =
      for %{type: :dirty_cpu_scheduler, counters: counters} <- msacc(),
          do: counters.emulator + Map.get(counters, :nif, 0)

    assert Enum.sum(dirty_cpu) > 0, "the send never ran on a dirty CPU scheduler"
  end

  test "no call on a normal scheduler writes more than 1 MiB", %{s: s, c: c} do
    big = :crypto.strong_rand_bytes(24 <<< 20)
    parts = for i <- 1..64, do: :binary.copy(<<i>>, 64 <<< 10)
    reader = Task.async(fn -> recv_all(c, byte_size(big) + 64 * (64 <<< 10), []) end)

    # A single binary (the send's own writev, then a pump's flushes), then
    # a list behind it (queued, written by the pump and by close's drain).
    assert TCP.send(s, big) == :ok
    assert TCP.send(s, parts) == :ok
    assert TCP.close(s) == :ok

    assert Task.await(reader, 60_000) == IO.iodata_to_binary([big | parts])
    largest = Islet.Nif.largest_write(s)
    assert largest > 0 and largest <= @budget, "one call wrote #{largest} bytes"
  end

  # The budget must not change what a send answers: gen_tcp's one writev
  # takes all the kernel can, and what it leaves queued decides whether
  # the next send waits (busy). A send cut at 1 MiB left 2 MiB queued that
  # the kernel would have taken, and the second send timed out where
  # gen_tcp's returned.
  # The time slice pays for what a call moved: a recv(n) that read half a
  # MiB and then waited for the rest charged nothing for it, so a process
  # looping on such reads could keep its scheduler past its slice.
  test "a recv(n) that reads, then waits, charges what it read", %{s: s, c: c} do
    :ok = :gen_tcp.send(c, :binary.copy(<<5>>, 512 <<< 10))
    Process.sleep(50)
    {:reductions, before} = Process.info(self(), :reductions)
    assert TCP.recv(s, 1 <<< 20, 20) == {:error, :timeout}
    {:reductions, after_recv} = Process.info(self(), :reductions)
    # 1% of a slice (4,000 reductions) per 8 KiB: 2,560 for 512 KiB.
    assert after_recv - before >= 2_000, "charged #{after_recv - before} reductions"
  end

  test "sends past the budget to a peer that does not read answer as gen_tcp's" do
    Islet.Test.Diff.assert_same(fn mod ->
      {_l, s, _c} = Islet.Test.Diff.pair(mod, send_timeout: 300, send_timeout_close: false)
      big = :binary.copy("b", 3 <<< 20)

      for _ <- 1..4 do
        result = mod.send(s, big)
        {:ok, [send_pend: pending]} = mod.getstat(s, [:send_pend])
        {result, pending > 0}
      end
    end)
  end

  defp msacc do
    :erlang.statistics(:microstate_accounting)
  end

  defp recv_all(_c, 0, acc), do: IO.iodata_to_binary(Enum.reverse(acc))

  defp recv_all(c, left, acc) do
    {:ok, data} = :gen_tcp.recv(c, 0, 30_000)
    recv_all(c, left - byte_size(data), [data | acc])
  end
end

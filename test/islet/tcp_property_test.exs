defmodule Islet.TCPPropertyTest do
  # Random sequences of what a server does with a connection's bytes
  # (passive recv of exact or any length, with and without time to wait,
  # active :once and active N, the client's end among them), run on gen_tcp
  # and on Islet.TCP and compared call by call, with PropEr (Debian's
  # erlang-proper) generating the sequences and shrinking a failing one to
  # a minimal one.
  #
  # The client's bytes are in the server's socket before the server's next
  # call (loopback delivers them within the send; a short pause covers the
  # rest), and the connections read up to 64 KiB at once on both sides
  # (gen_tcp's `buffer` is raised to Islet's read size, and a case sends
  # less), so that what each call returns is the same on a correct
  # transport, not only the bytes in the end.
  use ExUnit.Case, async: true

  alias Islet.Test.Diff

  @moduletag :proper
  @moduletag timeout: 180_000

  # What the client does between the server's calls: sends n bytes (its
  # end comes after all of them, or not at all: `ending`).
  defp client_op do
    :proper_types.oneof([
      {:send, :proper_types.integer(1, 3000)},
      {:send, :proper_types.integer(1, 40)}
    ])
  end

  # What the server does.
  defp server_op do
    :proper_types.oneof([
      {:recv, 0, :proper_types.oneof([0, 5])},
      {:recv, :proper_types.integer(1, 4000), :proper_types.oneof([0, 5])},
      {:recv, :proper_types.integer(1, 30), :proper_types.oneof([0, 5])},
      :once,
      {:active, :proper_types.integer(1, 3)},
      :active_true
    ])
  end

  defp ops do
    op =
      :proper_types.frequency([
        {2, client_op()},
        {3, server_op()}
      ])

    :proper_types.tuple([
      :proper_types.list(op),
      :proper_types.oneof([:end, :open]),
      :proper_types.list(server_op())
    ])
  end

  # Byte i of the client's stream, so that a byte out of place shows.
  defp bytes(from, n), do: for(i <- from..(from + n - 1)//1, into: <<>>, do: <<rem(i, 251)>>)

  defp scenario({ops, ending, after_end}) do
    fn mod ->
      {_l, s, c} = Diff.pair(mod, buffer: 65_536)
      :ok = :inet.setopts(c, nodelay: true)
      {results, at} = Enum.map_reduce(ops, {0, 0}, &step(mod, s, c, &1, &2))

      ended =
        if ending == :end do
          :ok = :gen_tcp.shutdown(c, :write)
          Process.sleep(3)
          {ended, _} = Enum.map_reduce(after_end, at, &step(mod, s, c, &1, &2))
          ended
        else
          []
        end

      {results, ended}
    end
  end

  # `{sent, read}`: the bytes the client sent and those the server read.
  defp step(_mod, _s, c, {:send, n}, {sent, read}) do
    :ok = :gen_tcp.send(c, bytes(sent, n))
    Process.sleep(2)
    {:sent, {sent + n, read}}
  end

  # A recv(n) of more than has come is left out: once one timed out,
  # gen_tcp's next read of any kind is of that length (a documented
  # difference, tested apart in tcp_conformance_io_test).
  defp step(_mod, _s, _c, {:recv, n, _t}, {sent, read} = at) when n > sent - read,
    do: {:skipped, at}

  defp step(mod, s, _c, {:recv, n, t}, at), do: read(mod.recv(s, n, t), at)

  # Active modes take what is there, then the socket goes back to passive
  # (nothing arrives meanwhile: the ops run one after the other).
  defp step(mod, s, _c, :once, at), do: read(activated(mod, s, :once), at)
  defp step(mod, s, _c, {:active, n}, at), do: read(activated(mod, s, n), at)
  defp step(mod, s, _c, :active_true, at), do: read(activated(mod, s, true), at)

  defp read(result, {sent, read}), do: {result, {sent, read + data_size(result)}}

  defp data_size({:ok, data}) when is_binary(data), do: byte_size(data)
  defp data_size({_set, got, _unset, more}), do: data_size(got ++ more)

  defp data_size(messages) when is_list(messages),
    do: Enum.sum(for {:tcp, d} <- messages, do: byte_size(d))

  defp data_size(_), do: 0

  defp activated(mod, s, mode) do
    set = mod.setopts(s, active: mode)
    got = messages(s, [])
    # A closed socket refuses setopts; its answer is compared too.
    {set, got, mod.setopts(s, active: false), messages(s, [])}
  end

  defp messages(s, acc) do
    receive do
      {:tcp, ^s, data} -> messages(s, [{:tcp, data} | acc])
      {tag, ^s} when tag in [:tcp_closed, :tcp_passive] -> messages(s, [tag | acc])
      {:tcp_error, ^s, reason} -> messages(s, [{:tcp_error, reason} | acc])
    after
      30 -> Enum.reverse(acc)
    end
  end

  test "any sequence of reads gives what gen_tcp gives, call by call" do
    prop =
      :proper.forall(ops(), fn ops ->
        {gen_tcp, islet} = Diff.run(scenario(ops))

        if gen_tcp == islet do
          true
        else
          IO.puts(:stderr, "\n#{inspect(ops)}\n" <> Diff.report(gen_tcp, islet))
          false
        end
      end)

    result = :proper.quickcheck(prop, [:quiet, numtests: 60, max_size: 12])
    assert result == true, "counterexample: #{inspect(:proper.counterexample())}"
  end
end

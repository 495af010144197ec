defmodule Islet.Test.ReadProperty do
  @moduledoc """
  A PropEr property over random sequences of what a server does with a
  connection's bytes: passive `recv` of any or an exact length, active
  `:once`, N and `true`, with the client's sends in between and its end
  after them (or not). Each sequence runs on the reference transport and on
  Islet's, and the two are compared call by call; PropEr (Debian's
  erlang-proper) shrinks a failing sequence to a minimal one.

  The client's bytes are in the server's socket before the server's next
  call (loopback delivers them within the send; a short pause covers the
  rest), so that what each call returns is the same on a correct transport,
  not only the bytes in the end. Calls whose answer depends on an on-purpose
  difference (README) are left out by the runner: a `recv(n)` of more than
  has come (after one timed out, gen_tcp's next read is of that length);
  with `one_record: true` (TLS) a send while bytes are still unread (`:ssl`
  delivers one record per call, Islet what has come).
  """

  @typedoc "How a transport's connection is made and driven."
  @type transport :: %{
          optional(:update) => (term(), boolean() -> :ok),
          required(:pair) => (module() -> {term(), term()}),
          required(:send) => (term(), binary() -> :ok),
          required(:finish) => (term() -> :ok),
          required(:tags) => {atom(), atom(), atom(), atom()},
          required(:timeouts) => [non_neg_integer()],
          required(:one_record) => boolean()
        }

  @doc """
  Checks the property for `numtests` random sequences; `run` runs a
  scenario on both transports (`{reference, islet}`) and `report` describes
  a difference. `true`, or the shrunk counterexample.
  """
  @spec check(
          transport(),
          ((module() -> term()) -> {term(), term()}),
          (term(), term() -> String.t()),
          pos_integer()
        ) :: true | term()
  def check(transport, run, report, numtests) do
    prop =
      :proper.forall(ops(transport), fn ops ->
        {reference, islet} = run.(scenario(transport, ops))
        # A scenario that broke off (raised, exited, hung) on both would compare
        # equal without having run: it fails too.
        ran? =
          not Enum.any?(
            [reference, islet],
            &match?({tag, _} when tag in [:raised, :died, :exit, :throw, :hang], &1)
          )

        if reference != islet or not ran?,
          do: IO.puts(:stderr, "\n#{inspect(ops)}\n" <> report.(reference, islet))

        ran? and reference == islet
      end)

    case :proper.quickcheck(prop, [:quiet, numtests: numtests, max_size: 12]) do
      true -> true
      _ -> :proper.counterexample()
    end
  end

  # What the client does between the server's calls: sends n bytes, or
  # (`update` given: TLS 1.3) updates its keys, asking the server to update
  # its own or not. Its end comes after all of them, or not at all.
  defp client_op(transport) do
    updates = if Map.has_key?(transport, :update), do: [{:update, :proper_types.bool()}], else: []

    :proper_types.oneof(
      [
        {:send, :proper_types.integer(1, 3000)},
        {:send, :proper_types.integer(1, 40)}
      ] ++ updates
    )
  end

  # What the server does.
  defp server_op(timeouts) do
    t = :proper_types.oneof(timeouts)

    :proper_types.oneof([
      {:recv, 0, t},
      {:recv, :proper_types.integer(1, 4000), t},
      {:recv, :proper_types.integer(1, 30), t},
      :once,
      {:active, :proper_types.integer(1, 3)},
      :active_true
    ])
  end

  defp ops(transport) do
    op = :proper_types.frequency([{2, client_op(transport)}, {3, server_op(transport.timeouts)}])

    :proper_types.tuple([
      :proper_types.list(op),
      :proper_types.oneof([:end, :open]),
      :proper_types.list(server_op(transport.timeouts))
    ])
  end

  # Byte i of the client's stream, so that a byte out of place shows.
  defp bytes(from, n), do: for(i <- from..(from + n - 1)//1, into: <<>>, do: <<rem(i, 251)>>)

  defp scenario(transport, {ops, ending, after_end}) do
    fn mod ->
      {s, c} = transport.pair.(mod)
      {results, at} = Enum.map_reduce(ops, {0, 0}, &step(transport, mod, s, c, &1, &2))

      ended =
        if ending == :end do
          :ok = transport.finish.(c)
          Process.sleep(3)
          {ended, _} = Enum.map_reduce(after_end, at, &step(transport, mod, s, c, &1, &2))
          ended
        else
          []
        end

      {results, ended}
    end
  end

  # `{sent, read}`: the bytes the client sent and those the server read.
  defp step(%{one_record: true}, _mod, _s, _c, {:send, _n}, {sent, read} = at) when sent > read,
    do: {:skipped, at}

  defp step(transport, _mod, _s, c, {:send, n}, {sent, read}) do
    :ok = transport.send.(c, bytes(sent, n))
    Process.sleep(2)
    {:sent, {sent + n, read}}
  end

  defp step(transport, _mod, _s, c, {:update, request?}, at) do
    :ok = transport.update.(c, request?)
    Process.sleep(2)
    {:updated, at}
  end

  defp step(_transport, _mod, _s, _c, {:recv, n, _t}, {sent, read} = at) when n > sent - read,
    do: {:skipped, at}

  defp step(_transport, mod, s, _c, {:recv, n, t}, at), do: read(mod.recv(s, n, t), at)

  # Active modes take what is there, then the socket goes back to passive
  # (nothing arrives meanwhile: the calls run one after the other).
  defp step(transport, mod, s, _c, op, at) do
    mode =
      case op do
        :once -> :once
        {:active, n} -> n
        :active_true -> true
      end

    read(activated(transport.tags, mod, s, mode), at)
  end

  defp activated(tags, mod, s, mode) do
    set = mod.setopts(s, active: mode)
    got = messages(tags, s, [])
    # A closed socket refuses setopts; its answer is compared too.
    {set, got, mod.setopts(s, active: false), messages(tags, s, [])}
  end

  defp messages({data, closed, passive, error} = tags, s, acc) do
    receive do
      {^data, ^s, bytes} -> messages(tags, s, [{:data, bytes} | acc])
      {tag, ^s} when tag in [closed, passive] -> messages(tags, s, [tag | acc])
      {^error, ^s, reason} -> messages(tags, s, [{:error, reason} | acc])
    after
      30 -> Enum.reverse(acc)
    end
  end

  defp read(result, {sent, read}), do: {result, {sent, read + data_size(result)}}

  defp data_size({:ok, data}) when is_binary(data), do: byte_size(data)
  defp data_size({_set, got, _unset, more}), do: data_size(got ++ more)

  defp data_size(messages) when is_list(messages),
    do: Enum.sum(for {:data, d} <- messages, do: byte_size(d))

  defp data_size(_), do: 0
end

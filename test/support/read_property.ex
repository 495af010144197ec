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
  not only the bytes in the end; what an active mode must deliver (the
  unread bytes, the end) is awaited before a quiet pause closes the
  collection, since the built-in transports deliver from their own poll,
  which a loaded machine delays. Calls whose answer depends on an on-purpose
  difference (README) are left out by the runner: a `recv(n)` of more than
  has come (after one timed out, gen_tcp's next read is of that length);
  with `one_record: true` (TLS) a send while bytes are still unread (`:ssl`
  delivers one record per call, Islet what has come).
  """

  # PropEr is Debian's erlang-proper, on the system's code path, not a Mix
  # dependency: the compiler cannot see it.
  @compile {:no_warn_undefined, [:proper, :proper_types]}

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

      {results, {sent, read, _}} =
        Enum.map_reduce(ops, {0, 0, false}, &step(transport, mod, s, c, &1, &2))

      ended =
        if ending == :end do
          :ok = transport.finish.(c)
          Process.sleep(3)

          {ended, _} =
            Enum.map_reduce(after_end, {sent, read, true}, &step(transport, mod, s, c, &1, &2))

          ended
        else
          []
        end

      {results, ended}
    end
  end

  # `{sent, read, ended}`: the bytes the client sent, those the server read,
  # and whether the client's end has come.
  defp step(%{one_record: true}, _mod, _s, _c, {:send, _n}, {sent, read, _} = at)
       when sent > read,
       do: {:skipped, at}

  defp step(transport, _mod, _s, c, {:send, n}, {sent, read, ended}) do
    :ok = transport.send.(c, bytes(sent, n))
    Process.sleep(2)
    {:sent, {sent + n, read, ended}}
  end

  defp step(transport, _mod, _s, c, {:update, request?}, at) do
    :ok = transport.update.(c, request?)
    Process.sleep(2)
    {:updated, at}
  end

  defp step(_transport, _mod, _s, _c, {:recv, n, _t}, {sent, read, _} = at)
       when n > sent - read,
       do: {:skipped, at}

  defp step(_transport, mod, s, _c, {:recv, n, t}, at), do: read(mod.recv(s, n, t), at)

  # Active modes take what is there, then the socket goes back to passive
  # (nothing arrives meanwhile: the calls run one after the other).
  defp step(transport, mod, s, _c, op, {sent, read, ended} = at) do
    mode =
      case op do
        :once -> :once
        {:active, n} -> n
        :active_true -> true
      end

    set = mod.setopts(s, active: mode)
    awaited = if set == :ok, do: awaited(mode, sent - read, ended), else: :nothing
    got = messages(transport.tags, s, awaited, [])
    # A closed socket refuses setopts; its answer is compared too.
    unset = mod.setopts(s, active: false)
    read({set, got, unset, messages(transport.tags, s, :nothing, [])}, at)
  end

  # What an active mode must deliver, on a correct transport, before the
  # quiet pause that ends the collection: the wait for it is long, so that
  # a loaded machine (the built-in transports deliver from their own poll,
  # which can lag tens of milliseconds) does not make the two differ.
  # `:once` gives one message if there is anything to give; N and `true`
  # give every unread byte, then the end if it has come (again, after a
  # passive read saw it: gen_tcp does so), unless the socket went passive
  # or failed first. A socket that refused the mode gives nothing.
  defp awaited(_mode, 0, false), do: :nothing
  defp awaited(:once, _unread, _ended), do: :one
  defp awaited(_mode, unread, ended), do: {:bytes, unread, ended}

  # The bytes to come (or one message, or nothing), then 30 ms of quiet.
  defp messages({data, closed, passive, error} = tags, s, awaited, acc) do
    wait = if awaited == :nothing, do: 30, else: 5_000

    receive do
      {^data, ^s, bytes} ->
        messages(tags, s, after_message(awaited, {:data, bytes}), [{:data, bytes} | acc])

      {tag, ^s} when tag in [closed, passive] ->
        messages(tags, s, :nothing, [tag | acc])

      {^error, ^s, reason} ->
        messages(tags, s, :nothing, [{:error, reason} | acc])
    after
      wait -> Enum.reverse(acc)
    end
  end

  defp after_message({:bytes, unread, ended}, {:data, bytes}) do
    case unread - byte_size(bytes) do
      left when left > 0 -> {:bytes, left, ended}
      _ when ended -> {:bytes, 0, true}
      _ -> :nothing
    end
  end

  defp after_message(_awaited, _message), do: :nothing

  defp read(result, {sent, read, ended}), do: {result, {sent, read + data_size(result), ended}}

  defp data_size({:ok, data}) when is_binary(data), do: byte_size(data)
  defp data_size({_set, got, _unset, more}), do: data_size(got ++ more)

  defp data_size(messages) when is_list(messages),
    do: Enum.sum(for {:data, d} <- messages, do: byte_size(d))

  defp data_size(_), do: 0
end

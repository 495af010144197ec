defmodule Islet.Options do
  @moduledoc """
  Listen and socket options: the merge Thousand Island's built-in transports
  do, validation, and translation into what the NIF takes.

  Options accepted by `Islet.TCP` (and `Islet.TLS`), with `:gen_tcp`'s
  meaning: `ip`/`ifaddr` (IPv4 or IPv6 tuple, `:loopback`, `:any`,
  `{:local, path}` with port 0), `:inet`, `:inet6`, `ipv6_v6only`, `backlog`,
  `nodelay`, `nopush` (TCP_CORK; in `setopts/2` only, as with `:gen_tcp`), `reuseaddr`, `reuseport`, `reuseport_lb`, `keepalive`, `linger`,
  `buffer`, `recbuf`, `sndbuf`, `send_timeout`, `send_timeout_close`,
  `high_watermark`, `low_watermark` (the send queue's, see below),
  `packet: :raw | 0`, `mode: :binary` (or `:binary`), `active`,
  `exit_on_close: true`; the IP options `tos`, `ttl`, `recvtos`, `recvttl`,
  `tclass`, `recvtclass`, `dontroute` and `broadcast` (these two in
  setopts only) and `bind_to_device`, each on the address families gen_tcp
  has it for; `{:raw, level, option, value}` (or `{:raw, {level, option,
  value}}`, inet's own form: a setsockopt whose refusal is
  ignored, as inet ignores it). In setopts only, as with gen_tcp:
  `multicast_ttl`, `multicast_loop` and `multicast_if` (an IPv4 address
  or an integer), set as inet_drv sets them, at the IP level on IPv4 and
  IPv6 sockets alike (the kernel refuses the TTL and the interface on a
  TCP socket, and the refusal is ignored, so they read back unchanged;
  `multicast_if` is einval on a Unix socket); `pktoptions` is read-only
  (what `recvtos`, `recvttl` and `recvtclass` kept of the packets
  received).

  `high_watermark` and `low_watermark` follow inet_drv: a send that finds
  data queued and brings the queue to `high_watermark` waits (up to
  `send_timeout`) until it is down to `low_watermark` (defaults 8192 and
  4096 bytes). Any integer is taken, cut to 32 bits as `:inet` encodes it,
  and a negative one is 0; setting one moves the other so that the low
  watermark never exceeds the high one. `:gen_tcp` applies a list of options
  from its last to its first, `:ssl` from first to last, so that
  `[high_watermark: 1000, low_watermark: 2000]` gives 1000/1000 with
  `Islet.TCP` (as with `:gen_tcp`) and 2000/2000 with `Islet.TLS` (as with
  `:ssl`); but `Islet.TLS` listen options go in `:gen_tcp`'s order where
  `:ssl.listen/2` hands them to it as given (OTP 29, see
  `Islet.Compat.ssl_listen_keeps_order?/0`). Listeners pass them on to the
  sockets they accept.

  Accepted and ignored on purpose: `inet_backend` (Islet is its own
  backend). Checked and kept for `getopts/2`, with no effect: gen_tcp's
  tuning of its port (`delay_send`, `packet_size`, `high_msgq_watermark`
  and `low_msgq_watermark`, which move each other as the send watermarks
  do). Taken at the one value Islet has: `header: 0`, `deliver: :term`,
  `show_econnreset: false`, `debug: false` (another value is unsupported).

  Integer values (`backlog`, `linger`'s seconds, `buffer`, `recbuf`,
  `sndbuf`, `send_timeout`, the IP options) are cut to their low 32 bits,
  signed, as inet encodes them: `send_timeout: 4_294_967_295` is
  `:infinity`, and a `send_timeout` cut to another negative value is read
  back so and never expires, as with `:gen_tcp`.

  Anything else returns `{:error, {:unsupported_option, option}}`; a
  supported option with a value of the wrong type returns `{:error, :einval}`
  as `:gen_tcp` does.
  """

  @typedoc "What the NIF's listen takes: family, address, port and options."
  @type listen_spec :: {:inet | :inet6 | :local, tuple() | binary(), :inet.port_number(), list()}

  @bool_opts [:nodelay, :reuseaddr, :reuseport, :reuseport_lb, :keepalive, :send_timeout_close] ++
               [:ipv6_v6only, :nopush, :dontroute, :recvtos, :recvttl, :recvtclass, :delay_send] ++
               [:broadcast, :multicast_loop]
  @int_opts [:buffer, :recbuf, :sndbuf, :tos, :priority, :ttl, :tclass, :multicast_ttl]
  # Socket options gen_tcp takes in setopts (pktoptions: in getopts) but not
  # in listen (where it exits with badarg): Islet refuses them there by name.
  @setopts_only [:nopush, :dontroute, :broadcast, :read_packets, :multicast_ttl] ++
                  [:multicast_loop, :multicast_if, :pktoptions]
  # Accepted and ignored: the backend (Islet is its own).
  @ignored [:inet_backend]
  # gen_tcp's settings that have one value in Islet (binary mode, raw
  # packets, messages as terms, resets reported as closed): that value is
  # taken (and getopts answers it), another is unsupported.
  @fixed %{header: 0, deliver: :term, show_econnreset: false, debug: false}
  @watermarks [:high_watermark, :low_watermark]
  @msgq_marks [:high_msgq_watermark, :low_msgq_watermark]
  # Options :inet knows that Islet does not implement: setopts names them in
  # {:unsupported_option, _}; options :inet does not know at all are einval
  # there, as with gen_tcp.
  @inet_known [:mode, :packet, :exit_on_close, :header, :packet_size, :delay_send, :tos] ++
                [:priority, :tclass, :high_watermark, :low_watermark, :high_msgq_watermark] ++
                [:low_msgq_watermark, :show_econnreset, :deliver, :line_delimiter, :dontroute] ++
                [:broadcast, :bind_to_device, :recvtos, :recvttl, :recvtclass, :pktoptions] ++
                [:raw, :netns, :read_packets, :debug, :bind_to_device]

  @packet_types [1, 2, 4, :line, :asn1, :cdr, :sunrm, :fcgi, :tpkt, :http, :httph] ++
                  [:http_bin, :httph_bin]

  @doc """
  Merges option lists the way Thousand Island's transports do: the first
  occurrence of a key wins, so `hardcoded` beats the user's options, which
  beat `defaults`. Bare atoms (such as `:inet6`) are kept.
  """
  @spec merge(list(), list(), list()) :: list()
  def merge(hardcoded, user, defaults) do
    {opts, _seen} =
      Enum.reduce(hardcoded ++ user ++ defaults, {[], MapSet.new()}, fn
        {key, _} = opt, {acc, seen} ->
          if MapSet.member?(seen, key),
            do: {acc, seen},
            else: {[opt | acc], MapSet.put(seen, key)}

        opt, {acc, seen} ->
          {[opt | acc], seen}
      end)

    Enum.reverse(opts)
  end

  @typedoc """
  Whose option semantics to follow where `:gen_tcp` and `:ssl` differ: the
  order in which a list's watermarks are applied.
  """
  @type stack :: :inet | :ssl

  @doc """
  Validates merged TCP listen options and returns what `Islet.Nif.listen/4`
  takes, or the error to give the caller. `extra` names option keys that a
  higher layer (TLS) handles, which are skipped here; `stack` is `:ssl` for
  a TLS listener.
  """
  @spec listen_spec(:inet.port_number(), list(), [atom()], stack()) ::
          {:ok, listen_spec()} | {:error, term()}
  def listen_spec(port, opts, extra \\ [], stack \\ :inet)

  def listen_spec(port, opts, extra, stack) when is_list(opts) do
    Enum.reduce_while(opts, {:ok, %{family: nil, ip: nil, nif: []}}, fn opt, {:ok, acc} ->
      case listen_classify(opt, extra, stack) do
        # The first family named wins, as in inet's choice of module.
        {:family, f} -> {:cont, {:ok, %{acc | family: acc.family || f}}}
        {:ip, ip} -> {:cont, {:ok, %{acc | ip: ip}}}
        {:nif, kv} -> {:cont, {:ok, %{acc | nif: [kv | acc.nif]}}}
        :skip -> {:cont, {:ok, acc}}
        {:error, _} = error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, acc} ->
        address(port, %{acc | nif: acc.nif |> Enum.reverse() |> in_order(listen_order(stack))})

      error ->
        error
    end
  end

  def listen_spec(_port, _opts, _extra, _stack), do: {:error, :einval}

  defp listen_classify({key, _} = opt, _extra, _stack) when key in @setopts_only,
    do: unsupported(opt)

  defp listen_classify({:packet_size, _} = opt, _extra, stack), do: classify_for(opt, stack)
  defp listen_classify(opt, extra, _stack), do: classify(opt, extra)

  @doc """
  Validates options for `setopts/2` and returns them in the NIF's form, in
  the order `stack` (`:inet` for `Islet.TCP`, `:ssl` for `Islet.TLS`)
  applies them.
  """
  @spec socket_opts(list(), stack()) :: {:ok, list()} | {:error, term()}
  def socket_opts(opts, stack \\ :inet)

  def socket_opts(opts, stack) when is_list(opts) do
    Enum.reduce_while(opts, {:ok, []}, fn opt, {:ok, acc} ->
      case classify_for(opt, stack) do
        {:nif, {:backlog, _}} -> {:halt, {:error, :einval}}
        {:nif, kv} -> {:cont, {:ok, [kv | acc]}}
        :skip -> {:cont, {:ok, acc}}
        {:family, _} -> {:halt, {:error, :einval}}
        {:ip, _} -> {:halt, {:error, :einval}}
        {:error, {:unsupported_option, _}} = error -> {:halt, unknown_to_inet(opt, error)}
        {:error, _} = error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, acc |> Enum.reverse() |> in_order(stack)}
      error -> error
    end
  end

  def socket_opts(_opts, _stack), do: {:error, :einval}

  # Whose order a listener's options follow: OTP 29's :ssl (unlike OTP 25
  # and 27's, which reversed them) hands them to gen_tcp as given, so its
  # listen options end as gen_tcp's do; its setopts still go first to last.
  defp listen_order(:ssl), do: if(Islet.Compat.ssl_listen_keeps_order?(), do: :inet, else: :ssl)
  defp listen_order(stack), do: stack

  # The NIF applies options first to last, and stops at the first it
  # refuses. gen_tcp (OTP 25) applies a list, listen's or setopts', from
  # the last option to the first (so the options after a refused one are
  # in place, those before it not), and :ssl from the first to the last:
  # [high_watermark: 1000, low_watermark: 2000] gives 1000/1000 with
  # gen_tcp, 2000/2000 with :ssl. For inet the list is reversed.
  defp in_order(opts, :ssl), do: opts
  defp in_order(opts, :inet), do: Enum.reverse(opts)

  # :ssl keeps packet_size itself, as any integer (inet: 32 bits, >= 0).
  defp classify_for({:packet_size, n} = kv, :ssl) when is_integer(n), do: {:nif, kv}
  defp classify_for(opt, _stack), do: classify(opt, [])

  defp unknown_to_inet(:list, error), do: error
  defp unknown_to_inet({key, _}, error) when key in @inet_known, do: error
  defp unknown_to_inet(_opt, _error), do: {:error, :einval}

  defp classify(:inet, _), do: {:family, :inet}
  defp classify(:inet6, _), do: {:family, :inet6}
  defp classify(:binary, _), do: {:nif, {:mode, :binary}}
  defp classify(:list, _), do: unsupported(:list)

  defp classify({key, _}, _) when key in @ignored, do: :skip

  defp classify({key, _} = opt, extra) when is_atom(key),
    do: if(key in extra, do: :skip, else: value(opt))

  # {:raw, Level, Option, Value}: a plain setsockopt, as inet makes it
  # (level and option cut to 32 bits; the kernel's refusal is ignored).
  defp classify({:raw, level, name, value}, _)
       when is_integer(level) and is_integer(name) and is_binary(value),
       do: {:nif, {:raw, {int32(level), int32(name), value}}}

  defp classify({:raw, _, _, _}, _), do: {:error, :einval}
  defp classify(opt, _), do: unsupported(opt)

  @doc """
  Checks the keys of `getopts/2`: atoms, and `{:raw, level, option,
  length}` (level and option cut to 32 bits). inet's request holds 64 KiB:
  each raw key takes 13 bytes and its length. Returns the keys as the NIF
  takes them, or `:error` (einval).
  """
  @spec getopts_keys(list()) :: {:ok, list()} | :error
  def getopts_keys(keys) do
    Enum.reduce_while(keys, {:ok, [], 0}, fn
      key, {:ok, acc, raw} when is_atom(key) ->
        {:cont, {:ok, [key | acc], raw}}

      {:raw, level, name, len}, {:ok, acc, raw}
      when is_integer(level) and is_integer(name) and is_integer(len) and len >= 0 and
             raw + 13 + len <= 65_535 ->
        {:cont, {:ok, [{:raw, int32(level), int32(name), len} | acc], raw + 13 + len}}

      _, _ ->
        {:halt, :error}
    end)
    |> case do
      {:ok, acc, _} -> {:ok, Enum.reverse(acc)}
      :error -> :error
    end
  end

  defp int32(n) do
    <<int32::signed-32>> = <<n::32>>
    int32
  end

  defp value({key, ip}) when key in [:ip, :ifaddr], do: ip_value(ip)
  defp value({:mode, :binary}), do: {:nif, {:mode, :binary}}
  # (as given: :ssl echoes :raw or 0 back in getopts)
  defp value({:packet, p}) when p in [:raw, 0], do: {:nif, {:packet, p}}
  defp value({:exit_on_close, true}), do: {:nif, {:exit_on_close, true}}
  # Integers go to inet as 32 bits: a larger one is cut to its low 32 bits,
  # signed, and taken so (as the options below).
  defp value({:backlog, n}) when is_integer(n), do: {:nif, {:backlog, int32(n)}}
  defp value({:active, a} = kv) when is_boolean(a) or a == :once, do: {:nif, kv}
  defp value({:active, n} = kv) when is_integer(n) and n in -32768..32767, do: {:nif, kv}

  defp value({:linger, {on, secs}}) when is_boolean(on) and is_integer(secs),
    do: {:nif, {:linger, {on, int32(secs)}}}

  defp value({:send_timeout, :infinity} = kv), do: {:nif, kv}
  # A negative one is einval; a larger one is cut to 32 bits, which may make
  # it -1 (infinity) or another negative value: gen_tcp reads that back
  # and waits without end (Islet.Socket does the same).
  defp value({:send_timeout, t}) when is_integer(t) and t >= 0,
    do: {:nif, {:send_timeout, int32(t)}}

  # Any integer, as inet takes it: cut to its low 32 bits, signed (the NIF
  # makes a negative one 0).
  defp value({key, n}) when key in @watermarks and is_integer(n) do
    <<int32::signed-32>> = <<n::32>>
    {:nif, {key, int32}}
  end

  # The message queue's: cut to 32 bits as inet encodes them; 0 and -1 are
  # einval, another negative one is the largest the port holds.
  defp value({key, n}) when key in @msgq_marks and is_integer(n) do
    case <<n::32>> do
      <<int32::signed-32>> when int32 in [0, -1] -> {:error, :einval}
      <<int32::signed-32>> when int32 < 0 -> {:nif, {key, 2_147_483_647}}
      <<int32::signed-32>> -> {:nif, {key, int32}}
    end
  end

  # Any non-negative integer, kept as its low 32 bits (as inet does).
  defp value({:packet_size, n}) when is_integer(n) and n >= 0,
    do: {:nif, {:packet_size, Bitwise.band(n, 0xFFFFFFFF)}}

  defp value({:bind_to_device, dev} = kv) when is_binary(dev), do: {:nif, kv}
  # {:raw, {level, option, value}}: inet's own form of the raw option,
  # which gen_tcp takes as the 4-tuple.
  defp value({:raw, {level, name, value}})
       when is_integer(level) and is_integer(name) and is_binary(value),
       do: {:nif, {:raw, {int32(level), int32(name), value}}}

  defp value({:raw, _}), do: {:error, :einval}

  # An IPv4 address or any integer (cut to 32 bits), as inet encodes it:
  # the NIF hands it to IP_MULTICAST_IF (IPV6_MULTICAST_IF on IPv6) as
  # inet_drv does, whose refusal on a stream socket is ignored.
  defp value({:multicast_if, n}) when is_integer(n), do: {:nif, {:multicast_if, int32(n)}}

  defp value({:multicast_if, {a, b, c, d} = ip}) do
    if :inet.is_ipv4_address(ip) do
      <<n::signed-32>> = <<a, b, c, d>>
      {:nif, {:multicast_if, n}}
    else
      {:error, :einval}
    end
  end

  # Another multicast_if, and any pktoptions (which getopts reads and
  # nothing sets): einval, as inet answers.
  defp value({key, _}) when key in [:multicast_if, :pktoptions], do: {:error, :einval}

  # A UDP option inet takes on any socket, to no effect on TCP.
  defp value({:read_packets, n}) when is_integer(n) and n >= 0, do: :skip

  defp value({key, v} = opt) when is_map_key(@fixed, key) do
    cond do
      v == @fixed[key] -> :skip
      fixed_other?(key, v) -> unsupported(opt)
      true -> {:error, :einval}
    end
  end

  defp value({key, b} = kv) when key in @bool_opts and is_boolean(b), do: {:nif, kv}
  defp value({key, n}) when key in @int_opts and is_integer(n), do: {:nif, {key, int32(n)}}

  # Values gen_tcp takes that Islet does not implement (list mode, packet
  # framing, half-open sockets); other values are einval, as with gen_tcp.
  defp value({:mode, :list} = opt), do: unsupported(opt)
  defp value({:packet, p} = opt) when p in @packet_types, do: unsupported(opt)
  defp value({:exit_on_close, false} = opt), do: unsupported(opt)
  defp value({key, _}) when key in [:mode, :packet, :exit_on_close], do: {:error, :einval}

  defp value({key, _}) when key in [:backlog, :active, :linger, :send_timeout, :ip, :ifaddr],
    do: {:error, :einval}

  defp value({key, _}) when key in @watermarks, do: {:error, :einval}

  defp value({key, _}) when key in @bool_opts or key in @int_opts, do: {:error, :einval}

  defp value({key, _}) when key in [:packet_size, :bind_to_device, :read_packets | @msgq_marks],
    do: {:error, :einval}

  defp value(opt), do: unsupported(opt)

  defp unsupported(opt), do: {:error, {:unsupported_option, opt}}

  # The other values inet takes for the fixed options.
  defp fixed_other?(:header, v), do: is_integer(v) and v > 0
  defp fixed_other?(:deliver, v), do: v == :port
  defp fixed_other?(key, v) when key in [:show_econnreset, :debug], do: is_boolean(v)

  defp ip_value(:loopback), do: {:ip, :loopback}
  defp ip_value(:any), do: {:ip, :any}
  defp ip_value({:local, path}) when is_binary(path), do: local_path(path)

  defp ip_value({:local, path}) when is_list(path) do
    case :unicode.characters_to_binary(path) do
      bin when is_binary(bin) -> local_path(bin)
      _ -> {:error, :einval}
    end
  catch
    :error, :badarg -> {:error, :einval}
  end

  defp ip_value(ip) when is_tuple(ip) do
    if :inet.is_ip_address(ip), do: {:ip, ip}, else: {:error, :einval}
  end

  defp ip_value(_), do: {:error, :einval}

  # What inet takes as a Unix socket's path: one that fits sun_path (108
  # bytes on Linux), with room for the NUL after it unless it is abstract
  # (starts with a NUL). The kernel reads a path up to its first NUL, and
  # "" binds to a name of its choosing (autobind).
  @sun_path 108
  defp local_path(<<0, _::binary>> = path) when byte_size(path) <= @sun_path,
    do: {:ip, {:local, path}}

  defp local_path(path) when byte_size(path) < @sun_path, do: {:ip, {:local, path}}
  defp local_path(_path), do: {:error, :einval}

  defp address(port, %{family: fam, ip: ip, nif: opts}) do
    case {fam, ip} do
      # A family named for an address of another (gen_tcp exits: badarg).
      {fam, {:local, _}} when fam != nil -> {:error, :einval}
      {:inet, ip} when tuple_size(ip) == 8 -> {:error, :einval}
      {_, {:local, path}} when port == 0 -> {:ok, {:local, path, 0, opts}}
      {_, {:local, _}} -> {:error, :einval}
      {:inet6, :loopback} -> {:ok, {:inet6, {0, 0, 0, 0, 0, 0, 0, 1}, port, opts}}
      {:inet6, ip} when ip in [nil, :any] -> {:ok, {:inet6, {0, 0, 0, 0, 0, 0, 0, 0}, port, opts}}
      {_, :loopback} -> {:ok, {:inet, {127, 0, 0, 1}, port, opts}}
      {_, ip} when ip in [nil, :any] -> {:ok, {:inet, {0, 0, 0, 0}, port, opts}}
      {:inet6, ip} when tuple_size(ip) == 8 -> {:ok, {:inet6, ip, port, opts}}
      {:inet6, _} -> {:error, :einval}
      {_, ip} when tuple_size(ip) == 8 -> {:ok, {:inet6, ip, port, opts}}
      {_, ip} -> {:ok, {:inet, ip, port, opts}}
    end
  end
end

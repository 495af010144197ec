defmodule Islet.TLS do
  @moduledoc """
  A native TLS transport for Thousand Island, over OpenSSL: a drop-in for
  `ThousandIsland.Transports.SSL`, taking the same `transport_options`.

      ThousandIsland.start_link(
        port: 4443,
        handler_module: MyHandler,
        transport_module: Islet.TLS,
        transport_options: [certfile: "cert.pem", keyfile: "key.pem"]
      )

  Calls answer what `:ssl` answers: `{:ssl, socket, data}`,
  `{:ssl_closed, socket}`, `{:ssl_error, socket, reason}` and
  `{:ssl_passive, socket}` in active mode, `{:error, {:tls_alert, {reason,
  description}}}` for failed handshakes and for connections ended by a
  fatal alert later. The `SSL_CTX` is built once per listener; each
  connection's handshake is an OpenSSL object on the socket's fd, driven
  without blocking a scheduler (cheap steps on the calling scheduler, costly
  ones on a dirty CPU scheduler). Once the handshake is over, the records of
  the AEAD suites are sealed and opened by Islet's own record layer and the
  OpenSSL object is freed (see `record_layer/1`). See `Islet.TLS.Options`
  for the options accepted, plus every TCP option of `Islet.TCP`.
  """

  alias Islet.{Compat, Nif, Socket}
  alias Islet.TLS.Options, as: TLSOptions

  if Code.ensure_loaded?(ThousandIsland.Transport) do
    @behaviour ThousandIsland.Transport
  end

  @typedoc "A listening or connected Islet socket (an opaque native resource)."
  @type socket :: reference()

  @hardcoded_options [mode: :binary, active: false]
  @default_options [
    backlog: 1024,
    nodelay: true,
    send_timeout: 30_000,
    send_timeout_close: true,
    reuseaddr: true
  ]

  # The suites this OTP's :ssl knows, by IANA name, built at compile time:
  # connection_information/1 then looks a suite up in a literal map, where
  # :ssl.str_to_suite/1 parses the name and builds the map on every call
  # (about 10 us and a few KB of garbage per connection). Unknown names still
  # go to :ssl.str_to_suite/1.
  @suites for version <- [:"tlsv1.3", :"tlsv1.2", :"tlsv1.1", :tlsv1],
              kind <- [:all, :anonymous],
              suite <-
                (try do
                   :ssl.cipher_suites(kind, version)
                 catch
                   # A version this OTP no longer knows.
                   _, _ -> []
                 end),
              into: %{},
              do: {to_string(:ssl.suite_to_str(suite)), suite}

  @doc """
  Opens a TLS listener. Raises (as Thousand Island's SSL transport does) when
  no key or certificate is given. Certificate, key, CA and DH files that
  cannot be used are refused here where the running `:ssl.listen/2` refuses
  them (OTP 29), else reported by each handshake, as `:ssl` does.
  """
  @spec listen(:inet.port_number(), keyword()) :: {:ok, socket()} | {:error, term()}
  def listen(port, user_options) when is_list(user_options) do
    options = Islet.Options.merge(@hardcoded_options, user_options, @default_options)
    TLSOptions.check_cert_key!(options)

    with :ok <- check_emulated(options),
         {:ok, ctx} <- TLSOptions.context(options, Compat.ssl_listen_checks_files?()),
         {:ok, listener} <- Socket.listen(port, options, TLSOptions.tls_keys(), :ssl) do
      :ok = Nif.tls_listener(listener, ctx)
      {:ok, listener}
    end
  end

  # :ssl checks the integers it keeps for its sockets itself, naming them
  # (mode, packet and active are Thousand Island's or checked later).
  defp check_emulated(options) do
    case Enum.find(
           options,
           &(match?({k, _} when k in [:header, :packet_size], &1) and bad_emulated?(&1))
         ) do
      nil -> :ok
      bad -> {:error, {:options, bad}}
    end
  end

  @doc "Accepts a connection; the TLS handshake is done by `handshake/1,2`."
  @spec accept(socket()) :: {:ok, socket()} | {:error, term()}
  defdelegate accept(listener), to: Socket

  @doc "Completes the TLS handshake, with no time limit (as `:ssl.handshake/1`)."
  @spec handshake(socket()) :: {:ok, socket()} | {:error, term()}
  def handshake(socket), do: handshake(socket, :infinity)

  @doc """
  Completes the TLS handshake within `timeout` ms; past it the connection is
  closed and `{:error, :timeout}` returned.

  A handshake refused after the server's flight (with an alert) returns once
  the client has closed, or after at most a second: the client's data still
  on its way is read and dropped first, so that it meets no reset that could
  keep the client from reading the alert.
  """
  @spec handshake(socket(), timeout()) :: {:ok, socket()} | {:error, term()}
  def handshake(socket, timeout) do
    deadline = if timeout == :infinity, do: :infinity, else: now() + timeout
    do_handshake(socket, deadline)
  end

  defp do_handshake(socket, deadline) do
    case Nif.tls_handshake(socket) do
      :ok ->
        {:ok, socket}

      :wait ->
        left = if deadline == :infinity, do: :infinity, else: max(deadline - now(), 0)

        receive do
          {:"$islet", ^socket} -> do_handshake(socket, deadline)
        after
          left ->
            Nif.cancel(socket, :read)
            Socket.close(socket)
            {:error, :timeout}
        end

      {:verify, chain, config, version} ->
        # The client's chain, checked as :ssl checks it (verify_fun,
        # partial_chain): a TLS 1.2 handshake waits for the answer before
        # the server's last flight, a TLS 1.3 one is over for OpenSSL (the
        # next call answers :ok at once).
        case Islet.TLS.Verify.check(chain, config, version) do
          :ok ->
            do_handshake(socket, deadline)

          {:error, alert} ->
            error = Nif.tls_verify_failed(socket, alert)
            close_after_alert(socket, deadline)
            error
        end

      {:sni, name, {fun, base}} ->
        case sni_context(fun, name, base) do
          {:ok, ctx} ->
            Nif.tls_set_ctx(socket, ctx)
            do_handshake(socket, deadline)

          error ->
            Socket.close(socket)
            error
        end

      {:error, {:tls_alert, _}} = error ->
        close_after_alert(socket, deadline)
        error

      # Not a TLS connection (a listener, a plain socket): left as it is.
      {:error, :einval} = error ->
        error

      {:error, _} = error ->
        Socket.close(socket)
        error
    end
  end

  # A handshake ended in an alert: before closing, the FIN goes out and what
  # the client still sends is read and dropped until it closes, for at most
  # @linger_ms (and the handshake's own deadline) and @linger_bytes. A
  # TLS 1.3 client sends its first request before it can have read an alert
  # about its last flight; closing with that request unread, or before it
  # arrives, makes the kernel answer with a reset that can keep the client
  # from reading the alert (see Nif.tls_linger). The client that reads the
  # alert closes at once, so this usually lasts a round trip.
  @linger_ms 1_000
  @linger_bytes 1_048_576

  defp close_after_alert(socket, deadline) do
    limit = now() + @linger_ms
    linger(socket, if(deadline == :infinity, do: limit, else: min(deadline, limit)), 0)
    Socket.close(socket)
  end

  defp linger(socket, until, read) when read < @linger_bytes do
    case Nif.tls_linger(socket) do
      {:more, n} ->
        linger(socket, until, read + n)

      {:wait, n} ->
        receive do
          {:"$islet", ^socket} -> linger(socket, until, read + n)
        after
          max(until - now(), 0) -> Nif.cancel(socket, :read)
        end

      :closed ->
        :ok
    end
  end

  defp linger(_socket, _until, _read), do: :ok

  defp sni_context(fun, name, base) do
    case fun.(String.to_charlist(name)) do
      opts when is_list(opts) -> TLSOptions.context(Keyword.merge(base, opts))
      _ -> {:ok, :undefined}
    end
  end

  defp now, do: System.monotonic_time(:millisecond)

  @doc """
  STARTTLS: turns a connected `Islet.TCP` socket into a TLS one (server side)
  and performs the handshake. Only the owner may: another process gets
  `{:error, :not_owner}` and, as with `:ssl` (whose connection process made
  for the socket ends, closing it), the connection is closed. As with
  `:ssl.handshake/2` on a `:gen_tcp` socket, the socket is passive during
  the handshake, and the TLS connection then takes the `active` option
  given, or else the active mode the TCP socket had.

  One difference: a `handshake_timeout` option (ms) bounds the handshake
  (past it the connection is closed and `{:error, :timeout}` returned),
  where `:ssl.handshake/2` ignores the option and waits without limit.
  """
  @spec upgrade(socket(), keyword()) :: {:ok, socket()} | {:error, term()}
  def upgrade(socket, options) when is_list(options) do
    TLSOptions.check_cert_key!(options)

    with {:ok, active_option} <- upgrade_active(options),
         {:ok, tcp_active} <- Nif.tls_upgrade_pause(socket) do
      tcp_active = active_value(tcp_active)

      case TLSOptions.context(options) do
        {:ok, ctx} ->
          case Nif.tls_upgrade(socket, ctx) do
            :ok ->
              with {:ok, socket} <-
                     handshake(socket, Keyword.get(options, :handshake_timeout, :infinity)),
                   do:
                     activate(
                       socket,
                       if(active_option == nil, do: tcp_active, else: active_option)
                     )

            # :ssl's connection process, made for the socket, cannot take it
            # from its owner; it ends, and closes the socket as it goes.
            {:error, :not_owner} = error ->
              Socket.close(socket)
              error

            error ->
              error
          end

        error ->
          _ = activate(socket, tcp_active)
          error
      end
    end
  end

  # The active option of an upgrade, checked as :ssl's handle_options checks
  # it: nil when there is none.
  defp upgrade_active(options) do
    case Keyword.fetch(options, :active) do
      :error -> {:ok, nil}
      {:ok, a} when a in [true, false, :once] -> {:ok, a}
      {:ok, n} when is_integer(n) and n in -32_768..32_767 -> {:ok, n}
      {:ok, bad} -> {:error, {:options, {:active, bad}}}
    end
  end

  # The NIF's active mode as an option value.
  defp active_value(0), do: false
  defp active_value(-1), do: true
  defp active_value(-2), do: :once
  defp active_value(n) when n > 0, do: n

  defp activate(socket, false), do: {:ok, socket}

  defp activate(socket, active) do
    case Nif.set_active(socket, active) do
      :ok -> {:ok, socket}
      error -> error
    end
  end

  @doc "Receives in passive mode, as `:ssl.recv/3`."
  @spec recv(socket(), non_neg_integer(), timeout()) :: {:ok, binary()} | {:error, term()}
  defdelegate recv(socket, length, timeout), to: Socket

  @doc """
  Sends iodata, encrypted in record-sized slices. Data that is not iodata
  gets what `:ssl.send/2` gives it: `ArgumentError` raised (OTP 27 and
  earlier), `{:error, :closed}` (OTP 28 and later, see
  `Islet.Compat.ssl_send_bad_data_closed?/0`).
  """
  @spec send(socket(), iodata()) :: :ok | {:error, term()}
  def send(socket, data) when is_binary(data), do: Socket.send(socket, data)

  def send(socket, data) do
    case iovec(data) do
      {:ok, iovec} -> Socket.send_iovec(socket, iovec)
      :not_iodata -> {:error, :closed}
    end
  end

  # Only the conversion's ArgumentError is :ssl's answer to bad data.
  defp iovec(data) do
    {:ok, :erlang.iolist_to_iovec(data)}
  rescue
    e in ArgumentError ->
      if Compat.ssl_send_bad_data_closed?(),
        do: :not_iodata,
        else: reraise(e, __STACKTRACE__)
  end

  @doc """
  Sends part of a file through TLS (length 0: to the end of the file). With
  kernel TLS (see `ktls?/1`) the kernel encrypts and `SSL_sendfile` sends
  without a copy; otherwise the file is read natively in 1 MiB chunks (dirty
  I/O scheduler, bounded memory) and encrypted as it goes.
  """
  @spec sendfile(socket(), String.t(), non_neg_integer(), non_neg_integer()) ::
          {:ok, non_neg_integer()} | {:error, term()}
  def sendfile(socket, filename, offset, length) do
    if ktls?(socket),
      do: Socket.sendfile(socket, filename, offset, length),
      else: sendfile_copy(socket, filename, offset, length)
  end

  @doc """
  Whether kernel TLS sends this connection's records (needs the kernel's
  `tls` module and an OpenSSL built with kTLS; false elsewhere).
  """
  @spec ktls?(socket()) :: boolean()
  def ktls?(socket), do: Nif.ktls(socket)

  @doc """
  Whether handshakes try kernel TLS at all: the kernel's `tls` module was
  there (or could be loaded) when Islet loaded. Without it Islet does not
  ask the kernel at every handshake (where the process may load modules,
  each ask would run `modprobe`).
  """
  @spec kernel_tls?() :: boolean()
  def kernel_tls?, do: Nif.kernel_tls()

  defp sendfile_copy(socket, filename, offset, length) do
    case :file.open(filename, [:read, :raw, :binary]) do
      {:ok, fd} ->
        try do
          sendfile_loop(socket, fd, offset, if(length == 0, do: :eof, else: length), 0)
        after
          :file.close(fd)
        end

      error ->
        error
    end
  end

  @chunk 1_048_576
  defp sendfile_loop(_socket, _fd, _offset, 0, sent), do: {:ok, sent}

  defp sendfile_loop(socket, fd, offset, left, sent) do
    want = if left == :eof, do: @chunk, else: min(left, @chunk)

    case :file.pread(fd, offset, want) do
      {:ok, data} ->
        n = byte_size(data)

        case Socket.send(socket, data) do
          :ok ->
            next = if left == :eof, do: :eof, else: left - n
            sendfile_loop(socket, fd, offset + n, next, sent + n)

          error ->
            error
        end

      :eof ->
        {:ok, sent}

      error ->
        error
    end
  end

  # Errors :ssl gives as they are, not wrapped in {:options, ...}: a closed
  # socket, and a connection before its handshake (its transport_accept
  # socket).
  @bare_errors [:closed, :notsup_on_transport_accept_socket]

  @doc """
  Gets options, as `:ssl.getopts/2`: in the reverse order of `options`, as
  `:ssl` gives them, and its errors (`{:options, {:socket_options, tag,
  reason}}` for the first tag that fails).
  """
  @spec getopts(socket(), [atom()]) :: {:ok, list()} | {:error, term()}
  def getopts(socket, options) when is_list(options) do
    Enum.reduce_while(options, {:ok, []}, fn tag, {:ok, acc} ->
      case Islet.TCP.getopts(socket, [tag]) do
        {:ok, got} -> {:cont, {:ok, Enum.reverse(got, acc)}}
        {:error, reason} when reason in @bare_errors -> {:halt, {:error, reason}}
        {:error, reason} -> {:halt, {:error, {:options, {:socket_options, tag, reason}}}}
      end
    end)
  end

  def getopts(_socket, options), do: {:error, {:options, {:socket_options, options}}}

  # The options :ssl handles itself (its "emulated" ones), and their values.
  @packet_values [:raw, 0, 1, 2, 4, :asn1, :cdr, :sunrm, :fcgi, :tpkt, :line, :http] ++
                   [:httph, :http_bin, :httph_bin]

  @doc """
  Sets options, as `:ssl.setopts/2`; `active: :once` is one native call.

  As `:ssl` does: `mode`, `packet`, `packet_size`, `header` and `active`
  are checked and set one after the other (a bad one is `{:options,
  {:socket_options, {key, value}}}`, those before it set), then the others
  together (a failure is `{:options, {:socket_options, others_reversed,
  reason}}`). Options Islet does not implement answer
  `{:unsupported_option, option}`; before the handshake, the connection
  answers `{:error, :notsup_on_transport_accept_socket}`.

  A listener takes a list as `:ssl`'s does: the emulated options first
  (its actives from the last to the first; a count out of range refuses the
  list), then the others; a refusal names the whole list, `{:options,
  {:socket_options, options, reason}}`.
  """
  @spec setopts(socket(), list()) :: :ok | {:error, term()}
  def setopts(socket, [active: value] = options) do
    case Socket.setopts(socket, options, :ssl) do
      {:error, :einval} -> {:error, {:options, {:socket_options, {:active, value}}}}
      result -> result
    end
  end

  def setopts(socket, options) when is_list(options) do
    if Nif.is_listener(socket),
      do: listener_setopts(socket, options),
      else: conn_setopts(socket, options)
  end

  def setopts(_socket, options), do: {:error, {:options, {:not_a_proplist, options}}}

  # :ssl's listener (tls_socket:setopts) keeps the emulated options in its
  # option tracker, unchecked, and checks only the count of active the list
  # leads to (the NIF's set_active_listener); then it hands the others to
  # its TCP listener. A count refused refuses the list before any socket
  # option is set; a socket option refused leaves the emulated ones set.
  # Values the tracker keeps but that are no mode, packet type or size
  # (`active: :x`, `mode: :x`) are refused here, as a TCP listener would.
  defp listener_setopts(socket, options) do
    expanded = Enum.map(options, &expand_option/1)
    {own, others} = Enum.split_with(expanded, &emulated?/1)

    if Enum.any?(own, &bad_listener_emulated?/1) do
      {:error, {:options, {:socket_options, options, :einval}}}
    else
      with :ok <- listener_step(socket, own, options), do: listener_step(socket, others, options)
    end
  end

  defp listener_step(_socket, [], _options), do: :ok

  defp listener_step(socket, step, options) do
    # (The actives go as they are: the NIF checks the counts they lead to.)
    {actives, step} = Enum.split_with(step, &match?({:active, _}, &1))

    result =
      case Islet.Options.socket_opts(step, :ssl) do
        {:ok, nif_options} -> Nif.setopts(socket, nif_options ++ actives)
        error -> error
      end

    case result do
      {:error, reason} = error when reason in @bare_errors -> error
      {:error, {:unsupported_option, _}} = error -> error
      {:error, reason} -> {:error, {:options, {:socket_options, options, reason}}}
      result -> result
    end
  end

  # (Any integer.)
  defp bad_listener_emulated?({:active, n}) when is_integer(n), do: false
  defp bad_listener_emulated?(option), do: bad_emulated?(option)

  defp conn_setopts(socket, options) do
    expanded = Enum.map(options, &expand_option/1)
    {emulated, rest} = Enum.split_while(expanded, &(not bad_emulated?(&1)))
    {own, others} = Enum.split_with(emulated, &emulated?/1)

    with :ok <- own_options(socket, own) do
      case rest do
        [bad | _] -> {:error, {:options, {:socket_options, bad}}}
        [] -> set_others(socket, others)
      end
    end
  end

  # The emulated options; an active option refused is named as :ssl names it.
  defp own_options(socket, own) do
    case Socket.setopts(socket, own, :ssl) do
      {:error, {:active, _} = opt} -> {:error, {:options, {:socket_options, opt}}}
      result -> result
    end
  end

  defp set_others(_socket, []), do: :ok

  defp set_others(socket, others) do
    case Socket.setopts(socket, others, :ssl) do
      {:error, reason} = error when reason in @bare_errors -> error
      {:error, {:unsupported_option, _}} = error -> error
      {:error, reason} -> {:error, {:options, {:socket_options, Enum.reverse(others), reason}}}
      result -> result
    end
  end

  defp expand_option(:binary), do: {:mode, :binary}
  defp expand_option(:list), do: {:mode, :list}
  defp expand_option(option), do: option

  defp emulated?({key, _}), do: key in [:mode, :packet, :packet_size, :header, :active]
  defp emulated?(_), do: false

  defp bad_emulated?({:mode, m}), do: m not in [:list, :binary]
  defp bad_emulated?({:packet, p}), do: p not in @packet_values
  defp bad_emulated?({key, n}) when key in [:header, :packet_size], do: not is_integer(n)
  defp bad_emulated?({:active, a}) when a in [:once, true, false], do: false
  defp bad_emulated?({:active, n}), do: not (is_integer(n) and n in -32_768..32_767)
  defp bad_emulated?(_), do: false

  @doc "Shuts down; the write side sends close_notify first."
  @spec shutdown(socket(), :read | :write | :read_write) :: :ok | {:error, term()}
  defdelegate shutdown(socket, way), to: Islet.TCP

  @doc "Sends close_notify and closes the socket."
  @spec close(socket()) :: :ok
  defdelegate close(socket), to: Socket

  @doc """
  Makes `pid` the owner, as `:ssl.controlling_process/2`: active-mode
  messages already delivered stay in the caller's mailbox (:ssl moves none).
  """
  @spec controlling_process(socket(), pid()) :: :ok | {:error, term()}
  def controlling_process(socket, pid), do: Socket.controlling_process(socket, pid, nil)

  @doc "The local address."
  @spec sockname(socket()) :: {:ok, Islet.TCP.address()} | {:error, term()}
  defdelegate sockname(socket), to: Nif

  @doc "The peer's address."
  @spec peername(socket()) :: {:ok, Islet.TCP.address()} | {:error, term()}
  defdelegate peername(socket), to: Nif

  @doc "Statistics of the underlying TCP connection, as `:ssl.getstat/1`."
  @spec getstat(socket()) :: {:ok, [{atom(), non_neg_integer()}]} | {:error, term()}
  defdelegate getstat(socket), to: Nif

  @doc "The ALPN protocol chosen, or `{:error, :protocol_not_negotiated}`."
  @spec negotiated_protocol(socket()) :: {:ok, binary()} | {:error, term()}
  def negotiated_protocol(socket) do
    with {:ok, info} <- Nif.tls_info(socket) do
      case List.keyfind(info, :alpn, 0) do
        {:alpn, proto} -> {:ok, proto}
        nil -> {:error, :protocol_not_negotiated}
      end
    end
  end

  @doc "The client's certificate (DER), or `{:error, :no_peercert}`."
  @spec peercert(socket()) :: {:ok, binary()} | {:error, term()}
  def peercert(socket) do
    with {:ok, info} <- Nif.tls_info(socket) do
      case List.keyfind(info, :peercert, 0) do
        {:peercert, der} -> {:ok, der}
        nil -> {:error, :no_peercert}
      end
    end
  end

  @doc """
  Connection information in `:ssl.connection_information/1`'s shape:
  `protocol`, `selected_cipher_suite`, `cipher_suite`, `session_id`,
  `session_resumption` and, when the client sent one, `sni_hostname`.
  """
  @spec connection_information(socket()) :: {:ok, keyword()} | {:error, term()}
  def connection_information(socket) do
    with {:ok, info} <- Nif.tls_info(socket) do
      {:ok, Enum.flat_map(info, &info_item/1)}
    end
  end

  defp info_item({:protocol, 0x0304}), do: [protocol: :"tlsv1.3"]
  defp info_item({:protocol, 0x0303}), do: [protocol: :"tlsv1.2"]
  defp info_item({:protocol, _}), do: [protocol: :unknown]

  defp info_item({:cipher, name}) do
    case safe_suite(name) do
      %{} = suite ->
        [
          selected_cipher_suite: suite,
          cipher_suite: {suite.key_exchange, suite.cipher, suite.mac}
        ]

      _ ->
        []
    end
  end

  defp info_item({:sni_hostname, name}), do: [sni_hostname: String.to_charlist(name)]
  defp info_item({:session_id, id}), do: [session_id: id]
  defp info_item({:session_reused, b}), do: [session_resumption: b]
  defp info_item(_), do: []

  defp safe_suite(name) do
    case @suites do
      %{^name => suite} -> suite
      _ -> :ssl.str_to_suite(String.to_charlist(name))
    end
  rescue
    _ -> nil
  end

  @doc """
  Who protects this connection's records now that its handshake is over:
  `:islet` (Islet's record layer, see `Islet.TLS.Options.record_layer/0`)
  or `:openssl` (suites it does not take over, kernel TLS, or
  `tls_records: :openssl`).
  """
  @spec record_layer(socket()) :: {:ok, :islet | :openssl} | {:error, term()}
  def record_layer(socket) do
    with {:ok, info} <- Nif.tls_info(socket) do
      {:records, layer} = List.keyfind(info, :records, 0)
      {:ok, layer}
    end
  end

  @doc "TLS is secure."
  @spec secure?() :: true
  def secure?, do: true
end

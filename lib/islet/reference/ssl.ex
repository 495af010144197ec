defmodule Islet.Reference.SSL do
  @moduledoc """
  The reference TLS transport: what `ThousandIsland.Transports.SSL` (Thousand
  Island 1.3 to 1.5) does, written over OTP's `:ssl`.

  Islet's tests run every TLS scenario against this module and against
  `Islet.TLS` and require the same observable results; the benchmark uses it
  as the `:ssl` baseline. It exposes the same functions as `Islet.TLS`.

  Listen options are resolved as Thousand Island resolves them: the
  hard-coded `[mode: :binary, active: false]`, then the caller's options,
  then the defaults `[backlog: 1024, nodelay: true, send_timeout: 30_000,
  send_timeout_close: true, reuseaddr: true]`; the first occurrence of a key
  wins (bare atoms such as `:inet6` are their own key). Like Thousand Island,
  `listen/2` raises when the options name no key source (`certs_keys`,
  `keyfile`, `key`, `sni_hosts`, `sni_fun`) or no certificate source
  (`certs_keys`, `certfile`, `cert`, `sni_hosts`, `sni_fun`).
  """

  if Code.ensure_loaded?(ThousandIsland.Transport) do
    @behaviour ThousandIsland.Transport
  end

  @typedoc "An `:ssl` socket (listening or connected)."
  @type socket :: :ssl.sslsocket()

  @typedoc "A socket address, as `:ssl.sockname/1` gives it."
  @type address :: {:inet.ip_address(), :inet.port_number()} | {:local, binary()} | term()

  @forced [mode: :binary, active: false]
  @defaults [
    backlog: 1024,
    nodelay: true,
    send_timeout: 30_000,
    send_timeout_close: true,
    reuseaddr: true
  ]

  @key_sources [:certs_keys, :keyfile, :key, :sni_hosts, :sni_fun]
  @cert_sources [:certs_keys, :certfile, :cert, :sni_hosts, :sni_fun]

  @doc """
  Opens a TLS listener on `port` (0 picks a free port) with `:ssl.listen/2`.
  Raises when no key or no certificate source is given.
  """
  @spec listen(:inet.port_number(), list()) :: {:ok, socket()} | {:error, term()}
  def listen(port, user_options) when is_list(user_options) do
    options = first_per_key(@forced ++ user_options ++ @defaults)

    unless Enum.any?(@key_sources, &:proplists.is_defined(&1, options)) do
      raise "transport_options must include one of keyfile, key, sni_hosts or sni_fun"
    end

    unless Enum.any?(@cert_sources, &:proplists.is_defined(&1, options)) do
      raise "transport_options must include one of certfile, cert, sni_hosts or sni_fun"
    end

    :ssl.listen(port, options)
  end

  # First occurrence of each key wins; a bare atom is its own key.
  defp first_per_key(options) do
    Enum.uniq_by(options, fn
      {key, _value} when is_atom(key) -> key
      key when is_atom(key) -> key
    end)
  end

  @doc "Waits for a connection with `:ssl.transport_accept/1`; the handshake is separate."
  @spec accept(socket()) :: {:ok, socket()} | {:error, term()}
  def accept(listener), do: :ssl.transport_accept(listener)

  @doc "Completes the TLS handshake with `:ssl.handshake/1` (no time limit)."
  @spec handshake(socket()) :: {:ok, socket()} | {:error, term()}
  def handshake(socket), do: socket |> :ssl.handshake() |> strip_extensions()

  @doc "Completes the TLS handshake within `timeout` ms with `:ssl.handshake/2`."
  @spec handshake(socket(), timeout()) :: {:ok, socket()} | {:error, term()}
  def handshake(socket, timeout), do: socket |> :ssl.handshake(timeout) |> strip_extensions()

  @doc """
  STARTTLS: turns a connected `:gen_tcp` socket (or a not yet handshaken
  `:ssl` one) into a TLS connection with `:ssl.handshake(socket, options)`.
  """
  @spec upgrade(socket() | :inet.socket(), list()) :: {:ok, socket()} | {:error, term()}
  def upgrade(socket, options), do: socket |> :ssl.handshake(options) |> strip_extensions()

  defp strip_extensions({:ok, socket, _extensions}), do: {:ok, socket}
  defp strip_extensions(other), do: other

  @doc "Receives in passive mode with `:ssl.recv/3`."
  @spec recv(socket(), non_neg_integer(), timeout()) :: {:ok, binary()} | {:error, term()}
  def recv(socket, length, timeout), do: :ssl.recv(socket, length, timeout)

  @doc "Sends iodata with `:ssl.send/2`."
  @spec send(socket(), iodata()) :: :ok | {:error, term()}
  def send(socket, data), do: :ssl.send(socket, data)

  # Thousand Island 1.4's SSL transport reads and sends the file in pieces
  # of this size.
  @sendfile_piece 8 * 1024 * 1024

  @doc """
  Sends `length` bytes of the file at `filename` from `offset` (length 0: to
  the end of the file). `:file.sendfile` works on clear sockets only, so, as
  Thousand Island 1.4 does, the file is read in 8 MiB pieces, each sent with
  `:ssl.send/2`. Returns the number of bytes sent; the end of the file ends
  it early, with what was sent (`{:ok, 0}` from an offset past the end).
  """
  @spec sendfile(socket(), String.t(), non_neg_integer(), non_neg_integer()) ::
          {:ok, non_neg_integer()} | {:error, term()}
  def sendfile(socket, filename, offset, length) do
    with {:ok, fd} <- :file.open(filename, [:read, :raw, :binary]) do
      try do
        send_pieces(socket, fd, offset, length, 0)
      after
        :file.close(fd)
      end
    end
  end

  defp send_pieces(_socket, _fd, _offset, length, sent) when length > 0 and sent == length,
    do: {:ok, sent}

  defp send_pieces(socket, fd, offset, length, sent) do
    want = if length == 0, do: @sendfile_piece, else: min(length - sent, @sendfile_piece)

    case :file.pread(fd, offset + sent, want) do
      {:ok, data} ->
        with :ok <- :ssl.send(socket, data),
             do: send_pieces(socket, fd, offset, length, sent + byte_size(data))

      :eof ->
        {:ok, sent}

      {:error, _} = error ->
        error
    end
  end

  @doc "Gets options with `:ssl.getopts/2`."
  @spec getopts(socket(), list()) :: {:ok, list()} | {:error, term()}
  def getopts(socket, options), do: :ssl.getopts(socket, options)

  @doc "Sets options with `:ssl.setopts/2`."
  @spec setopts(socket(), list()) :: :ok | {:error, term()}
  def setopts(socket, options), do: :ssl.setopts(socket, options)

  @doc "Shuts the connection down with `:ssl.shutdown/2` (the write side sends close_notify)."
  @spec shutdown(socket(), :read | :write | :read_write) :: :ok | {:error, term()}
  def shutdown(socket, way), do: :ssl.shutdown(socket, way)

  @doc "Sends close_notify and closes the socket with `:ssl.close/1`."
  @spec close(socket()) :: :ok | {:error, term()}
  def close(socket), do: :ssl.close(socket)

  @doc "Makes `pid` the owner with `:ssl.controlling_process/2`."
  @spec controlling_process(socket(), pid()) :: :ok | {:error, term()}
  def controlling_process(socket, pid), do: :ssl.controlling_process(socket, pid)

  @doc "The local address, from `:ssl.sockname/1`."
  @spec sockname(socket()) :: {:ok, address()} | {:error, term()}
  def sockname(socket), do: :ssl.sockname(socket)

  @doc "The peer's address, from `:ssl.peername/1`."
  @spec peername(socket()) :: {:ok, address()} | {:error, term()}
  def peername(socket), do: :ssl.peername(socket)

  @doc "Statistics of the underlying TCP connection, from `:ssl.getstat/1`."
  @spec getstat(socket()) :: {:ok, [{atom(), non_neg_integer()}]} | {:error, term()}
  def getstat(socket), do: :ssl.getstat(socket)

  @doc "The ALPN protocol chosen, from `:ssl.negotiated_protocol/1`."
  @spec negotiated_protocol(socket()) :: {:ok, binary()} | {:error, term()}
  def negotiated_protocol(socket), do: :ssl.negotiated_protocol(socket)

  @doc "The peer's certificate (DER), from `:ssl.peercert/1`."
  @spec peercert(socket()) :: {:ok, binary()} | {:error, term()}
  def peercert(socket), do: :ssl.peercert(socket)

  @doc "Connection information, from `:ssl.connection_information/1`."
  @spec connection_information(socket()) :: {:ok, keyword()} | {:error, term()}
  def connection_information(socket), do: :ssl.connection_information(socket)

  @doc "TLS is secure."
  @spec secure?() :: true
  def secure?, do: true
end

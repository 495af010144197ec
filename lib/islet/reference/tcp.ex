defmodule Islet.Reference.TCP do
  @moduledoc """
  The reference transport: what `ThousandIsland.Transports.TCP` (Thousand
  Island 1.3 to 1.5) does, written over `:gen_tcp`, `:inet` and `:file`.

  Islet's tests run every scenario against this module and against
  `Islet.TCP` and require the same observable results; the benchmark uses it
  as the `:gen_tcp` baseline. It exposes the same functions as `Islet.TCP`.

  Listen options are resolved as Thousand Island resolves them: the
  hard-coded `[mode: :binary, active: false]`, then the caller's options,
  then the defaults `[backlog: 1024, nodelay: true, send_timeout: 30_000,
  send_timeout_close: true, reuseaddr: true]`; the first occurrence of a key
  wins (bare atoms such as `:inet6` are their own key), and `inet_backend`,
  when given, is moved to the front as `:gen_tcp` requires.
  """

  if Code.ensure_loaded?(ThousandIsland.Transport) do
    @behaviour ThousandIsland.Transport
  end

  @typedoc "A `:gen_tcp` socket (a port)."
  @type socket :: :inet.socket()

  @typedoc "A socket address, as `:inet.sockname/1` gives it."
  @type address :: {:inet.ip_address(), :inet.port_number()} | {:local, binary()} | term()

  @forced [mode: :binary, active: false]
  @defaults [
    backlog: 1024,
    nodelay: true,
    send_timeout: 30_000,
    send_timeout_close: true,
    reuseaddr: true
  ]

  @doc "Opens a listening socket on `port` (0 picks a free port) with `:gen_tcp.listen/2`."
  @spec listen(:inet.port_number(), list()) :: {:ok, socket()} | {:error, term()}
  def listen(port, user_options) when is_list(user_options) do
    options =
      (@forced ++ user_options ++ @defaults)
      |> first_per_key()
      |> inet_backend_first()

    :gen_tcp.listen(port, options)
  end

  # First occurrence of each key wins; a bare atom is its own key.
  defp first_per_key(options) do
    {kept, _seen} =
      Enum.reduce(options, {[], %{}}, fn option, {kept, seen} ->
        key = option_key(option)

        if Map.has_key?(seen, key),
          do: {kept, seen},
          else: {[option | kept], Map.put(seen, key, true)}
      end)

    Enum.reverse(kept)
  end

  defp option_key({key, _value}) when is_atom(key), do: key
  defp option_key(key) when is_atom(key), do: key

  # `:gen_tcp` only honours `inet_backend` as the first option.
  defp inet_backend_first(options) do
    {backend, rest} = Enum.split_with(options, &match?({:inet_backend, _}, &1))
    backend ++ rest
  end

  @doc "Waits for a connection with `:gen_tcp.accept/1`; the caller owns the new socket."
  @spec accept(socket()) :: {:ok, socket()} | {:error, term()}
  def accept(listener), do: :gen_tcp.accept(listener)

  @doc "Plain TCP has no handshake: returns the socket."
  @spec handshake(socket()) :: {:ok, socket()}
  def handshake(socket), do: {:ok, socket}

  @doc "Plain TCP has no handshake: returns the socket (the timeout is unused)."
  @spec handshake(socket(), timeout()) :: {:ok, socket()}
  def handshake(socket, _timeout), do: {:ok, socket}

  @doc "Plain TCP cannot be upgraded."
  @spec upgrade(socket(), term()) :: {:error, :unsupported_upgrade}
  def upgrade(_socket, _options), do: {:error, :unsupported_upgrade}

  @doc "Receives in passive mode with `:gen_tcp.recv/3`."
  @spec recv(socket(), non_neg_integer(), timeout()) :: {:ok, binary()} | {:error, term()}
  def recv(socket, length, timeout), do: :gen_tcp.recv(socket, length, timeout)

  @doc "Sends iodata with `:gen_tcp.send/2`."
  @spec send(socket(), iodata()) :: :ok | {:error, term()}
  def send(socket, data), do: :gen_tcp.send(socket, data)

  @doc """
  Sends `length` bytes of the file at `filename` from `offset` (length 0: to
  the end of the file): opens the file raw and calls `:file.sendfile/5`.
  """
  @spec sendfile(socket(), String.t(), non_neg_integer(), non_neg_integer()) ::
          {:ok, non_neg_integer()} | {:error, term()}
  def sendfile(socket, filename, offset, length) do
    with {:ok, fd} <- :file.open(filename, [:read, :raw, :binary]) do
      try do
        :file.sendfile(fd, socket, offset, length, [])
      after
        :file.close(fd)
      end
    end
  end

  @doc "Gets options with `:inet.getopts/2`."
  @spec getopts(socket(), list()) :: {:ok, list()} | {:error, term()}
  def getopts(socket, options), do: :inet.getopts(socket, options)

  @doc "Sets options with `:inet.setopts/2`."
  @spec setopts(socket(), list()) :: :ok | {:error, term()}
  def setopts(socket, options), do: :inet.setopts(socket, options)

  @doc "Shuts the connection down in one or both directions with `:gen_tcp.shutdown/2`."
  @spec shutdown(socket(), :read | :write | :read_write) :: :ok | {:error, term()}
  def shutdown(socket, way), do: :gen_tcp.shutdown(socket, way)

  @doc "Closes the socket with `:gen_tcp.close/1`."
  @spec close(socket()) :: :ok
  def close(socket), do: :gen_tcp.close(socket)

  @doc "Makes `pid` the owner with `:gen_tcp.controlling_process/2`."
  @spec controlling_process(socket(), pid()) :: :ok | {:error, term()}
  def controlling_process(socket, pid), do: :gen_tcp.controlling_process(socket, pid)

  @doc "The local address, from `:inet.sockname/1`."
  @spec sockname(socket()) :: {:ok, address()} | {:error, term()}
  def sockname(socket), do: :inet.sockname(socket)

  @doc "The peer's address, from `:inet.peername/1`."
  @spec peername(socket()) :: {:ok, address()} | {:error, term()}
  def peername(socket), do: :inet.peername(socket)

  @doc "Statistics, from `:inet.getstat/1`."
  @spec getstat(socket()) :: {:ok, [{atom(), non_neg_integer()}]} | {:error, term()}
  def getstat(socket), do: :inet.getstat(socket)

  @doc "The statistics named, from `:inet.getstat/2`."
  @spec getstat(socket(), [atom()]) :: {:ok, [{atom(), non_neg_integer()}]} | {:error, term()}
  def getstat(socket, keys), do: :inet.getstat(socket, keys)

  @doc "Plain TCP negotiates no protocol."
  @spec negotiated_protocol(socket()) :: {:error, :protocol_not_negotiated}
  def negotiated_protocol(_socket), do: {:error, :protocol_not_negotiated}

  @doc "Plain TCP has no certificates."
  @spec peercert(socket()) :: {:error, :not_secure}
  def peercert(_socket), do: {:error, :not_secure}

  @doc "Plain TCP has no TLS connection information."
  @spec connection_information(socket()) :: {:error, :not_secure}
  def connection_information(_socket), do: {:error, :not_secure}

  @doc "Plain TCP is not secure."
  @spec secure?() :: false
  def secure?, do: false
end

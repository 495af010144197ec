defmodule Islet.TCP do
  @moduledoc """
  A native TCP transport for Thousand Island: a drop-in for
  `ThousandIsland.Transports.TCP`.

      ThousandIsland.start_link(
        port: 4000,
        handler_module: MyHandler,
        transport_module: Islet.TCP,
        transport_options: [nodelay: true]
      )

  Every call answers what `:gen_tcp` and `:inet` answer for it: the same
  results, error atoms and active-mode messages (`{:tcp, socket, data}`,
  `{:tcp_closed, socket}`, `{:tcp_error, socket, reason}`,
  `{:tcp_passive, socket}`). The socket is an opaque reference to a native
  resource; the work is done in C++ (`c_src/`) without a process per socket:
  calls that must wait do so in the calling process, and active-mode data is
  sent to the owner straight from a native poller thread.

  Listen options are merged as Thousand Island's TCP transport merges them
  (hard-coded `mode: :binary, active: false`, then yours, then
  `backlog: 1024, nodelay: true, send_timeout: 30_000,
  send_timeout_close: true, reuseaddr: true`). See `Islet.Options` for the
  options accepted.
  """

  alias Islet.{Nif, Socket}

  if Code.ensure_loaded?(ThousandIsland.Transport) do
    @behaviour ThousandIsland.Transport
  end

  @typedoc "A listening or connected Islet socket (an opaque native resource)."
  @type socket :: reference()

  @typedoc "A socket address, as `:inet.sockname/1` gives it."
  @type address :: {:inet.ip_address(), :inet.port_number()} | {:local, binary()}

  @hardcoded_options [mode: :binary, active: false]
  @default_options [
    backlog: 1024,
    nodelay: true,
    send_timeout: 30_000,
    send_timeout_close: true,
    reuseaddr: true
  ]
  # The messages controlling_process forwards, as gen_tcp's does.
  @tags {:tcp, :tcp_closed}

  @doc "Opens a listening socket on `port` (0 picks a free port)."
  @spec listen(:inet.port_number(), keyword()) :: {:ok, socket()} | {:error, term()}
  def listen(port, user_options) when is_list(user_options) do
    options = Islet.Options.merge(@hardcoded_options, user_options, @default_options)
    Socket.listen(port, options)
  end

  @doc """
  Waits for a connection. Many processes may wait on one listener; closing it
  wakes them all with `{:error, :closed}`. The caller owns the new socket.
  """
  @spec accept(socket()) :: {:ok, socket()} | {:error, term()}
  defdelegate accept(listener), to: Socket

  @doc "Plain TCP has no handshake: returns the socket."
  @spec handshake(socket()) :: {:ok, socket()}
  def handshake(socket), do: {:ok, socket}

  @doc "Plain TCP has no handshake: returns the socket."
  @spec handshake(socket(), timeout()) :: {:ok, socket()}
  def handshake(socket, _timeout), do: {:ok, socket}

  @doc "STARTTLS is done by `Islet.TLS.upgrade/2`; TCP cannot upgrade."
  @spec upgrade(socket(), term()) :: {:error, :unsupported_upgrade}
  def upgrade(_socket, _opts), do: {:error, :unsupported_upgrade}

  @doc """
  Receives in passive mode: `length` 0 returns what is available, `length` n
  exactly n bytes; waits up to `timeout` ms (0: only what is buffered).
  """
  @spec recv(socket(), non_neg_integer(), timeout()) :: {:ok, binary()} | {:error, term()}
  defdelegate recv(socket, length, timeout), to: Socket

  @doc """
  Sends iodata (written as a vector, not flattened). As with gen_tcp, the
  data is taken at once: what the kernel cannot take yet is queued and
  written out in the background. A send that finds data queued and brings
  the queue to `high_watermark` (8 KiB by default) waits, its data queued,
  until the queue is down to `low_watermark` (4 KiB), up to `send_timeout`.
  """
  @spec send(socket(), iodata()) :: :ok | {:error, term()}
  defdelegate send(socket, data), to: Socket

  @doc """
  Sends `length` bytes of the file at `offset` with `sendfile(2)` (length 0:
  to the end of the file). Returns the number of bytes sent.
  """
  @spec sendfile(socket(), String.t(), non_neg_integer(), non_neg_integer()) ::
          {:ok, non_neg_integer()} | {:error, term()}
  defdelegate sendfile(socket, filename, offset, length), to: Socket

  @doc """
  Gets options, as `:inet.getopts/2` (with `{:raw, level, option, length}`
  among them).
  """
  @spec getopts(socket(), [atom() | {:raw, integer(), integer(), non_neg_integer()}]) ::
          {:ok, list()} | {:error, term()}
  def getopts(socket, options) when is_list(options) do
    case Islet.Options.getopts_keys(options) do
      {:ok, keys} -> Nif.getopts(socket, keys)
      :error -> {:error, :einval}
    end
  end

  @doc """
  Sets options, as `:inet.setopts/2`. `setopts(socket, active: :once)`, which
  Thousand Island calls for every packet, is a single native call.
  """
  @spec setopts(socket(), list()) :: :ok | {:error, term()}
  def setopts(socket, options), do: Socket.setopts(socket, options, :inet)

  @doc "Shuts the connection down in one or both directions."
  @spec shutdown(socket(), :read | :write | :read_write) :: :ok | {:error, term()}
  def shutdown(socket, way) when way in [:read, :write, :read_write] do
    # With data queued, the NIF shuts down once it is out (gen_tcp delays
    # the shutdown too); only where no pump runs does the caller wait.
    case Nif.shutdown(socket, way) do
      :drain_first ->
        Socket.flush_queue(socket)
        Nif.shutdown(socket, way)

      result ->
        result
    end
  end

  @doc """
  Closes the socket (from any process); waiters get `{:error, :closed}`. As
  `:gen_tcp.close/1` does, a `{:tcp_closed, socket}` already in the caller's
  mailbox is taken out of it.
  """
  @spec close(socket()) :: :ok
  def close(socket) do
    :ok = Socket.close(socket)

    receive do
      {:tcp_closed, ^socket} -> :ok
    after
      0 -> :ok
    end
  end

  @doc """
  Makes `pid` the owner, which receives active-mode messages; only the owner
  may call it. Data and close messages already delivered to the caller move
  with it (a close among them leaves the socket with the caller, passive, as
  gen_tcp does); passive and error messages stay.
  """
  @spec controlling_process(socket(), pid()) :: :ok | {:error, term()}
  def controlling_process(socket, pid), do: Socket.controlling_process(socket, pid, @tags)

  @doc "The local address."
  @spec sockname(socket()) :: {:ok, address()} | {:error, term()}
  defdelegate sockname(socket), to: Nif

  @doc "The peer's address."
  @spec peername(socket()) :: {:ok, address()} | {:error, term()}
  defdelegate peername(socket), to: Nif

  @doc "Statistics, as `:inet.getstat/1`."
  @spec getstat(socket()) :: {:ok, [{atom(), non_neg_integer()}]} | {:error, term()}
  defdelegate getstat(socket), to: Nif

  @doc "The statistics named, as `:inet.getstat/2`."
  @spec getstat(socket(), [atom()]) :: {:ok, [{atom(), non_neg_integer()}]} | {:error, term()}
  def getstat(socket, keys) when is_list(keys) do
    with {:ok, stats} <- Nif.getstat(socket) do
      if Enum.all?(keys, &List.keymember?(stats, &1, 0)) do
        {:ok, for(key <- keys, {^key, _} = kv <- stats, do: kv)}
      else
        {:error, :einval}
      end
    end
  end

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

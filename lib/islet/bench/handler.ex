defmodule Islet.Bench.Handler do
  @moduledoc """
  The per-connection process of the miniature runtime, shaped like Thousand
  Island's handler: a GenServer started under the acceptor's
  `DynamicSupervisor`, which receives the socket once the acceptor has made
  it the controlling process, calls `peername/1` and `handshake/2` (with
  `check_resumption`, it then asks whether the TLS session was resumed, see
  `Islet.Bench.Transports.session_resumed?/2`), then loops on `setopts(active: :once)` with the read timeout as the GenServer
  timeout. Request bodies are read in passive mode with `recv(socket, 0,
  timeout)`. At the end it calls `getstat/1` and `close/1`.

  Routes: `GET /download` sends the configured file with `sendfile/4`;
  a request with a body (`PUT`/`POST`) has it read and counted, answered with
  `received N`; anything else gets `Hello, world!`.
  """

  use GenServer, restart: :temporary

  alias Islet.Bench.{Counters, HTTP, Transports}

  @typedoc "What every handler of a server shares (built by `Islet.Bench.Server`)."
  @type config :: %{
          transport: module(),
          counters: Counters.t(),
          read_timeout: timeout(),
          handshake_timeout: timeout(),
          check_resumption: boolean(),
          download: {Path.t(), non_neg_integer()} | nil
        }

  @hello "Hello, world!\n"

  @doc "Starts a handler waiting for its socket."
  @spec start_link(config()) :: GenServer.on_start()
  def start_link(config), do: GenServer.start_link(__MODULE__, config)

  @impl GenServer
  def init(config) do
    Process.flag(:trap_exit, true)
    {:ok, %{config: config, socket: nil, buffer: ""}}
  end

  @impl GenServer
  def handle_info({:islet_bench_ready, raw_socket}, %{config: config} = state) do
    transport = config.transport

    with {:ok, _peer} <- transport.peername(raw_socket),
         {:ok, socket} <- transport.handshake(raw_socket, config.handshake_timeout) do
      Counters.add(config.counters, :accepted)

      if config.check_resumption and Transports.session_resumed?(transport, socket),
        do: Counters.add(config.counters, :resumed)

      continue(%{state | socket: socket})
    else
      {:error, _reason} ->
        Counters.add(config.counters, :failed_handshakes)
        _ = transport.close(raw_socket)
        {:stop, :normal, state}
    end
  end

  def handle_info({tag, socket, data}, %{socket: socket} = state) when tag in [:tcp, :ssl] do
    case state.buffer do
      "" -> serve(data, state)
      buffer -> serve(buffer <> data, state)
    end
  end

  def handle_info({tag, socket}, %{socket: socket} = state)
      when tag in [:tcp_closed, :ssl_closed] do
    {:stop, :normal, state}
  end

  def handle_info({tag, socket, reason}, %{socket: socket} = state)
      when tag in [:tcp_error, :ssl_error] do
    unless reason in [:closed, :econnreset], do: Counters.add(state.config.counters, :errors)
    {:stop, :normal, state}
  end

  def handle_info(:timeout, state), do: {:stop, :normal, state}

  def handle_info({:EXIT, _pid, reason}, state), do: {:stop, reason, state}

  def handle_info(_unexpected, state), do: {:noreply, state, state.config.read_timeout}

  @impl GenServer
  def terminate(_reason, %{socket: nil}), do: :ok

  def terminate(reason, %{socket: socket, config: config}) do
    transport = config.transport

    unless reason in [:normal, :shutdown] or match?({:shutdown, _}, reason),
      do: Counters.add(config.counters, :errors)

    with {:ok, stats} <- transport.getstat(socket) do
      Counters.add(config.counters, :recv_oct, Keyword.get(stats, :recv_oct, 0))
      Counters.add(config.counters, :send_oct, Keyword.get(stats, :send_oct, 0))
    end

    _ = transport.close(socket)
    Counters.add(config.counters, :closed)
  end

  # Serves every complete request in the buffer, then re-arms active-once.
  defp serve(buffer, %{config: config} = state) do
    case HTTP.parse(buffer) do
      :more ->
        continue(%{state | buffer: buffer})

      {:ok, request, rest} ->
        Counters.add(config.counters, :requests)

        close? = request.close?

        case respond(request, rest, state) do
          {:ok, _rest} when close? -> {:stop, :normal, state}
          {:ok, rest} -> serve(rest, state)
          {:error, reason} -> fail(reason, state)
        end

      {:error, _reason} ->
        _ = config.transport.send(state.socket, HTTP.response(400, "bad request\n", true))
        {:stop, :normal, state}
    end
  end

  defp continue(%{config: config} = state) do
    case config.transport.setopts(state.socket, active: :once) do
      :ok -> {:noreply, state, config.read_timeout}
      {:error, _reason} -> {:stop, :normal, state}
    end
  end

  defp fail(reason, state) do
    unless reason in [:closed, :econnreset, :epipe],
      do: Counters.add(state.config.counters, :errors)

    {:stop, :normal, state}
  end

  defp respond(%{content_length: length} = request, rest, state) when length > 0 do
    with {:ok, rest} <- read_body(length, rest, state) do
      body = ["received ", Integer.to_string(length), "\n"]
      send_all(HTTP.response(200, body, request.close?), rest, state)
    end
  end

  defp respond(%{method: "GET", path: "/download"} = request, rest, %{config: config} = state) do
    case config.download do
      {path, size} ->
        transport = config.transport

        with :ok <- transport.send(state.socket, HTTP.head(200, size, request.close?)),
             {:ok, ^size} <- transport.sendfile(state.socket, path, 0, 0) do
          {:ok, rest}
        else
          {:ok, short} -> {:error, {:short_sendfile, short, size}}
          {:error, _reason} = error -> error
        end

      nil ->
        send_all(HTTP.response(404, "no download configured\n", request.close?), rest, state)
    end
  end

  defp respond(request, rest, state) do
    send_all(HTTP.response(200, @hello, request.close?), rest, state)
  end

  defp send_all(iodata, rest, state) do
    case state.config.transport.send(state.socket, iodata) do
      :ok -> {:ok, rest}
      {:error, _reason} = error -> error
    end
  end

  # Reads `length` body bytes of which `have` are already buffered, in
  # passive mode; returns the bytes after the body.
  defp read_body(length, have, %{config: config} = state) do
    if byte_size(have) >= length do
      {_body, rest} = :erlang.split_binary(have, length)
      Counters.add(config.counters, :body_bytes, length)
      {:ok, rest}
    else
      Counters.add(config.counters, :body_bytes, byte_size(have))
      recv_body(length - byte_size(have), state)
    end
  end

  defp recv_body(remaining, %{config: config} = state) do
    case config.transport.recv(state.socket, 0, config.read_timeout) do
      {:ok, data} when byte_size(data) < remaining ->
        Counters.add(config.counters, :body_bytes, byte_size(data))
        recv_body(remaining - byte_size(data), state)

      {:ok, data} ->
        {_body, rest} = :erlang.split_binary(data, remaining)
        Counters.add(config.counters, :body_bytes, remaining)
        {:ok, rest}

      {:error, _reason} = error ->
        error
    end
  end
end

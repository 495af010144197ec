defmodule Islet.Bench.IdleClient do
  @moduledoc """
  The client of the idle-memory workload, run in its own BEAM pinned to the
  client core: opens many keep-alive connections, makes one request on each
  (so the server's handler has served a request and waits in active-once,
  as a kept-alive connection does) and holds them open.

  With `tls: ssl_options` it connects with `:ssl` instead of `:gen_tcp`
  (each connection a full handshake unless the options say otherwise).
  Connections are opened `:concurrency` at a time (default 64), so that TLS
  handshakes overlap the server's work instead of waiting for it.
  """

  @request "GET / HTTP/1.1\r\nhost: islet-bench\r\n\r\n"
  @timeout 10_000
  @concurrency 64

  @typedoc "The open connections: `{module, socket}` pairs."
  @type t :: [{module(), term()}]

  @doc "No connections."
  @spec new() :: t()
  def new, do: []

  @doc """
  Opens `count` more connections to `address:port`, `:concurrency` at a
  time (each connects, sends a request and reads the answer), and returns
  how many succeeded, how many failed, and the new state. Options: `:tls`
  (`:ssl` client options or `nil`), `:concurrency`.
  """
  @spec open(t(), :inet.ip_address(), :inet.port_number(), non_neg_integer(), keyword()) ::
          {non_neg_integer(), non_neg_integer(), t()}
  def open(open, address, port, count, options) do
    module = if Keyword.get(options, :tls), do: :ssl, else: :gen_tcp
    connect_options = [:binary, active: false] ++ (Keyword.get(options, :tls) || [])
    concurrency = Keyword.get(options, :concurrency) || @concurrency
    owner = self()

    good =
      Stream.duplicate(nil, count)
      |> Task.async_stream(
        fn _ -> open_one(module, address, port, connect_options, owner) end,
        max_concurrency: concurrency,
        ordered: false,
        timeout: 3 * @timeout,
        on_timeout: :kill_task
      )
      |> Enum.flat_map(fn
        {:ok, {:ok, socket}} -> [{module, socket}]
        _failed -> []
      end)

    {length(good), count - length(good), good ++ open}
  end

  # Connects, sends the request, reads the answer and hands the socket to
  # `owner` (the task ends; its sockets would close with it otherwise).
  defp open_one(module, address, port, options, owner) do
    case module.connect(address, port, options, @timeout) do
      {:ok, socket} ->
        with :ok <- module.send(socket, @request),
             :ok <- read_response(module, socket, ""),
             :ok <- module.controlling_process(socket, owner) do
          {:ok, socket}
        else
          error ->
            module.close(socket)
            error
        end

      error ->
        error
    end
  end

  defp read_response(module, socket, buffer) do
    with {:ok, data} <- module.recv(socket, 0, @timeout) do
      buffer = buffer <> data

      if complete?(buffer), do: :ok, else: read_response(module, socket, buffer)
    end
  end

  defp complete?(buffer) do
    case :binary.split(buffer, "\r\n\r\n") do
      [head, body] ->
        case Regex.run(~r/content-length:\s*(\d+)/i, head) do
          [_, length] -> byte_size(body) >= String.to_integer(length)
          nil -> true
        end

      [_] ->
        false
    end
  end

  @doc "Closes every connection."
  @spec close_all(t()) :: t()
  def close_all(open) do
    Enum.each(open, fn {module, socket} -> module.close(socket) end)
    []
  end
end

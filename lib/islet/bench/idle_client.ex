defmodule Islet.Bench.IdleClient do
  @moduledoc """
  The client of the idle-memory workload, run in its own BEAM pinned to the
  client core: opens many keep-alive connections, makes one request on each
  (so the server's handler has served a request and waits in active-once,
  as a kept-alive connection does) and holds them open.

  With `tls: ssl_options` it connects with `:ssl` instead of `:gen_tcp`.
  """

  @request "GET / HTTP/1.1\r\nhost: islet-bench\r\n\r\n"
  @batch 250
  @timeout 10_000

  @typedoc "The open connections: `{module, socket}` pairs."
  @type t :: [{module(), term()}]

  @doc "No connections."
  @spec new() :: t()
  def new, do: []

  @doc """
  Opens `count` more connections to `address:port` in batches (connect and
  send on a batch, then read every answer), and returns how many succeeded,
  how many failed, and the new state.
  """
  @spec open(t(), :inet.ip_address(), :inet.port_number(), non_neg_integer(), keyword()) ::
          {non_neg_integer(), non_neg_integer(), t()}
  def open(open, address, port, count, options) do
    module = if Keyword.get(options, :tls), do: :ssl, else: :gen_tcp
    connect_options = [:binary, active: false] ++ (Keyword.get(options, :tls) || [])

    Enum.reduce(chunks(count), {0, 0, open}, fn size, {ok, failed, open} ->
      batch = for _ <- 1..size, do: connect(module, address, port, connect_options)
      answered = for {:ok, socket} <- batch, do: {socket, read_response(module, socket, "")}
      good = for {socket, :ok} <- answered, do: {module, socket}
      for {socket, {:error, _}} <- answered, do: module.close(socket)
      {ok + length(good), failed + size - length(good), good ++ open}
    end)
  end

  defp chunks(0), do: []
  defp chunks(count), do: Enum.map(Enum.chunk_every(1..count, @batch), &length/1)

  defp connect(module, address, port, options) do
    with {:ok, socket} <- module.connect(address, port, options, @timeout),
         :ok <- module.send(socket, @request) do
      {:ok, socket}
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

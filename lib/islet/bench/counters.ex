defmodule Islet.Bench.Counters do
  @moduledoc """
  Event counters of one `Islet.Bench.Server` (or of several sharing them),
  shared by its handlers (`:counters`, so updates are cheap and lock-free).
  `:accepted` counts completed handshakes, `:failed_handshakes` the others,
  `:resumed` the handshakes that resumed a TLS session (when the server
  checks, see `Islet.Bench.Server`).
  """

  @keys [:accepted, :closed, :requests, :recv_oct, :send_oct, :body_bytes, :errors] ++
          [:resumed, :failed_handshakes]
  @index @keys |> Enum.with_index(1) |> Map.new()

  @typedoc "A counters reference made by `new/0`."
  @type t :: :counters.counters_ref()

  @typedoc "A counter's name."
  @type key ::
          :accepted
          | :closed
          | :requests
          | :recv_oct
          | :send_oct
          | :body_bytes
          | :errors
          | :resumed
          | :failed_handshakes

  @doc "New counters, all zero."
  @spec new() :: t()
  def new, do: :counters.new(length(@keys), [:write_concurrency])

  @doc "Adds `n` to counter `key`."
  @spec add(t(), key(), integer()) :: :ok
  def add(ref, key, n \\ 1), do: :counters.add(ref, Map.fetch!(@index, key), n)

  @doc "All counters as a map, plus `:live` (accepted and not yet closed connections)."
  @spec read(t()) :: %{atom() => integer()}
  def read(ref) do
    map = Map.new(@keys, fn key -> {key, :counters.get(ref, Map.fetch!(@index, key))} end)
    Map.put(map, :live, map.accepted - map.closed)
  end
end

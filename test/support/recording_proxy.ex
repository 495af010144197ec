defmodule Islet.Test.RecordingProxy do
  @moduledoc """
  A TCP proxy on loopback for one connection that passes bytes both ways
  unchanged and sends the test process what the server sent, so that a
  test can look at the TLS records on the wire (whether the last one is
  close_notify, for one).
  """

  @typedoc "A running proxy: the port to connect to, the tag of its messages, its process."
  @type t :: %{port: :inet.port_number(), ref: reference(), pid: pid()}

  @doc """
  Starts the proxy to the server at `port` (`up_opts`: more options for its
  connection to the server). The server's bytes come to the caller as
  `{ref, bytes}`, then `{ref, :end}`.
  """
  @spec start(:inet.port_number(), keyword()) :: t()
  def start(port, up_opts \\ []) do
    {:ok, front} = :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, front_port} = :inet.port(front)
    {test, ref} = {self(), make_ref()}

    pid =
      spawn(fn ->
        {:ok, down} = :gen_tcp.accept(front)
        :gen_tcp.close(front)

        {:ok, up} =
          :gen_tcp.connect(
            {127, 0, 0, 1},
            port,
            [:binary, active: false, nodelay: true] ++ up_opts
          )

        :ok = :inet.setopts(down, nodelay: true)
        spawn(fn -> pipe(down, up, fn _ -> :ok end) end)
        pipe(up, down, &Kernel.send(test, {ref, &1}))
        Kernel.send(test, {ref, :end})
      end)

    %{port: front_port, ref: ref, pid: pid}
  end

  @doc """
  Stops reading the server's bytes until `resume/1` (the server's socket
  fills, as under a client that does not read); returns once it holds.
  """
  @spec pause(t()) :: :ok
  def pause(%{pid: pid}) do
    Kernel.send(pid, {:pause, self()})

    receive do
      {:paused, ^pid} -> :ok
    after
      5_000 -> raise "the proxy did not pause"
    end
  end

  @doc "Reads the server's bytes again."
  @spec resume(t()) :: :ok
  def resume(%{pid: pid}) do
    Kernel.send(pid, :resume)
    :ok
  end

  @doc "What the server sent, once its side has ended (`:no_end` after 10 s)."
  @spec recorded(t()) :: binary() | :no_end
  def recorded(%{ref: ref}), do: recorded(ref, [])

  defp recorded(ref, acc) do
    receive do
      {^ref, :end} -> IO.iodata_to_binary(acc)
      {^ref, bytes} -> recorded(ref, [acc | bytes])
    after
      10_000 -> :no_end
    end
  end

  @doc """
  The length of the last TLS record of a stream of whole records, or
  `{:not_records, bytes}` (a stream cut inside a record).
  """
  @spec last_record_length(binary() | atom()) :: non_neg_integer() | {:not_records, integer()}
  def last_record_length(<<_type, 3, _minor, n::16, _::binary-size(n)>>), do: n

  def last_record_length(<<_type, 3, _minor, n::16, _::binary-size(n), rest::binary>>),
    do: last_record_length(rest)

  def last_record_length(other) when is_binary(other), do: {:not_records, byte_size(other)}
  def last_record_length(other), do: {:not_records, other}

  # Forwards what `from` receives to `to` (telling `seen` of it first),
  # until either side closes; paused on request (the server's direction).
  defp pipe(from, to, seen) do
    receive do
      {:pause, by} ->
        Kernel.send(by, {:paused, self()})
        receive(do: (:resume -> :ok))
    after
      0 -> :ok
    end

    case :gen_tcp.recv(from, 0, 20) do
      {:ok, data} ->
        seen.(data)
        :gen_tcp.send(to, data)
        pipe(from, to, seen)

      {:error, :timeout} ->
        pipe(from, to, seen)

      {:error, _} ->
        :gen_tcp.close(to)
    end
  end
end

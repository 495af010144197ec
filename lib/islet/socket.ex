defmodule Islet.Socket do
  @moduledoc false
  # The Elixir half of the engine, shared by Islet.TCP and Islet.TLS: calls
  # the NIF, and when it answers that the caller must wait, waits in
  # `receive` for the NIF's {:"$islet", socket} message with the caller's
  # timeout, then calls again. Nothing here blocks a scheduler.

  alias Islet.Nif

  @type t :: reference()

  # The longest `after` a receive takes.
  @max_timeout 4_294_967_295

  @spec listen(:inet.port_number(), list(), [atom()], Islet.Options.stack()) ::
          {:ok, t()} | {:error, term()}
  def listen(port, opts, extra \\ [], stack \\ :inet)

  def listen(port, opts, extra, stack)
      when is_integer(port) and port in 0..65535 and is_list(opts) do
    case Islet.Options.listen_spec(port, opts, extra, stack) do
      {:ok, {family, address, port, nif_opts}} ->
        Nif.listen(family, address, port, nif_opts ++ family_opts(family) ++ owner_opts(stack))

      error ->
        error
    end
  end

  def listen(_port, _opts, _extra, _stack), do: {:error, :einval}

  # A Unix-domain listener whose connections get its reuseaddr, where this
  # OTP's gen_tcp does that (the kernel does not). Internal: not a user option.
  defp family_opts(:local) do
    if Islet.Compat.unix_accept_copies_reuseaddr?(),
      do: [{:accept_copies_reuseaddr, true}],
      else: []
  end

  defp family_opts(_family), do: []

  # TCP connections (what the listener accepts) are watched by a link from
  # Islet.Owners, as gen_tcp links its port; TLS ones and listeners by a
  # monitor (see Islet.Owners). Internal: not a user option.
  defp owner_opts(:inet), do: [{:link_owner, true}]
  defp owner_opts(_stack), do: []

  # setopts/2 of Islet.TCP (stack :inet) and Islet.TLS (:ssl).
  @spec setopts(t(), list(), Islet.Options.stack()) :: :ok | {:error, term()}
  def setopts(socket, [active: value], _stack), do: Nif.set_active(socket, value)

  def setopts(socket, options, stack) do
    case Islet.Options.socket_opts(options, stack) do
      {:ok, nif_options} -> Nif.setopts(socket, nif_options)
      error -> error
    end
  end

  @spec accept(t()) :: {:ok, t()} | {:error, term()}
  def accept(listener) do
    case Nif.accept(listener) do
      :wait ->
        await(listener, :infinity, :read)
        accept(listener)

      result ->
        result
    end
  end

  @spec recv(t(), non_neg_integer(), timeout()) :: {:ok, binary()} | {:error, term()}
  def recv(socket, length, timeout)
      when is_integer(length) and length >= 0 and
             (timeout == :infinity or (is_integer(timeout) and timeout in 0..@max_timeout)) do
    case Nif.recv(socket, length) do
      :wait -> recv_wait(socket, length, deadline(timeout))
      :more -> recv_more(socket, length, deadline(timeout))
      result -> result
    end
  end

  # recv(n) read a slice and has more to read: call again at once.
  defp recv_more(socket, length, deadline) do
    case Nif.recv(socket, length) do
      wait when wait in [:wait, :wait_end] -> recv_wait(socket, length, deadline)
      :more -> recv_more(socket, length, deadline)
      result -> result
    end
  end

  # :wait_end: the socket went active while this recv waited. As gen_tcp's,
  # the recv then waits for its timeout or the connection's end only (the
  # data goes to messages).
  defp recv_wait(socket, length, deadline) do
    case await(socket, remaining(deadline), :read) do
      :ok ->
        case Nif.recv(socket, length) do
          wait when wait in [:wait, :wait_end] -> recv_wait(socket, length, deadline)
          :more -> recv_more(socket, length, deadline)
          result -> result
        end

      :timeout ->
        {:error, :timeout}
    end
  end

  @spec send(t(), iodata()) :: :ok | {:error, term()}
  def send(socket, data) when is_binary(data), do: send_iovec(socket, [data])

  # (OTP 26+'s gen_tcp takes a byte, as the element of its iolist.)
  def send(socket, byte) when is_integer(byte) and byte in 0..255 do
    if Islet.Compat.gen_tcp26?(), do: send_iovec(socket, [<<byte>>]), else: {:error, :einval}
  end

  def send(socket, data) do
    # The NIF takes a flat list of binaries (enif_inspect_iovec); this BIF
    # makes one from any iodata without copying large binaries. Bad iodata is
    # {:error, :einval}, as gen_tcp answers.
    send_iovec(socket, :erlang.iolist_to_iovec(data))
  rescue
    ArgumentError -> {:error, :einval}
  end

  @doc """
  Sends an iovec as it is: a flat list of binaries, such as
  `:erlang.iolist_to_iovec/1` returns (callers that made one already save
  a second pass, about 150 ns per call).
  """
  @spec send_iovec(t(), [binary()]) :: :ok | {:error, term()}
  def send_iovec(socket, data) do
    case Nif.send(socket, data) do
      :ok -> :ok
      {:error, _} = error -> error
      wait -> send_wait(socket, data, wait, send_deadline(socket))
    end
  end

  # As with gen_tcp, a send returns once its data is taken: written, or
  # queued and written out by a pump as the socket drains. It waits only
  # behind another sender, when the socket is busy, or when its own data
  # brought the queue to the high watermark (gen_tcp's busy port: it then
  # waits, its data queued, until the queue is down to the low watermark);
  # send_timeout bounds the wait. :wait_drain (the data is queued: the
  # socket is busy, or no pump runs and the caller writes it out) continues
  # with send_more, and so does a :more after it; the others send the same
  # data again. `taken?`: the data is in the queue already.
  # :more_taken (plain TCP: the data is queued, and this call's write budget
  # ran out before the kernel was full) goes on at once with send_more, as
  # gen_tcp's send returns only once the kernel took what it could.
  defp send_wait(socket, data, wait, {deadline, close?}, taken? \\ false) do
    taken? = taken? or wait in [:wait_drain, :more_taken]

    case wait_or_go(socket, wait, deadline) do
      :ok ->
        result = if taken?, do: Nif.send_more(socket), else: Nif.send(socket, data)

        case result do
          :ok -> :ok
          {:error, _} = error -> error
          wait -> send_wait(socket, data, wait, {deadline, close?}, taken?)
        end

      :timeout ->
        send_timed_out(socket, close?, if(taken?, do: [], else: data))
    end
  end

  # :more (TLS: the NIF spent its encryption budget) continues at once.
  defp wait_or_go(_socket, wait, _deadline) when wait in [:more, :more_taken], do: :ok
  defp wait_or_go(socket, _wait, deadline), do: await(socket, remaining(deadline), :write)

  # gen_tcp's port has queued the data of a send whose time ran out: it
  # still goes out, unless send_timeout_close closes the connection.
  defp send_timed_out(socket, close?, data) do
    if close?, do: Nif.send_timeout_close(socket), else: Nif.send_timeout_keep(socket, data)
    {:error, :timeout}
  end

  @doc false
  # Lets what is queued go out before close or shutdown, as gen_tcp does:
  # waits while the queue drains, and gives up after 5 s without progress
  # (gen_tcp's close does the same). Nothing waits with linger {true, 0},
  # or once the connection has ended.
  @spec flush_queue(t()) :: :ok
  def flush_queue(socket), do: flush_queue(socket, Nif.drain(socket), nil)

  @flush_patience 5_000

  defp flush_queue(_socket, :ok, _window), do: :ok
  defp flush_queue(socket, :more, window), do: flush_queue(socket, Nif.drain(socket), window)

  defp flush_queue(socket, {:wait, queued}, window) do
    # A window: the queue's size when it started, and when it ends.
    {start, ends} = window || {queued, System.monotonic_time(:millisecond) + @flush_patience}

    case await(socket, remaining(ends), :write) do
      :ok ->
        flush_queue(socket, Nif.drain(socket), {start, ends})

      :timeout ->
        case Nif.drain(socket) do
          # Progress in this window: another one.
          {:wait, now} when now < start -> flush_queue(socket, {:wait, now}, nil)
          {:wait, _} -> Nif.cancel(socket, :write)
          other -> flush_queue(socket, other, nil)
        end
    end
  end

  # send_timeout and send_timeout_close, read only on the slow path.
  defp send_deadline(socket) do
    case Nif.getopts(socket, [:send_timeout, :send_timeout_close]) do
      # A negative one (a value past 32 bits, cut as inet cuts it) is, as
      # for gen_tcp's timer, no limit.
      {:ok, [send_timeout: t, send_timeout_close: close?]} when is_integer(t) and t < 0 ->
        {:infinity, close?}

      {:ok, [send_timeout: t, send_timeout_close: close?]} ->
        {deadline(t), close?}

      _ ->
        {:infinity, false}
    end
  end

  @spec sendfile(t(), Path.t(), non_neg_integer(), non_neg_integer()) ::
          {:ok, non_neg_integer()} | {:error, term()}
  def sendfile(socket, path, offset, length)
      when is_integer(offset) and offset >= 0 and is_integer(length) and length >= 0 do
    with {:ok, file} <- Nif.sendfile_open(IO.chardata_to_string(path)),
         {:ok, size} <- Nif.sendfile_size(file) do
      count = if length == 0, do: max(size - offset, 0), else: length
      result = sendfile_loop(socket, file, offset, count, 0, nil)
      forget_wake(socket)
      result
    end
  end

  # The NIF keeps the write turn between its calls: a close or the peer's
  # end that let the queue go meanwhile sent this process a wake it no
  # longer waits for, which must not reach a handler's handle_info.
  defp forget_wake(socket) do
    receive do
      {:"$islet", ^socket} -> :ok
    after
      0 -> :ok
    end
  end

  defp sendfile_loop(_socket, _file, _offset, 0, sent, _deadline), do: {:ok, sent}

  defp sendfile_loop(socket, file, offset, count, sent, deadline) do
    case Nif.sendfile(socket, file, offset, count) do
      {done, n} when done in [:ok, :eof] ->
        {:ok, sent + n}

      {:more, n} ->
        sendfile_loop(socket, file, offset + n, count - n, sent + n, nil)

      # send_timeout bounds each wait without progress (gen_tcp's sendfile
      # has no bound at all): a call that sent something starts a new one,
      # so a slow reader that keeps reading gets the whole file.
      {wait, n} when wait in [:wait, :wait_turn] ->
        {dl, close?} = if deadline == nil or n > 0, do: send_deadline(socket), else: deadline

        case await(socket, remaining(dl), :write) do
          :ok ->
            sendfile_loop(socket, file, offset + n, count - n, sent + n, {dl, close?})

          :timeout ->
            send_timed_out(socket, close?, [])
        end

      {:error, _} = error ->
        error
    end
  end

  @spec close(t()) :: :ok
  def close(socket) do
    flush_queue(socket)

    case Nif.close(socket) do
      :ok ->
        :ok

      :wait_close ->
        # The fd is closed by the NIF's stop callback, on another thread; wait
        # for it so that the address is free when close returns.
        receive do
          {:"$islet_closed", ^socket} -> :ok
        after
          5_000 -> :ok
        end
    end
  end

  @doc false
  # Moves ownership. `tags`: gen_tcp's messages ({data, closed}) for a TCP
  # socket, whose data and close messages already in the caller's mailbox
  # are forwarded to the new owner, in order, as gen_tcp does (its passive
  # and error messages stay); nil for TLS, as :ssl moves no message. As
  # with gen_tcp, a close among the forwarded messages leaves the owner
  # unchanged and the socket passive (the NIF has paused it), and :ok.
  @spec controlling_process(t(), pid(), {atom(), atom()} | nil) :: :ok | {:error, term()}
  def controlling_process(socket, pid, tags) when is_pid(pid) do
    if pid == self() do
      Nif.controlling_process(socket, pid)
    else
      case Nif.controlling_process(socket, pid) do
        {:paused, active} when tags == nil ->
          Nif.set_owner(socket, pid, active)

        {:paused, active} ->
          case forward(socket, pid, tags, false) do
            :closed -> :ok
            :open -> Nif.set_owner(socket, pid, active)
          end

        other ->
          other
      end
    end
  end

  defp forward(socket, pid, {data, closed} = tags, closed?) do
    receive do
      {^data, ^socket, _} = msg ->
        Kernel.send(pid, msg)
        forward(socket, pid, tags, closed?)

      {^closed, ^socket} = msg ->
        Kernel.send(pid, msg)
        forward(socket, pid, tags, true)
    after
      0 -> if closed?, do: :closed, else: :open
    end
  end

  # Waits for the NIF's wake-up. On timeout, leaves the queue and drops a
  # wake-up that may have raced in, so that it cannot confuse a later wait.
  defp await(socket, timeout, direction) do
    receive do
      {:"$islet", ^socket} -> :ok
    after
      timeout ->
        Nif.cancel(socket, direction)

        receive do
          {:"$islet", ^socket} -> :timeout
        after
          0 -> :timeout
        end
    end
  end

  defp deadline(:infinity), do: :infinity
  defp deadline(timeout), do: System.monotonic_time(:millisecond) + timeout

  defp remaining(:infinity), do: :infinity

  defp remaining(deadline),
    do: min(max(deadline - System.monotonic_time(:millisecond), 0), @max_timeout)
end

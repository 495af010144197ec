defmodule Islet.Owners do
  @moduledoc """
  Closes Islet.TCP sockets when their owner dies, as a gen_tcp port dies with
  the process it is linked to.

  gen_tcp links each socket's port to its owner, so the owner's
  `Process.info(pid, :monitored_by)` lists nothing (Thousand Island's tests
  assert that of a connection process). Islet's sockets are not ports; this
  process stands in for them: it traps exits, the NIF asks it to link each
  process the first time that process owns a TCP connection (by accept or
  `controlling_process`), and when a linked process exits it closes the
  connections that process still owns. A process stays linked until it
  exits (so `Process.info(pid, :links)` lists this process where gen_tcp's
  would list the port while it is open). A connection whose owner died with
  data still queued is closed only once the queue is out (or after 5 s
  without progress), by a process started for it, as ERTS keeps a closing
  port until its queue is out.

  Listeners and Islet.TLS sockets are watched by a monitor from the socket
  instead, which closes them in the owner's exit itself; a connection among
  them with data still queued is handed to this process instead (the
  socket's down callback cannot start a process), which lets the queue out
  before it closes in the same way, as `:ssl`'s TCP port does after its
  connection process has exited. For a listener
  that matters: the processes waiting in its accept hear of its end before
  anything else happens (Thousand Island's acceptors then report their end,
  just before their supervisor stops them), where a link would close it
  only once this process has run. `:ssl`'s connection process monitors its
  owner too. While this process is not running (before Islet's application
  starts, or once it stops), TCP connections get monitors as well.
  """
  use GenServer

  alias Islet.Nif

  @doc "Starts the process (Islet's application does)."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(options \\ []), do: GenServer.start_link(__MODULE__, options, name: __MODULE__)

  @impl GenServer
  def init(_options) do
    Process.flag(:trap_exit, true)
    # Owners registered while no linker ran (a restart): link them now. A
    # dead one answers with a noproc exit, handled below.
    Enum.each(Nif.owners_linker(self()), &Process.link/1)
    {:ok, nil}
  end

  @impl GenServer
  def handle_info({:"$islet_link", pid}, state) when is_pid(pid) do
    Process.link(pid)
    {:noreply, state}
  end

  def handle_info({:EXIT, pid, _reason}, state) when is_pid(pid) and node(pid) == node() do
    # (A live process did not exit: the message was sent, not a signal.)
    if not Process.alive?(pid), do: Enum.each(Nif.owners_down(pid), &drain_and_close/1)
    {:noreply, state}
  end

  # A connection watched by a monitor (Islet.TLS's, or Islet.TCP's while
  # this process was not running) whose owner died with data queued: the
  # NIF made this process its owner (the socket monitors it) and leaves it
  # to be drained and closed.
  # An owner or waiter of a socket died while a dirty scheduler held the
  # socket's lock for long (a costly handshake step): its down callback left
  # the death to this process, whose call waits for the lock on a dirty
  # scheduler rather than the callback's normal one.
  def handle_info({:"$islet_downs", socket}, state) when is_reference(socket) do
    Nif.deferred_downs(socket)
    {:noreply, state}
  end

  def handle_info({:"$islet_orphan", socket}, state) when is_reference(socket) do
    drain_and_close(socket)
    {:noreply, state}
  end

  # Anything else (this process must not crash: its exit would reach every
  # linked owner, as a port's crash reaches its own).
  def handle_info(_message, state), do: {:noreply, state}

  # The owner died with data queued: gen_tcp's port still writes its queue
  # out before it closes (ERTS keeps a closing port until the driver's queue
  # is empty). The socket answers every call as a closed one already; a
  # process of its own writes the queue out and closes it, as close/1 does
  # (giving up after 5 s without progress), so that this one never waits.
  # It owns the socket before it starts: whatever ends it closes the socket.
  defp drain_and_close(socket) do
    pid =
      spawn(fn ->
        receive do
          :owner -> :ok
        after
          5_000 -> :ok
        end

        Islet.Socket.close(socket)
      end)

    try do
      case Nif.adopt_orphan(socket, pid) do
        :ok ->
          Kernel.send(pid, :owner)

        # It is dead already (killed): the queue goes with the socket.
        {:error, :badarg} ->
          Nif.close(socket)

        # Closed meanwhile, or not a socket orphaned to this process (a
        # forged message): the process must not close it.
        {:error, _} ->
          Process.exit(pid, :kill)
      end
    rescue
      # Not a socket (a message that did not come from the NIF).
      ArgumentError -> Process.exit(pid, :kill)
    end
  end

  @impl GenServer
  def terminate(_reason, _state) do
    # The registered sockets get monitors; the owners must not die with
    # this process.
    Nif.owners_linker(:undefined)
    {:links, links} = Process.info(self(), :links)
    # Not the supervisor's link: without its exit signal it would never
    # restart this process.
    parent = parent()
    Enum.each(links, fn pid -> if pid != parent, do: Process.unlink(pid) end)
  end

  defp parent do
    case Process.get(:"$ancestors") do
      [pid | _] when is_pid(pid) -> pid
      [name | _] when is_atom(name) -> Process.whereis(name)
      _ -> nil
    end
  end
end

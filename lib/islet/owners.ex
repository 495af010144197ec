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
  would list the port while it is open).

  Listeners and Islet.TLS sockets are watched by a monitor from the socket
  instead, which closes them in the owner's exit itself. For a listener
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
    if not Process.alive?(pid), do: :ok = Nif.owners_down(pid)
    {:noreply, state}
  end

  # Anything else (this process must not crash: its exit would reach every
  # linked owner, as a port's crash reaches its own).
  def handle_info(_message, state), do: {:noreply, state}

  @impl GenServer
  def terminate(_reason, _state) do
    # The registered sockets get monitors; the owners must not die with
    # this process.
    Nif.owners_linker(:undefined)
    {:links, links} = Process.info(self(), :links)
    Enum.each(links, &Process.unlink/1)
  end
end

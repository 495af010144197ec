defmodule Islet.Nif do
  @moduledoc false
  # The C++ NIF (c_src/). Every function here is replaced when the library
  # loads; the Elixir modules around it do the waiting (see Islet.Socket).

  @on_load :load

  # load/0 calls Islet.Compat when the module is loaded, which the compiler
  # does as soon as it has built it: without this compile-time dependency,
  # a build where this module came first (Islet compiled as a dependency,
  # on a busy machine) logged the on_load's failure. (Not a `require`,
  # which newer Elixir reports unused.)
  Code.ensure_compiled!(Islet.Compat)

  @doc false
  def load do
    # ISLET_SANITIZE=1 loads the AddressSanitizer build (scripts/sanitize.sh),
    # ISLET_SANITIZE=thread the ThreadSanitizer one (scripts/tsan.sh).
    name =
      case System.get_env("ISLET_SANITIZE") do
        "1" -> ~c"islet_nif_asan"
        "thread" -> ~c"islet_nif_tsan"
        _ -> ~c"islet_nif"
      end

    # (A send after a sendfile the peer cut: enotconn before OTP 26's
    # gen_tcp, closed since. The default `buffer`: gen_tcp's. Alert 30's
    # name: :ssl's.)
    :erlang.load_nif(
      :filename.join(:code.priv_dir(:islet), name),
      {max_fds(), not Islet.Compat.gen_tcp26?(), Islet.Compat.default_buffer(),
       Islet.Compat.ssl_names_decompression_failure?()}
    )
  end

  # The largest fd the BEAM's poll sets take (fixed when the VM started):
  # enif_select fails above it, so sockets there are refused.
  defp max_fds do
    sets = List.wrap(:erlang.system_info(:check_io))
    limits = for set <- sets, is_list(set), {:max_fds, n} <- set, is_integer(n), do: n
    if limits == [], do: 0, else: Enum.min(limits)
  end

  defp nif, do: :erlang.nif_error(:islet_nif_not_loaded)

  def listen(_family, _address, _port, _opts), do: nif()
  def accept(_listener), do: nif()
  def recv(_socket, _length), do: nif()
  def send(_socket, _iodata), do: nif()
  def send_more(_socket), do: nif()
  def sendfile_open(_path), do: nif()
  def sendfile_size(_file), do: nif()
  def sendfile(_socket, _file, _offset, _count), do: nif()
  def cancel(_socket, _direction), do: nif()
  def close(_socket), do: nif()
  def send_timeout_close(_socket), do: nif()
  def ktls(_socket), do: nif()
  def kernel_tls, do: nif()
  def send_timeout_keep(_socket, _iodata), do: nif()
  def drain(_socket), do: nif()
  def flush_bg(_socket), do: nif()
  def shutdown(_socket, _how), do: nif()
  # Tests only: :locked, :sending_file (without the lock) or :free, now.
  def lock_probe(_socket), do: nif()
  # Tests only: the most bytes one call on a normal scheduler wrote (TCP).
  def largest_write(_socket), do: nif()
  # Tests only: socket resources not destroyed yet.
  def live_sockets, do: nif()
  def is_listener(_socket), do: nif()
  def controlling_process(_socket, _pid), do: nif()
  def set_owner(_socket, _pid, _active), do: nif()
  def adopt_orphan(_socket, _pid), do: nif()
  def set_active(_socket, _value), do: nif()
  def owners_down(_pid), do: nif()
  # Islet.Owners: the deaths a socket's down callback left while a dirty
  # scheduler held its lock.
  def deferred_downs(_socket), do: nif()
  def owners_linker(_pid_or_undefined), do: nif()
  def setopts(_socket, _opts), do: nif()
  def getopts(_socket, _keys), do: nif()
  def getstat(_socket), do: nif()
  def sockname(_socket), do: nif()
  def peername(_socket), do: nif()
  def register_pump(_index, _pid), do: nif()
  def pump_poll(_index), do: nif()
  def tls_ctx(_opts), do: nif()
  def tls_listener(_listener, _ctx), do: nif()
  def tls_upgrade_pause(_socket), do: nif()
  def tls_upgrade(_socket, _ctx), do: nif()
  def tls_set_ctx(_socket, _ctx), do: nif()
  def tls_verify_failed(_socket, _alert), do: nif()
  def tls_handshake(_socket), do: nif()
  def tls_linger(_socket), do: nif()
  def tls_info(_socket), do: nif()
  def tls_sweep, do: nif()
end

defmodule Islet.Compat do
  @moduledoc """
  What the running OTP's `gen_tcp` and `:ssl` do where releases differ and
  Islet follows them. Where the release that changed is known, the answer
  comes from the version (`gen_tcp26?/0`, `ssl11?/0`,
  `ssl_send_bad_data_closed?/0`); where it is not, from asking `gen_tcp` or
  `:ssl` itself, once per VM, the answer then kept in `:persistent_term`
  (`unix_accept_copies_reuseaddr?/0`, `default_buffer/0`,
  `ssl_listen_checks_files?/0`, `ssl_checks_ca_sigs_for_verify_fun?/0`,
  `ssl_listen_keeps_order?/0`, `ssl_dh_needs_tls12?/0`,
  `ssl_signature_schemes/0`, `ssl_names_decompression_failure?/0`).
  """

  @unix_reuseaddr_key {__MODULE__, :unix_accept_copies_reuseaddr}
  @default_buffer_key {__MODULE__, :default_buffer}
  @listen_checks_files_key {__MODULE__, :ssl_listen_checks_files}
  @ca_sigs_key {__MODULE__, :ssl_checks_ca_sigs_for_verify_fun}
  @ssl_listen_order_key {__MODULE__, :ssl_listen_keeps_order}
  @dh_needs_tls12_key {__MODULE__, :ssl_dh_needs_tls12}
  @schemes_key {__MODULE__, :ssl_signature_schemes}
  @decompression_failure_key {__MODULE__, :ssl_names_decompression_failure}

  @doc """
  Whether the running `gen_tcp` sends as OTP 26 made it send
  (erlang/otp#7130): the data goes to the port behind a header, so a bare
  byte (`send(s, 42)`) is data and not `einval`, and a send after a
  `sendfile` the peer cut short says `closed` again (OTP 25: `enotconn`).
  (Checked against OTP 25 and 27.)
  """
  @spec gen_tcp26?() :: boolean()
  def gen_tcp26? do
    :erlang.system_info(:otp_release) |> List.to_integer() >= 26
  end

  @doc """
  Whether the running `:ssl` is ssl 11 (OTP 26) or later, which checks
  options and client certificates differently from ssl 10 (OTP 25): what
  Islet.TLS follows for each is written where it is followed. (Of OTP 26
  and later, only OTP 27's ssl 11.2 has been checked against.)
  """
  @spec ssl11?() :: boolean()
  def ssl11?, do: ssl_version() >= [11]

  @doc """
  Whether the running `:ssl` gives `:ssl.send/2` data that is not iodata
  the answer `{:error, :closed}` (ssl 11.3, OTP 28, and later: its send
  catches the `badarg` of the iodata's conversion with those of a closed
  socket's lookups; checked against ssl 11.7.8, OTP 29) rather than
  raising `ArgumentError` (ssl 11.2, OTP 27, and earlier).
  """
  @spec ssl_send_bad_data_closed?() :: boolean()
  def ssl_send_bad_data_closed?, do: ssl_version() >= [11, 3]

  @doc """
  Whether `:ssl.listen/2` hands its TCP options to `gen_tcp` in the order
  given, so that a list's watermarks end as with `gen_tcp` (`[high_watermark:
  1000, low_watermark: 2000]` gives 1000/1000, as on OTP 29), rather than
  reversed (2000/2000, OTP 25 and 27). (`:ssl.setopts/2` applies them first
  to last on each.) Asked of an `:ssl` listener on loopback, which needs no
  certificate; `false` if the question cannot be asked here.
  """
  @spec ssl_listen_keeps_order?() :: boolean()
  def ssl_listen_keeps_order?,
    do: remembered(@ssl_listen_order_key, &probe_ssl_listen_order/0)

  @doc """
  Whether the running `:ssl.listen/2` refuses DH parameters (`dh`, or a
  `dhfile` of a valid form) when its `versions` leave no TLS 1.2 or older
  to use them: `{:options, :incompatible, [:dh, {:versions, versions}]}`
  (`:dh_file` for a dhfile), as ssl 11.7.8 (OTP 29) does; OTP 25's and
  27's take them. Asked of an `:ssl` listener on loopback; `false` if the
  question cannot be asked here.
  """
  @spec ssl_dh_needs_tls12?() :: boolean()
  def ssl_dh_needs_tls12?, do: remembered(@dh_needs_tls12_key, &probe_dh_needs_tls12/0)

  @doc """
  The signature schemes (TLS 1.3 names) the running `:ssl` knows, as
  `:ssl.signature_algs(:all, :"tlsv1.3")` lists them (OTP 26+; `[]` on OTP
  25, which has no such function): OTP 29's adds ML-DSA and SLH-DSA. Asked
  once per VM.
  """
  @spec ssl_signature_schemes() :: [atom()]
  def ssl_signature_schemes, do: remembered(@schemes_key, &probe_schemes/0)

  defp probe_schemes do
    if Code.ensure_loaded?(:ssl) and function_exported?(:ssl, :signature_algs, 2),
      # (apply: OTP 25's :ssl has no signature_algs/2 to compile against)
      do: for(s <- apply(:ssl, :signature_algs, [:all, :"tlsv1.3"]), is_atom(s), do: s),
      else: []
  end

  # The running ssl application's version as integers ([] if not loaded):
  # lists compare element by element, so [11, 7, 8] >= [11, 3].
  defp ssl_version do
    case Application.spec(:ssl, :vsn) do
      nil ->
        []

      vsn ->
        vsn
        |> to_string()
        |> String.split(".")
        |> Enum.map(&(Integer.parse(&1) |> elem(0)))
    end
  end

  @doc """
  Whether the running `:ssl`, given a `verify_fun`, checks the signature
  algorithm of each CA certificate of the client's chain (the `valid`
  events) before the function sees it, as it checks the peer's (refused:
  the function sees `{bad_cert, unsupported_signature}`). ssl 11.7.8 (OTP
  29) does, in `ssl_handshake:tls_verify_fun/4`; ssl 10 (OTP 25) and 11.2
  (OTP 27) pass the event on unchecked. Which release between changed it
  is not known here, so `ssl_handshake` is asked whether it has that
  function (once per VM).
  """
  @spec ssl_checks_ca_sigs_for_verify_fun?() :: boolean()
  def ssl_checks_ca_sigs_for_verify_fun?,
    do: remembered(@ca_sigs_key, &probe_ca_sigs/0)

  defp probe_ca_sigs do
    Code.ensure_loaded?(:ssl_handshake) and
      {:tls_verify_fun, 4} in :ssl_handshake.module_info(:functions)
  end

  @doc """
  Whether the running `:ssl` names alert 30 `decompression_failure` (ssl
  10, OTP 25) in the `{:tls_alert, {name, text}}` it reports, rather than
  `:"unsupported/unknown_alert"` (OTP 27 and 29 dropped the name). Asked of
  `ssl_alert`'s atom table, once per VM; `false` if it cannot be read.
  """
  @spec ssl_names_decompression_failure?() :: boolean()
  def ssl_names_decompression_failure?,
    do: remembered(@decompression_failure_key, &probe_decompression_failure/0)

  defp probe_decompression_failure do
    with path when is_list(path) <- :code.which(:ssl_alert),
         {:ok, {_, [atoms: atoms]}} <- :beam_lib.chunks(path, [:atoms]) do
      Enum.any?(atoms, fn {_, atom} -> atom == :decompression_failure end)
    else
      _ -> false
    end
  end

  @doc """
  Whether `gen_tcp:accept/1` gives a connection on a Unix-domain listener
  the listener's `reuseaddr` (OTP 27 does; OTP 25 does not, and the kernel
  never does for AF_UNIX). `false` if the question cannot be asked here.
  """
  @spec unix_accept_copies_reuseaddr?() :: boolean()
  def unix_accept_copies_reuseaddr?,
    do: remembered(@unix_reuseaddr_key, &probe_unix_reuseaddr/0)

  @doc """
  The user-level `buffer` a new gen_tcp socket reports when given neither
  `buffer` nor a larger `recbuf`: 1460 before OTP 28, 9216 on OTP 29 (OTP
  28 raised it, erlang/otp#9507). Asked of a gen_tcp listener on loopback;
  1460 if the question cannot be asked here.
  """
  @spec default_buffer() :: pos_integer()
  def default_buffer, do: remembered(@default_buffer_key, &probe_default_buffer/0)

  @doc """
  Whether the running `:ssl.listen/2` reads the certificate, key, CA and DH
  files it is given and refuses to listen when one is missing or unusable
  (`{:error, {:options, {:certfile, {path, :enoent}}}}` and the like), as
  OTP 29's ssl 11.7.8 does (erlang/otp#10046, merged in July 2025, after
  OTP 28.0: the first release with it is not known here). OTP 25's and 27's
  `:ssl` listen, and each handshake fails with the load error. Asked
  of `:ssl.listen/2` with a certificate file that does not exist; `false` if
  the question cannot be asked here.
  """
  @spec ssl_listen_checks_files?() :: boolean()
  def ssl_listen_checks_files?,
    do: remembered(@listen_checks_files_key, &probe_listen_checks_files/0)

  # An answer asked once per VM and kept.
  defp remembered(key, ask) do
    case :persistent_term.get(key, nil) do
      nil ->
        answer = ask.()
        :persistent_term.put(key, answer)
        answer

      answer ->
        answer
    end
  end

  defp probe_default_buffer do
    case :gen_tcp.listen(0, ip: {127, 0, 0, 1}) do
      {:ok, l} ->
        answer = :inet.getopts(l, [:buffer])
        :gen_tcp.close(l)

        case answer do
          {:ok, [buffer: n]} when is_integer(n) and n > 0 -> n
          _ -> 1460
        end

      {:error, _} ->
        1460
    end
  end

  defp probe_listen_checks_files do
    dir = System.tmp_dir() || "/tmp"
    # A directory that is never created: neither file can exist.
    missing = Path.join([dir, "islet_probe_#{System.unique_integer([:positive])}", "none.pem"])

    ask_ssl_listen(
      [certfile: missing, keyfile: missing],
      fn _listener -> false end,
      &match?({:options, {:certfile, {_path, :enoent}}}, &1)
    )
  end

  defp probe_ssl_listen_order do
    ask_ssl_listen(
      [high_watermark: 1000, low_watermark: 2000],
      &(:ssl.getopts(&1, [:high_watermark]) == {:ok, [high_watermark: 1000]}),
      fn _reason -> false end
    )
  end

  defp probe_dh_needs_tls12 do
    ask_ssl_listen(
      [versions: [:"tlsv1.3"], dh: <<0>>],
      fn _listener -> false end,
      &match?({:options, :incompatible, [:dh | _]}, &1)
    )
  end

  # What :ssl.listen/2 makes of `opts` on loopback: `listening` is given the
  # listener (closed afterwards), `refused` the reason of an error.
  defp ask_ssl_listen(opts, listening, refused) do
    case :ssl.listen(0, [ip: {127, 0, 0, 1}] ++ opts) do
      {:ok, l} ->
        try do
          listening.(l)
        after
          :ssl.close(l)
        end

      {:error, reason} ->
        refused.(reason)
    end
  end

  defp probe_unix_reuseaddr do
    dir = System.tmp_dir() || "/tmp"
    path = Path.join(dir, "islet_probe_#{System.unique_integer([:positive])}.sock")
    opts = [:binary, active: false]

    # Every socket opened is closed, whichever step fails.
    opened = fn
      {:ok, socket}, sockets -> {:ok, socket, [socket | sockets]}
      error, sockets -> {error, sockets}
    end

    {answer, sockets} =
      with {:ok, l, ss} <-
             opened.(:gen_tcp.listen(0, [ip: {:local, path}, reuseaddr: true] ++ opts), []),
           {:ok, _c, ss} <- opened.(:gen_tcp.connect({:local, path}, 0, opts, 1_000), ss),
           {:ok, s, ss} <- opened.(:gen_tcp.accept(l, 1_000), ss) do
        {:inet.getopts(s, [:reuseaddr]) == {:ok, [reuseaddr: true]}, ss}
      else
        {_error, ss} -> {false, ss}
      end

    Enum.each(sockets, &:gen_tcp.close/1)
    File.rm(path)
    answer
  end
end

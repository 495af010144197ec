defmodule Islet.Test.Certs do
  @moduledoc """
  Test certificates, generated at test time with the `openssl` command-line
  tool into a temporary directory (never checked in), once per test run.

    * `ca`: the test CA (RSA-2048), which signs the certificates below;
    * `server_rsa`: a server certificate for "localhost" (and 127.0.0.1), RSA-2048;
    * `server_ec`: the same with an ECDSA P-256 key;
    * `sni`: a server certificate for "sni.test" (SNI tests);
    * `client`: a client certificate signed by the CA (ECDSA P-256);
    * `client_expired`: a client certificate, same key, valid only in 2020;
    * `other_ca` and `other_client`: a second CA and a client certificate it signed;
    * `inter`: an intermediate CA signed by `ca`, and `inter_client` a client
      certificate it signed (`file(:ca_inter, :cert)` holds `inter` then `ca`);
    * `inter_any`: an intermediate CA whose extended key usage is server
      authentication and any purpose, and `inter_any_client` a client
      certificate it signed (`file(:ca_inter_any, :cert)`: `inter_any`, `ca`);
    * `self_client`: a self-signed client certificate;
    * `client_sha1`: a client certificate the CA signed with SHA-1, and
      `server_rsa1024` a server certificate with an RSA-1024 key (both
      weaker than OpenSSL's usual security level allows, as `:ssl` takes
      them);
    * `client_md5`, `client_sha224`, `client_pss`: client certificates the
      CA signed with MD5, SHA-224 and RSASSA-PSS (SHA-256);
    * `server_rsa_enc`: `server_rsa`'s key, PKCS#8 encrypted (AES-256)
      with the password `password/0`.

  `file(name, :cert | :key)` gives a PEM path, `der(name)` the certificate's
  DER, `key_der(name)` the key as `:ssl` takes it (`{type, der}`).
  """

  @password "islet-test-pass"

  @doc "The password of the encrypted key."
  @spec password() :: String.t()
  def password, do: @password

  @doc "The directory holding the generated files (generated on first call)."
  @spec dir() :: String.t()
  def dir do
    case :persistent_term.get({__MODULE__, :dir}, nil) do
      nil ->
        :global.trans({{__MODULE__, :generate}, self()}, fn ->
          case :persistent_term.get({__MODULE__, :dir}, nil) do
            nil ->
              dir = generate()
              :persistent_term.put({__MODULE__, :dir}, dir)
              dir

            dir ->
              dir
          end
        end)

      dir ->
        dir
    end
  end

  @doc "Path of the PEM file for `name`'s certificate (`:cert`) or key (`:key`)."
  @spec file(atom(), :cert | :key) :: String.t()
  def file(name, :cert), do: Path.join(dir(), "#{name}.pem")
  def file(:server_rsa_enc, :key), do: Path.join(dir(), "server_rsa_enc.key")
  def file(:client_expired, :key), do: file(:client, :key)
  def file(name, :key), do: Path.join(dir(), "#{name}.key")

  @doc "The DER of `name`'s certificate."
  @spec der(atom()) :: binary()
  def der(name) do
    [{:Certificate, der, _} | _] = name |> file(:cert) |> File.read!() |> :public_key.pem_decode()
    der
  end

  @doc "`name`'s private key as `:ssl`'s `key` option takes it: `{type, der}`."
  @spec key_der(atom()) :: {atom(), binary()}
  def key_der(name) do
    [{type, der, :not_encrypted} | _] =
      name |> file(:key) |> File.read!() |> :public_key.pem_decode()

    {type, der}
  end

  @doc "Server options with certfile/keyfile for `name` (default `:server_rsa`)."
  @spec server_opts(atom()) :: keyword()
  def server_opts(name \\ :server_rsa),
    do: [certfile: file(name, :cert), keyfile: file(name, :key)]

  @doc """
  Client options for `:ssl.connect/3`: verifies the server against the CA,
  for the host name "localhost". Automatic session reuse is off (the
  client cache is keyed by host and port, and ports come back from one
  test to the next); the resumption tests turn it on.
  """
  @spec client_opts() :: keyword()
  def client_opts do
    [
      verify: :verify_peer,
      cacertfile: file(:ca, :cert),
      server_name_indication: ~c"localhost",
      reuse_sessions: false,
      mode: :binary,
      active: false
    ]
  end

  @doc """
  Server options that require a client certificate from the test CA, with
  `version` only; `extra` after them.
  """
  @spec require_client_cert(atom(), keyword()) :: keyword()
  def require_client_cert(version, extra) do
    [verify: :verify_peer, fail_if_no_peer_cert: true, cacertfile: file(:ca, :cert)] ++
      [versions: [version]] ++ extra
  end

  @doc "Client options presenting the certificate `name` (and its key)."
  @spec client_cert_opts(atom()) :: keyword()
  def client_cert_opts(name), do: [certfile: file(name, :cert), keyfile: file(name, :key)]

  ## Generation

  # The `openssl req` and `openssl ca` sections of a configuration (the
  # extension sections go between them): `openssl ca` in the current
  # directory, with its index.txt and serial files.
  @req_conf """
  [ req ]
  distinguished_name = dn
  prompt = no
  [ dn ]
  CN = unused
  """
  @ca_sections """
  [ ca ]
  default_ca = ca_default
  [ ca_default ]
  database = index.txt
  new_certs_dir = .
  serial = serial
  default_md = sha256
  policy = policy_any
  unique_subject = no
  copy_extensions = none
  [ policy_any ]
  commonName = supplied
  """

  @doc "An `openssl req`/`openssl ca` configuration with `extensions` (its sections)."
  @spec openssl_conf(String.t()) :: String.t()
  def openssl_conf(extensions), do: @req_conf <> extensions <> @ca_sections

  @ca_extensions """
  [ v3_ca ]
  basicConstraints = critical, CA:TRUE
  keyUsage = critical, keyCertSign, cRLSign
  subjectKeyIdentifier = hash
  [ server ]
  basicConstraints = critical, CA:FALSE
  keyUsage = critical, digitalSignature, keyEncipherment
  extendedKeyUsage = serverAuth
  subjectAltName = DNS:localhost, IP:127.0.0.1
  authorityKeyIdentifier = keyid
  [ sni ]
  basicConstraints = critical, CA:FALSE
  keyUsage = critical, digitalSignature, keyEncipherment
  extendedKeyUsage = serverAuth
  subjectAltName = DNS:sni.test
  authorityKeyIdentifier = keyid
  [ client ]
  basicConstraints = critical, CA:FALSE
  keyUsage = critical, digitalSignature
  extendedKeyUsage = clientAuth
  authorityKeyIdentifier = keyid
  [ v3_inter ]
  basicConstraints = critical, CA:TRUE
  keyUsage = critical, keyCertSign, cRLSign
  subjectKeyIdentifier = hash
  authorityKeyIdentifier = keyid
  [ v3_inter_any ]
  basicConstraints = critical, CA:TRUE
  keyUsage = critical, keyCertSign, cRLSign
  extendedKeyUsage = serverAuth, anyExtendedKeyUsage
  subjectKeyIdentifier = hash
  authorityKeyIdentifier = keyid
  [ client_self ]
  basicConstraints = critical, CA:FALSE
  keyUsage = critical, digitalSignature
  extendedKeyUsage = clientAuth
  """

  defp generate do
    name = "islet_certs_#{System.pid()}_#{System.unique_integer([:positive])}"
    dir = Path.join(System.tmp_dir!(), name)
    File.rm_rf!(dir)
    File.mkdir_p!(dir)
    System.at_exit(fn _ -> File.rm_rf(dir) end)
    File.write!(Path.join(dir, "openssl.cnf"), openssl_conf(@ca_extensions))
    File.write!(Path.join(dir, "index.txt"), "")
    File.write!(Path.join(dir, "serial"), "1000\n")

    ca(dir, "ca", "Islet Test CA")
    ca(dir, "other_ca", "Islet Other CA")
    leaf(dir, "server_rsa", "localhost", "rsa", "ca", "server")
    leaf(dir, "server_ec", "localhost", "ec", "ca", "server")
    leaf(dir, "sni", "sni.test", "ec", "ca", "sni")
    leaf(dir, "client", "islet-client", "ec", "ca", "client")
    leaf(dir, "other_client", "islet-other-client", "ec", "other_ca", "client")
    leaf(dir, "inter", "Islet Test Intermediate", "ec", "ca", "v3_inter")
    leaf(dir, "inter_client", "islet-inter-client", "ec", "inter", "client")
    leaf(dir, "client_sha1", "islet-client-sha1", "ec", "ca", "client", "sha1")
    leaf(dir, "client_md5", "islet-client-md5", "ec", "ca", "client", "md5")
    leaf(dir, "client_sha224", "islet-client-sha224", "ec", "ca", "client", "sha224")
    leaf(dir, "client_pss", "islet-client-pss", "ec", "ca", "client", "pss")
    leaf(dir, "server_rsa1024", "localhost", "rsa1024", "ca", "server")
    File.write!(Path.join(dir, "ca_inter.pem"), [pem!(dir, "inter"), pem!(dir, "ca")])
    leaf(dir, "inter_any", "Islet Any-Purpose Intermediate", "ec", "ca", "v3_inter_any")
    leaf(dir, "inter_any_client", "islet-inter-any-client", "ec", "inter_any", "client")
    File.write!(Path.join(dir, "ca_inter_any.pem"), [pem!(dir, "inter_any"), pem!(dir, "ca")])
    genkey(dir, "self_client", "ec")

    openssl!(
      dir,
      ["req", "-config", "openssl.cnf", "-new", "-x509", "-key", "self_client.key"] ++
        ["-subj", "/CN=islet-self-client", "-extensions", "client_self", "-days", "30"] ++
        ["-sha256", "-out", "self_client.pem"]
    )

    openssl!(dir, [
      "ca",
      "-batch",
      "-config",
      "openssl.cnf",
      "-in",
      "client.csr",
      "-cert",
      "ca.pem",
      "-keyfile",
      "ca.key",
      "-extensions",
      "client",
      "-startdate",
      "20200101000000Z",
      "-enddate",
      "20200102000000Z",
      "-notext",
      "-out",
      "client_expired.pem"
    ])

    openssl!(dir, [
      "pkey",
      "-in",
      "server_rsa.key",
      "-aes256",
      "-passout",
      "pass:" <> @password,
      "-out",
      "server_rsa_enc.key"
    ])

    dir
  end

  defp ca(dir, name, cn) do
    genkey(dir, name, "rsa")

    openssl!(dir, [
      "req",
      "-config",
      "openssl.cnf",
      "-new",
      "-x509",
      "-key",
      name <> ".key",
      "-subj",
      "/CN=" <> cn,
      "-extensions",
      "v3_ca",
      "-days",
      "30",
      "-sha256",
      "-out",
      name <> ".pem"
    ])
  end

  defp leaf(dir, name, cn, kind, ca, extensions, digest \\ "sha256") do
    genkey(dir, name, kind)

    openssl!(dir, [
      "req",
      "-config",
      "openssl.cnf",
      "-new",
      "-key",
      name <> ".key",
      "-subj",
      "/CN=" <> cn,
      "-out",
      name <> ".csr"
    ])

    openssl!(
      dir,
      [
        "x509",
        "-req",
        "-in",
        name <> ".csr",
        "-CA",
        ca <> ".pem",
        "-CAkey",
        ca <> ".key",
        "-CAcreateserial",
        "-extfile",
        "openssl.cnf",
        "-extensions",
        extensions,
        "-days",
        "30"
      ] ++ sign_args(digest) ++ ["-out", name <> ".pem"]
    )
  end

  # How the CA signs: with a digest, or RSASSA-PSS with SHA-256.
  defp sign_args("pss"),
    do: ["-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]

  defp sign_args(digest), do: ["-" <> digest]

  defp genkey(dir, name, "rsa"), do: rsa_key(dir, name, 2048)
  defp genkey(dir, name, "rsa1024"), do: rsa_key(dir, name, 1024)

  defp genkey(dir, name, "ec") do
    openssl!(
      dir,
      ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"] ++
        ["-out", name <> ".key"]
    )
  end

  defp rsa_key(dir, name, bits) do
    openssl!(
      dir,
      ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:#{bits}"] ++
        ["-out", name <> ".key"]
    )
  end

  defp pem!(dir, name), do: File.read!(Path.join(dir, name <> ".pem"))

  defp openssl!(dir, args) do
    case System.cmd("openssl", args, cd: dir, stderr_to_stdout: true) do
      {_, 0} -> :ok
      {out, status} -> raise "openssl #{Enum.join(args, " ")} failed (#{status}): #{out}"
    end
  end
end

defmodule Islet.Test.TLSDiff do
  @moduledoc """
  Differential testing of `Islet.TLS` against `Islet.Reference.SSL` (`:ssl`),
  built on `Islet.Test.Diff.run_one/3`: each scenario runs in a fresh process,
  once per module; results are normalized (named sockets, `:sock` for other
  ports and references) and, in addition, TLS alerts lose their description
  text (`{:tls_alert, {reason, _}}` becomes `{:tls_alert, reason}`) and pids
  become `:pid`.

  Clients are `:ssl` clients over loopback, verifying the server against
  the test CA for "localhost" unless told otherwise.
  """

  import ExUnit.Assertions

  alias Islet.Test.{Certs, Diff}

  @reference Islet.Reference.SSL

  @doc "The module compared with the reference (the reference itself with ISLET_DIFF_SELF=1)."
  @spec subject() :: module()
  def subject do
    if System.get_env("ISLET_DIFF_SELF") in [nil, "", "0"], do: Islet.TLS, else: @reference
  end

  @doc "Both modules, reference first, as `{label, module}` pairs."
  @spec modules() :: [{atom(), module()}]
  def modules, do: [ssl: @reference, islet: subject()]

  @doc "Runs `scenario` with both modules: `{ssl_result, islet_result}`, normalized."
  @spec run((module() -> term()), keyword()) :: {term(), term()}
  def run(scenario, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, 30_000)

    {tidy(Diff.run_one(@reference, scenario, timeout)),
     tidy(Diff.run_one(subject(), scenario, timeout))}
  end

  @doc "Asserts that `scenario` gives the same normalized result on both modules; returns it."
  defmacro assert_same(scenario, opts \\ []) do
    quote do
      {ssl, islet} = Islet.Test.TLSDiff.run(unquote(scenario), unquote(opts))
      Islet.Test.Diff.scenario_ran!(ssl, islet)

      if islet != ssl do
        flunk(Islet.Test.TLSDiff.report(ssl, islet))
      end

      ssl
    end
  end

  @doc "Describes how two results differ."
  @spec report(term(), term()) :: String.t()
  def report(ssl, islet) do
    lines =
      for {path, s, i} <- Diff.differences(ssl, islet, []) do
        "  at #{inspect(path)}:\n    ssl:   #{inspect(s, limit: 30)}\n    islet: #{inspect(i, limit: 30)}"
      end

    "Islet.TLS differs from :ssl\n" <> Enum.join(lines, "\n")
  end

  @doc "Drops alert descriptions and pids (what differs between any two TLS stacks)."
  @spec tidy(term()) :: term()
  def tidy({:tls_alert, {reason, _description}}) when is_atom(reason), do: {:tls_alert, reason}
  def tidy(pid) when is_pid(pid), do: :pid
  def tidy(list) when is_list(list), do: tidy_list(list)

  def tidy(tuple) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> Enum.map(&tidy/1) |> List.to_tuple()

  def tidy(%{} = map) when not is_struct(map), do: Map.new(map, fn {k, v} -> {k, tidy(v)} end)
  def tidy(term), do: term

  defp tidy_list([]), do: []
  defp tidy_list([h | t]) when is_list(t), do: [tidy(h) | tidy_list(t)]
  defp tidy_list([h | t]), do: [tidy(h) | tidy(t)]

  ## Helpers for scenarios (they run inside the scenario's process).

  @doc """
  Listens with `module` on loopback port 0 with the RSA "localhost"
  certificate; `opts` come first, so they win. Names the listener.
  """
  @spec listen(module(), keyword()) :: term()
  def listen(module, opts \\ []) do
    {:ok, l} = module.listen(0, opts ++ [ip: :loopback] ++ Certs.server_opts())
    Diff.name(l, :listener)
  end

  @doc "The port `listener` is bound to."
  @spec port(module(), term()) :: :inet.port_number()
  def port(module, listener) do
    {:ok, {_ip, port}} = module.sockname(listener)
    port
  end

  @doc """
  Starts an `:ssl` client connecting to `port` in another process (its
  handshake needs the server's); `await_client/1` gives `:ssl.connect`'s
  result, the socket then owned by the caller. `client_opts` come first.
  """
  @spec connect_async(:inet.port_number(), keyword()) :: reference()
  def connect_async(port, client_opts \\ []) do
    parent = self()
    tag = make_ref()
    opts = Keyword.merge(Certs.client_opts(), client_opts)
    # reuse_sessions is a TLS 1.2 option: :ssl refuses it for a 1.3-only client.
    opts =
      if opts[:versions] == [:"tlsv1.3"], do: Keyword.delete(opts, :reuse_sessions), else: opts

    host = Keyword.get(opts, :host, ~c"localhost")
    opts = Keyword.delete(opts, :host)

    spawn(fn ->
      case :ssl.connect(host, port, opts, 30_000) do
        {:ok, c} ->
          # Fails only when the server has already closed the connection;
          # the caller then learns it from its own calls.
          _ = :ssl.controlling_process(c, parent)
          # What :ssl sent the owner before the hand-over (TLS 1.3 session
          # tickets with session_tickets: :manual) goes to the new owner.
          forward_mailbox(parent)
          Kernel.send(parent, {tag, {:ok, c}})

        other ->
          Kernel.send(parent, {tag, other})
      end
    end)

    tag
  end

  defp forward_mailbox(pid) do
    receive do
      msg ->
        Kernel.send(pid, msg)
        forward_mailbox(pid)
    after
      0 -> :ok
    end
  end

  @doc "The result of a `connect_async/2` (the client socket is named `:client`)."
  @spec await_client(reference()) :: term()
  def await_client(tag) do
    receive do
      {^tag, {:ok, c}} -> {:ok, Diff.name(c, :client)}
      {^tag, other} -> other
    after
      40_000 -> {:error, :client_hang}
    end
  end

  @doc """
  Listens (with `server_opts`), connects an `:ssl` client (with
  `client_opts`), accepts and hands shake. Returns `%{listener, server,
  client, handshake, connect}`: `server` is the socket `accept` gave,
  `handshake` and `connect` the two sides' results.
  """
  @spec pair(module(), keyword(), keyword()) :: map()
  def pair(module, server_opts \\ [], client_opts \\ []) do
    l = listen(module, server_opts)
    tag = connect_async(port(module, l), client_opts)
    {:ok, s} = module.accept(l)
    Diff.name(s, :server)
    hs = module.handshake(s, 30_000)
    connect = await_client(tag)
    client = with {:ok, c} <- connect, do: c

    %{listener: l, server: s, client: client, handshake: hs, connect: connect}
  end

  @doc """
  A client-certificate scenario's outcome: `pair/3`, then `{handshake,
  client, messages}`, where `client` is `{:exchanged, recv, peer}` when
  both sides got through (the client sent "ping"; `peer` is `peer_view`
  applied to the server's `peercert` answer), `:refused_at_read` when
  only the client did and its first read failed (the alert, or `:closed`
  if its connection process ended on it first: a race of the client's
  own), or `{:refused_at_connect, reason}`.
  """
  @spec verify_outcome(module(), keyword(), keyword(), (term() -> term())) :: tuple()
  def verify_outcome(mod, server_opts, client_opts, peer_view) do
    %{server: s, handshake: hs, connect: connect} = pair(mod, server_opts, client_opts)

    client =
      case {hs, connect} do
        {{:ok, _}, {:ok, c}} ->
          :ok = :ssl.send(c, "ping")
          got = mod.recv(s, 4, 10_000)
          {:exchanged, got, peer_view.(mod.peercert(s))}

        {_, {:ok, c}} ->
          case :ssl.recv(c, 0, 10_000) do
            {:error, _} -> :refused_at_read
            other -> other
          end

        {_, {:error, reason}} ->
          {:refused_at_connect, tidy(reason)}
      end

    {hs, client, Diff.messages()}
  end

  @doc """
  Re-arms `active: :once` on `s` (a `module` socket) until `total` bytes of
  `{:ssl, s, data}` came; returns them, or `{:stuck, so_far}` after 3 s
  without a message.
  """
  @spec once_until(module(), term(), non_neg_integer(), binary()) :: binary() | {:stuck, binary()}
  def once_until(module, s, total, acc \\ "")
  def once_until(_module, _s, total, acc) when byte_size(acc) >= total, do: acc

  def once_until(module, s, total, acc) do
    :ok = module.setopts(s, active: :once)

    receive do
      {:ssl, ^s, data} -> once_until(module, s, total, acc <> IO.iodata_to_binary(data))
    after
      3_000 -> {:stuck, acc}
    end
  end

  @doc "Like `pair/3`, but asserts both sides succeeded; returns `{listener, server, client}`."
  @spec pair!(module(), keyword(), keyword()) :: {term(), term(), term()}
  def pair!(module, server_opts \\ [], client_opts \\ []) do
    %{listener: l, server: s, client: c, handshake: hs, connect: connect} =
      pair(module, server_opts, client_opts)

    {:ok, ^s} = hs
    {:ok, ^c} = connect
    {l, s, c}
  end

  @doc "Reads a passive socket with `fun.(socket, 0, timeout)` until an error: `{bytes, error}`."
  @spec read_to_end((term(), non_neg_integer(), timeout() -> term()), term(), timeout()) ::
          {binary(), term()}
  def read_to_end(recv, socket, timeout \\ 30_000), do: read_to_end(recv, socket, timeout, [])

  defp read_to_end(recv, socket, timeout, acc) do
    case recv.(socket, 0, timeout) do
      {:ok, data} -> read_to_end(recv, socket, timeout, [acc | data])
      other -> {IO.iodata_to_binary(acc), other}
    end
  end

  @doc "Receives exactly `n` bytes with `:ssl.recv/3` in pieces (any record size); `{:ok, bin}` or the error."
  @spec ssl_recv_exact(term(), non_neg_integer(), timeout()) :: {:ok, binary()} | {:error, term()}
  def ssl_recv_exact(socket, n, timeout \\ 30_000),
    do: recv_exact(&:ssl.recv/3, socket, n, timeout, [])

  @doc "Receives exactly `n` bytes with `module.recv(socket, 0, timeout)` in pieces."
  @spec mod_recv_exact(module(), term(), non_neg_integer(), timeout()) ::
          {:ok, binary()} | {:error, term()}
  def mod_recv_exact(module, socket, n, timeout \\ 30_000),
    do: recv_exact(&module.recv/3, socket, n, timeout, [])

  defp recv_exact(recv, socket, n, timeout, acc) do
    have = IO.iodata_length(acc)

    if have >= n do
      {:ok, IO.iodata_to_binary(acc)}
    else
      case recv.(socket, 0, timeout) do
        {:ok, data} -> recv_exact(recv, socket, n, timeout, [acc | data])
        error -> error
      end
    end
  end

  @doc "`Islet.Test.Diff.collect_active/4` for `:ssl`'s messages."
  @spec collect_active(term(), non_neg_integer(), timeout()) :: {binary(), [term()]}
  def collect_active(socket, bytes, timeout \\ 30_000),
    do: Diff.collect_active(socket, bytes, timeout, :ssl)

  @doc "`Islet.Test.Diff.active_messages/3` for `:ssl`'s messages."
  @spec active_messages(term(), timeout()) :: [term()]
  def active_messages(socket, wait \\ 0), do: Diff.active_messages(socket, wait, :ssl)

  @doc "`Islet.Test.Diff.await_message/3` for `:ssl`'s messages."
  @spec await_message(term(), timeout()) :: term()
  def await_message(socket, timeout \\ 30_000), do: Diff.await_message(socket, timeout, :ssl)

  @doc """
  Calls `request.(i)` (i from 0: the client sends something the server
  answers, then a byte "k") every millisecond or so until `pending.()` is
  above 0 (the server's socket is full and its answers wait), then `more`
  times again, and over if `pending.()` is back at 0 (`:ssl`'s TCP port
  can hold data for a moment before the socket is full); at most about
  `max` times in all. Returns how many calls were made. Filling the socket
  takes a few hundred calls with 4 KiB buffers, more when the server reads
  several requests at once (one answer for them).
  """
  @spec request_until_full(
          (non_neg_integer() -> any()),
          (() -> non_neg_integer()),
          non_neg_integer(),
          pos_integer()
        ) :: pos_integer()
  def request_until_full(request, pending, more, max \\ 5_000) do
    call = fn i ->
      request.(i)
      Process.sleep(1)
      i + 1
    end

    full = Enum.find(Stream.iterate(0, call), &(pending.() > 0 or &1 >= max))
    made = Enum.reduce(1..more//1, full, fn _, i -> call.(i) end)

    if pending.() > 0 or made >= max,
      do: made,
      else: request_until_full(&request.(&1 + made), pending, more, max - made) + made
  end

  @doc """
  Asserts that the Islet.TLS socket `s`, active, delivered `n` bytes "k" and
  no other message, and that what it answered the client without being
  read fits one small record waiting for the full socket (`send_pend`).
  """
  @spec assert_read_one_answer_waiting(term(), pos_integer(), [:inet.port_number()]) :: true
  def assert_read_one_answer_waiting(s, n, ports \\ []) do
    {got, others} = Diff.collect_active(s, n, 30_000, :ssl)

    if others != [] or byte_size(got) != n do
      # Whether what did not come was in the socket all along (a lost
      # wake-up of the socket's reader) or never came (the peer's side),
      # and where the kernel holds it: the TCP sockets on `ports` (the
      # proxy's and the server's), with their queues and timers.
      {:ok, stats} = Islet.TLS.getstat(s)
      late = Diff.collect_active(s, n - byte_size(got), 2_000, :ssl)
      :ok = Islet.TLS.setopts(s, active: false)
      passive = Islet.TLS.recv(s, 0, 2_000)

      flunk("""
      #{byte_size(got)} of #{n} bytes, then #{inspect(others)}; stats #{inspect(stats)}
      2 s later: #{inspect(late, limit: 8)}; passive recv then: #{inspect(passive, limit: 8)}
      #{tcp_sockets(ports)}
      """)
    end

    assert got == :binary.copy("k", n)
    {:ok, stats} = Islet.TLS.getstat(s)
    assert stats[:send_pend] in 1..100
  end

  # /proc/net/tcp's lines (local, remote, state, tx:rx queues, timer) of
  # the IPv4 sockets with a local or remote port among `ports`.
  defp tcp_sockets([]), do: ""

  defp tcp_sockets(ports) do
    hex = for p <- ports, do: ":" <> String.pad_leading(Integer.to_string(p, 16), 4, "0")

    "/proc/net/tcp (local remote st tx:rx tr:when retr):\n" <>
      (File.read!("/proc/net/tcp")
       |> String.split("\n")
       |> Enum.filter(fn line -> Enum.any?(hex, &String.contains?(line, &1 <> " ")) end)
       |> Enum.map_join("\n", &(&1 |> String.split() |> Enum.slice(1, 6) |> Enum.join(" "))))
  end
end

defmodule Islet.TCPConformanceTest do
  # Differential conformance, part 1: listen options, accept, addresses and
  # the callbacks that have nothing to do with data. Every scenario runs
  # against Islet.Reference.TCP (gen_tcp) and Islet.TCP; see Islet.Test.Diff.
  use ExUnit.Case, async: true

  import Islet.Test.Diff

  alias Islet.Test.Diff

  @opt_keys [
    :active,
    :mode,
    :packet,
    :nodelay,
    :reuseaddr,
    :keepalive,
    :linger,
    :buffer,
    :recbuf,
    :sndbuf,
    :send_timeout,
    :send_timeout_close,
    :exit_on_close,
    :high_watermark,
    :low_watermark,
    :delay_send,
    :packet_size,
    :high_msgq_watermark,
    :low_msgq_watermark,
    :header,
    :deliver,
    :show_econnreset,
    :tos,
    :priority,
    :ttl,
    :recvtos,
    :dontroute,
    :bind_to_device,
    # (multicast_if is left out: gen_tcp's answer is not the kernel's, see
    # "multicast options and pktoptions")
    :multicast_ttl,
    :multicast_loop,
    :pktoptions
  ]

  # Each option read on its own, so that one unsupported key cannot hide the others.
  defp opts_of(mod, sock, keys), do: Map.new(keys, &{&1, mod.getopts(sock, [&1])})

  defp addr({:ok, {:local, path}}), do: {:ok, {:local, Diff.name(path, :path)}}
  defp addr({:ok, {ip, port}}) when is_integer(port) and port > 0, do: {:ok, {ip, :port}}
  defp addr(other), do: other

  # Listens with `opts`, then checks the listener and one connection through it.
  defp listen_probe(mod, port \\ 0, opts, keys \\ @opt_keys) do
    case mod.listen(port, opts) do
      {:ok, l} ->
        Diff.name(l, :listener)
        c = Diff.connect(mod, l)
        {:ok, s} = mod.accept(l)
        :ok = :gen_tcp.send(c, "ping")
        got = mod.recv(s, 4, 10_000)
        # An iolist, not a binary: sending a plain binary is checked on its
        # own (see the I/O tests), here it must not hide the options.
        sent = mod.send(s, ["po", "ng"])
        back = :gen_tcp.recv(c, 4, 10_000)

        client_port =
          case :inet.sockname(c) do
            {:ok, {_, p}} when is_integer(p) -> p
            _ -> nil
          end

        peer =
          case mod.peername(s) do
            {:ok, {ip, ^client_port}} -> {:ok, {ip, :client_port}}
            other -> addr(other)
          end

        result = %{
          listener: %{sockname: addr(mod.sockname(l)), opts: opts_of(mod, l, keys)},
          conn: %{sockname: addr(mod.sockname(s)), peername: peer, opts: opts_of(mod, s, keys)},
          io: {got, sent, back}
        }

        :gen_tcp.close(c)
        mod.close(s)
        mod.close(l)
        result

      error ->
        error
    end
  end

  describe "listen: addresses" do
    test "default (no ip): all IPv4 interfaces" do
      assert_same(&listen_probe(&1, []))
    end

    test "ip: IPv4 tuple" do
      assert_same(&listen_probe(&1, ip: {127, 0, 0, 1}))
    end

    test "ip: :loopback and :any" do
      assert_same(&listen_probe(&1, ip: :loopback))
      assert_same(&listen_probe(&1, ip: :any))
    end

    test ":inet6 with ip IPv6 loopback tuple, :loopback and :any" do
      assert_same(&listen_probe(&1, [:inet6, ip: {0, 0, 0, 0, 0, 0, 0, 1}]))
      assert_same(&listen_probe(&1, [:inet6, ip: :loopback]))
      assert_same(&listen_probe(&1, [:inet6, ip: :any]))
      assert_same(&listen_probe(&1, [:inet6]))
    end

    test "several family atoms: the first one wins" do
      assert_same(&listen_probe(&1, [:inet, :inet6, ip: :any]))
      assert_same(&listen_probe(&1, [:inet6, :inet, ip: :loopback]))
      assert_same(&listen_probe(&1, [:inet, :inet6, ip: :loopback]))
      assert_same(&listen_probe(&1, [:inet6, :inet]))
      assert_same(&listen_probe(&1, [{:ip, {0, 0, 0, 0, 0, 0, 0, 1}}, :inet6, :inet]))
    end

    # A deliberate difference: gen_tcp crashes the caller (badarg) when the
    # family named does not fit the address; Islet answers {:error, :einval}.
    test "a family atom that does not fit the address" do
      for opts <- [
            [:inet, ip: {0, 0, 0, 0, 0, 0, 0, 1}],
            [{:ip, {0, 0, 0, 0, 0, 0, 0, 1}}, :inet],
            [:inet6, ip: {127, 0, 0, 1}],
            [:inet, ip: {:local, "/nonexistent/islet_fam"}],
            [:inet6, ip: {:local, "/nonexistent/islet_fam"}]
          ] do
        {gen_tcp, islet} = Diff.run(&Diff.catching(fn -> &1.listen(0, opts) end))
        assert gen_tcp == {:exit, :badarg}, inspect(opts)
        assert islet == {:error, :einval}, inspect(opts)
      end
    end

    test "IPv6 tuple without :inet6" do
      assert_same(&listen_probe(&1, ip: {0, 0, 0, 0, 0, 0, 0, 1}))
    end

    test "ifaddr is a synonym of ip" do
      assert_same(&listen_probe(&1, ifaddr: {127, 0, 0, 1}))
    end

    test "{:local, path} unix socket with port 0" do
      assert_same(fn mod ->
        path = Diff.name(Diff.tmp_path("islet_sock"), :path)
        result = listen_probe(mod, ip: {:local, path})
        {result, File.exists?(path) && File.rm(path)}
      end)
    end

    # A deliberate difference: gen_tcp crashes the caller on malformed
    # arguments; Islet answers {:error, :einval} (README, "Differences").
    test "{:local, path} with a port other than 0" do
      {gen_tcp, islet} =
        Diff.run(fn mod ->
          path = Diff.name(Diff.tmp_path("islet_sock"), :path)
          result = Diff.catching(fn -> mod.listen(4242, ip: {:local, path}) end)
          File.rm(path)
          result
        end)

      assert gen_tcp == {:raised, FunctionClauseError}
      assert islet == {:error, :einval}
    end

    # inet binds what the kernel takes: "" autobinds (an abstract name the
    # kernel picks), a path is read up to its first NUL, an abstract name may
    # fill sun_path's 108 bytes and a path may not (it needs its NUL).
    test "{:local, path}: empty, a NUL inside, abstract, and too long" do
      tmp = Diff.tmp_path("islet_nul")
      # (gen_tcp and Islet take the same path one after the other.)
      long = fn n -> tmp <> String.duplicate("b", n - byte_size(tmp)) end

      for path <-
            ["", tmp <> <<0, "x">>, <<0, "islet_abs">>, <<0>>, <<0>> <> long.(107)] ++
              [long.(107), long.(108), <<0>> <> long.(108), String.to_charlist(tmp)] do
        assert_same(fn mod ->
          result =
            case Diff.catching(fn -> mod.listen(0, ip: {:local, path}) end) do
              {:ok, l} ->
                c = Diff.connect(mod, l)
                {:ok, s} = mod.accept(l)

                name =
                  case mod.sockname(l) do
                    {:ok, {:local, <<0, auto::binary-size(5)>>}} when path == "" ->
                      {:autobind, auto =~ ~r/^[0-9a-f]{5}$/}

                    other ->
                      other
                  end

                :gen_tcp.close(c)
                {:ok, name, mod.close(s), mod.close(l)}

              other ->
                other
            end

          {result, File.rm(tmp), File.rm(long.(107))}
        end)
      end
    end

    test "{:local, path} as chardata, and a list that is not" do
      tmp = Diff.tmp_path("islet_chardata")

      for path <- [[tmp, ~c"x"], [-1], [:a], [0xD800]] do
        assert_same(fn mod ->
          result =
            case Diff.catching(fn -> mod.listen(0, ip: {:local, path}) end) do
              {:ok, l} -> {:ok, mod.sockname(l), mod.close(l)}
              other -> other
            end

          {result, File.rm(tmp <> "x")}
        end)
      end
    end

    test "an address that is not local" do
      assert_same(&listen_probe(&1, ip: {192, 0, 2, 1}))
    end

    test "a port in use, and the same port after the listener closed" do
      assert_same(fn mod ->
        {:ok, l} = mod.listen(0, ip: :loopback)
        port = Diff.port(mod, l)
        second = mod.listen(port, ip: :loopback)
        :ok = mod.close(l)
        third = mod.listen(port, ip: :loopback)
        {second, match?({:ok, _}, third)}
      end)
    end

    test "a fixed port: sockname gives it back" do
      assert_same(fn mod ->
        {:ok, l} = mod.listen(0, ip: :loopback)
        port = Diff.port(mod, l)
        :ok = mod.close(l)
        {:ok, l} = mod.listen(port, ip: :loopback)
        Diff.port(mod, l) == port
      end)
    end

    test "bad port numbers (gen_tcp exits, Islet answers einval)" do
      {gen_tcp, islet} =
        Diff.run(fn mod ->
          for port <- [-1, 65536], do: Diff.catching(fn -> mod.listen(port, []) end)
        end)

      assert gen_tcp == [exit: :badarg, exit: :badarg]
      assert islet == [error: :einval, error: :einval]
    end
  end

  describe "listen: options" do
    test "defaults and hard-coded options as Thousand Island merges them" do
      assert_same(&listen_probe(&1, ip: :loopback))
    end

    test "hard-coded mode/active win over the user's" do
      assert_same(&listen_probe(&1, ip: :loopback, active: true, mode: :binary))
    end

    test "the user's options win over the defaults" do
      opts = [ip: :loopback, nodelay: false, reuseaddr: false, send_timeout: 1234]
      assert_same(&listen_probe(&1, opts ++ [send_timeout_close: false, backlog: 5]))
    end

    test "first occurrence of a repeated key wins" do
      assert_same(&listen_probe(&1, ip: :loopback, nodelay: false, nodelay: true))
    end

    test "backlog" do
      assert_same(&listen_probe(&1, ip: :loopback, backlog: 1))
      assert_same(&listen_probe(&1, ip: :loopback, backlog: 0))
    end

    test "backlog: many queued connections are all accepted" do
      assert_same(fn mod ->
        {:ok, l} = mod.listen(0, ip: :loopback, backlog: 128)
        clients = for _ <- 1..64, do: Diff.connect(mod, l)

        accepted =
          for _ <- clients do
            {:ok, s} = mod.accept(l)
            {:ok, {_, port}} = mod.peername(s)
            port
          end

        Enum.sort(accepted) ==
          Enum.sort(for c <- clients, do: elem(elem(:inet.sockname(c), 1), 1))
      end)
    end

    test "nodelay, reuseaddr, keepalive" do
      assert_same(&listen_probe(&1, ip: :loopback, nodelay: true, keepalive: true))
      assert_same(&listen_probe(&1, ip: :loopback, nodelay: false, keepalive: false))
      assert_same(&listen_probe(&1, ip: :loopback, reuseaddr: true))
    end

    test "nopush (TCP_CORK) set on the listener, and what it accepts" do
      assert_same(fn mod ->
        {:ok, l} = mod.listen(0, ip: :loopback)
        set = {mod.setopts(l, nopush: true), mod.getopts(l, [:nopush])}
        c = Diff.connect(mod, l)
        {:ok, s} = mod.accept(l)
        :ok = :gen_tcp.send(c, "ping")
        {set, mod.getopts(s, [:nopush]), mod.recv(s, 4, 10_000), mod.setopts(l, nopush: 1)}
      end)
    end

    test "linger" do
      assert_same(&listen_probe(&1, ip: :loopback, linger: {true, 5}))
      assert_same(&listen_probe(&1, ip: :loopback, linger: {false, 0}))
      assert_same(&listen_probe(&1, ip: :loopback, linger: {true, 0}))
    end

    test "buffer, recbuf, sndbuf" do
      assert_same(&listen_probe(&1, ip: :loopback, buffer: 4096))
      assert_same(&listen_probe(&1, ip: :loopback, recbuf: 65536))
      assert_same(&listen_probe(&1, ip: :loopback, sndbuf: 32768))
      assert_same(&listen_probe(&1, ip: :loopback, recbuf: 8192, sndbuf: 8192, buffer: 1000))
    end

    test "send_timeout and send_timeout_close" do
      assert_same(&listen_probe(&1, ip: :loopback, send_timeout: 5000))
      assert_same(&listen_probe(&1, ip: :loopback, send_timeout: :infinity))
      assert_same(&listen_probe(&1, ip: :loopback, send_timeout_close: false))
    end

    # inet takes any integer for these and cuts it to its low 32 bits,
    # signed; the kernel then takes or refuses what is left.
    test "integers past 32 bits, in listen and setopts" do
      keys = [:send_timeout, :linger, :buffer, :recbuf, :sndbuf, :tos, :priority, :ttl]

      for v <- [0x8000_0000, 3_000_000_000, 0xFFFF_FFFF, 0x1_0000_0005, -0x8000_0001] do
        opts =
          [send_timeout: v, linger: {true, v}, buffer: v, recbuf: v, sndbuf: v, tos: v] ++
            [priority: v, ttl: v, backlog: v]

        assert_same(fn mod ->
          {l, s, _c} = Diff.pair(mod)

          for {key, _} = opt <- opts do
            listen =
              case Diff.catching(fn -> mod.listen(0, [opt, ip: :loopback]) end) do
                {:ok, l2} -> {:ok, mod.getopts(l2, keys), mod.close(l2)}
                # (gen_tcp exits at a negative send_timeout, Islet: einval)
                {:exit, :badarg} -> {:error, :einval}
                other -> other
              end

            {key, listen, mod.setopts(l, [opt]), mod.setopts(s, [opt])}
          end
          |> then(&{&1, mod.getopts(l, keys), mod.getopts(s, keys)})
        end)
      end

      assert_same(
        &listen_probe(&1, ip: :loopback, send_timeout: 3_000_000_000, tos: 0x1_0000_0008)
      )
    end

    # inet_drv keeps low <= high: a high below the low lowers the low, a low
    # above the high raises the high; a negative value is 0, and values are
    # cut to 32 bits. The options of one listen apply from the last to the
    # first. Accepted sockets take the listener's.
    test "high_watermark and low_watermark, and what the listener passes on" do
      for opts <- [
            [],
            [high_watermark: 16_384, low_watermark: 8192],
            [high_watermark: 100],
            [low_watermark: 20_000],
            [high_watermark: 1000, low_watermark: 2000],
            [low_watermark: 2000, high_watermark: 1000],
            [high_watermark: 0],
            [high_watermark: -5],
            [low_watermark: -5],
            [high_watermark: 2_147_483_647],
            [high_watermark: 2_147_483_648],
            [high_watermark: 4_294_967_306],
            [high_watermark: -2_147_483_649],
            [high_watermark: Integer.pow(2, 70) + 5]
          ] do
        assert_same(&listen_probe(&1, [ip: :loopback] ++ opts))
      end
    end

    test "high_watermark and low_watermark on a unix socket" do
      assert_same(fn mod ->
        path = Diff.name(Diff.tmp_path("islet_sock"), :path)
        opts = [ip: {:local, path}, high_watermark: 500]
        result = listen_probe(mod, opts)
        File.rm(path)
        result
      end)
    end

    test "packet: :raw and packet: 0, mode: :binary, :binary" do
      assert_same(&listen_probe(&1, ip: :loopback, packet: :raw))
      assert_same(&listen_probe(&1, ip: :loopback, packet: 0))
      assert_same(&listen_probe(&1, [:binary, ip: :loopback, mode: :binary]))
    end

    test "exit_on_close: true and inet_backend: :inet" do
      assert_same(&listen_probe(&1, ip: :loopback, exit_on_close: true))
      assert_same(&listen_probe(&1, ip: :loopback, inet_backend: :inet))
    end

    test "gen_tcp's port tuning and IP options: kept, read back and passed on" do
      # Islet has no port message queue nor packet parser; it keeps these
      # values for getopts as gen_tcp does (getopts answered einval).
      assert_same(
        &listen_probe(&1,
          ip: :loopback,
          delay_send: true,
          packet_size: 100,
          high_msgq_watermark: 100,
          low_msgq_watermark: 50,
          ttl: 9,
          priority: 5,
          recvtos: true,
          header: 0,
          deliver: :term,
          show_econnreset: false
        )
      )
    end

    test "options on a unix socket" do
      assert_same(fn mod ->
        path = Diff.name(Diff.tmp_path("islet_sock"), :path)
        opts = [ip: {:local, path}, keepalive: true, linger: {true, 1}, buffer: 2048, priority: 3]
        result = listen_probe(mod, opts)
        File.rm(path)
        result
      end)
    end

    # inet_drv answers einval for any setsockopt the kernel refuses (enodev
    # for a missing device; eperm for a priority above 6 where the caller
    # lacks CAP_NET_ADMIN); bind and listen keep their own errors.
    test "a setsockopt the kernel refuses is einval, in listen and setopts" do
      assert_same(fn mod ->
        {l, s, _c} = Diff.pair(mod)
        {:ok, {_, port}} = mod.sockname(l)

        for opts <- [[bind_to_device: "nosuchdev0"], [priority: 7]] do
          listen =
            case mod.listen(0, [{:ip, :loopback} | opts]) do
              {:ok, l2} -> {:ok, mod.close(l2)}
              other -> other
            end

          {opts, listen, mod.setopts(l, opts), mod.setopts(s, opts),
           mod.getopts(s, [:bind_to_device, :priority])}
        end
        |> then(&{&1, mod.listen(port, ip: :loopback, bind_to_device: "lo")})
      end)
    end

    test "values of the wrong type" do
      bad = [
        nodelay: :yes,
        backlog: :many,
        linger: 5,
        buffer: -1,
        send_timeout: -5,
        keepalive: 1,
        ip: :nowhere,
        ip: {1, 2, 3},
        high_watermark: 1.5,
        high_watermark: true,
        low_watermark: :low,
        low_watermark: nil,
        # Found in a sweep (2026-12-06): the first was refused, the ignored
        # options took anything, and ipv6_v6only on IPv4 was taken.
        backlog: -1,
        packet_size: :x,
        delay_send: 1,
        high_msgq_watermark: 0,
        ipv6_v6only: true
      ]

      {gen_tcp, islet} =
        Diff.run(fn mod ->
          for opt <- bad, do: {opt, Diff.catching(fn -> mod.listen(0, [opt]) end)}
        end)

      # Where gen_tcp crashes the caller, Islet answers {:error, :einval};
      # where gen_tcp accepts the value, so does Islet.
      for {{opt, g}, {opt, i}} <- Enum.zip(gen_tcp, islet) do
        case g do
          {:ok, _} -> assert i == g, "#{inspect(opt)}: #{inspect(i)}"
          {:error, _} -> assert i == g, "#{inspect(opt)}: #{inspect(i)}"
          {crash, _} when crash in [:exit, :raised] -> assert i == {:error, :einval}, inspect(opt)
        end
      end
    end
  end

  describe "listen: reuseport" do
    # OTP 25's gen_tcp has no `reuseport` option (it arrived in OTP 26), and
    # Thousand Island's option merge cannot take a `{:raw, ...}` tuple: for
    # the reference, SO_REUSEPORT is set with gen_tcp's raw option directly.
    defp listen_reuseport(Islet.Reference.TCP, port) do
      opts = [:binary, active: false, ip: :loopback, reuseaddr: true]
      :gen_tcp.listen(port, opts ++ [{:raw, 1, 15, <<1::32-native>>}])
    end

    defp listen_reuseport(mod, port), do: mod.listen(port, ip: :loopback, reuseport: true)

    test "two listeners on one port both accept connections" do
      assert_same(fn mod ->
        {:ok, a} = listen_reuseport(mod, 0)
        port = Diff.port(mod, a)
        {:ok, b} = listen_reuseport(mod, port)
        without = mod.listen(port, ip: :loopback)
        parent = self()

        acceptors =
          for {l, tag} <- [{a, :a}, {b, :b}] do
            spawn_link(fn -> accept_count(mod, l, tag, parent, 0) end)
          end

        clients =
          for _ <- 1..64 do
            {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])
            {:ok, "!"} = :gen_tcp.recv(c, 1, 10_000)
            c
          end

        mod.close(a)
        mod.close(b)
        counts = for _ <- acceptors, do: receive(do: ({:accepted, tag, n} -> {tag, n}))
        Enum.each(clients, &:gen_tcp.close/1)

        %{
          without_reuseport: without,
          total: counts |> Enum.map(&elem(&1, 1)) |> Enum.sum(),
          both_used: Enum.all?(counts, fn {_, n} -> n > 0 end)
        }
      end)
    end

    # OTP 25's gen_tcp refuses `reuseport` (OTP 26 added it); Islet takes it
    # on every OTP, which is what Thousand Island 1.5 users pass.
    test "reuseport: true as Thousand Island users pass it" do
      {gen_tcp, islet} =
        Diff.run(fn mod ->
          case Diff.catching(fn -> mod.listen(0, ip: :loopback, reuseport: true) end) do
            {:ok, l} ->
              second = mod.listen(Diff.port(mod, l), ip: :loopback, reuseport: true)
              {:ok, match?({:ok, _}, second)}

            other ->
              other
          end
        end)

      if String.to_integer(System.otp_release()) < 26 do
        assert gen_tcp == {:exit, :badarg}
      else
        assert gen_tcp == {:ok, true}
      end

      assert islet == {:ok, true}
    end
  end

  defp accept_count(mod, l, tag, parent, n) do
    case mod.accept(l) do
      {:ok, s} ->
        :ok = mod.send(s, ["!"])
        accept_count(mod, l, tag, parent, n + 1)

      {:error, :closed} ->
        Kernel.send(parent, {:accepted, tag, n})
    end
  end

  describe "listen: options Islet does not implement" do
    # gen_tcp takes these; Islet refuses them by name. Asserted on Islet alone,
    # next to what gen_tcp does with them.
    @unsupported [
      packet: 4,
      packet: :line,
      exit_on_close: false,
      header: 2,
      deliver: :port,
      show_econnreset: true
    ]

    # Tuning of gen_tcp's message queue and packet parser, which Islet does
    # not have, is accepted and kept for getopts; tos and priority are set.
    @accepted [
      delay_send: true,
      high_msgq_watermark: 65536,
      low_msgq_watermark: 1024,
      packet_size: 1000,
      tos: 16,
      priority: 1
    ]

    test "Islet accepts the tuning options gen_tcp accepts" do
      for opt <- @accepted do
        assert {:ok, l} = Islet.TCP.listen(0, [{:ip, :loopback}, opt])
        Islet.TCP.close(l)
      end
    end

    test "Islet returns {:error, {:unsupported_option, opt}}" do
      # nopush and the rest: gen_tcp takes them in setopts only, and exits
      # with badarg here.
      setopts_only = [nopush: true, dontroute: true, broadcast: true, read_packets: 3]

      for opt <- @unsupported ++ [:list] ++ setopts_only do
        assert Islet.TCP.listen(0, [{:ip, :loopback}, opt]) ==
                 {:error, {:unsupported_option, opt}}
      end
    end

    # OTP 27's gen_tcp gives a connection on a Unix-domain listener the
    # listener's reuseaddr (OTP 25's does not, nor does the kernel):
    # Islet.Compat asks the running gen_tcp, and the differential tests on
    # Unix sockets compare the result. This checks the NIF's side on any
    # OTP: with the internal option, the connection gets the listener's
    # SO_REUSEADDR, set or not; without it, never.
    test "Islet: a Unix listener's reuseaddr copied to its connections on request" do
      so_reuseaddr = fn s ->
        {:ok, [{:raw, 1, 2, <<v::native-32>>}]} = Islet.TCP.getopts(s, [{:raw, 1, 2, 4}])
        v != 0
      end

      for copy <- [true, false], reuseaddr <- [true, false] do
        path = Diff.tmp_path("islet_ra")
        extra = if copy, do: [accept_copies_reuseaddr: true], else: []
        opts = [mode: :binary, reuseaddr: reuseaddr] ++ extra
        {:ok, l} = Islet.Nif.listen(:local, path, 0, opts)
        {:ok, c} = :gen_tcp.connect({:local, path}, 0, [:binary, active: false])
        {:ok, s} = Islet.TCP.accept(l)
        assert so_reuseaddr.(l) == reuseaddr
        assert so_reuseaddr.(s) == (copy and reuseaddr), "copy #{copy}, reuseaddr #{reuseaddr}"
        assert Islet.TCP.getopts(s, [:reuseaddr]) == {:ok, [reuseaddr: copy and reuseaddr]}
        :gen_tcp.close(c)
        Enum.each([s, l], &Islet.TCP.close/1)
        File.rm(path)
      end

      # Not an option users can give.
      assert {:error, {:unsupported_option, _}} =
               Islet.TCP.listen(0, ip: :loopback, accept_copies_reuseaddr: true)
    end

    test "gen_tcp accepts them" do
      for opt <- @unsupported do
        assert {:ok, l} = Islet.Reference.TCP.listen(0, [{:ip, :loopback}, opt])
        :gen_tcp.close(l)
      end
    end
  end

  describe "multicast options and pktoptions" do
    # gen_tcp has the UDP multicast options on TCP sockets too, at
    # IPPROTO_IP on IPv4 and IPv6 sockets alike (multicast_if: at
    # IPV6_MULTICAST_IF on IPv6 ones), and pktoptions, which reads back
    # what recvtos, recvttl and recvtclass ask the kernel to keep
    # (IP_PKTOPTIONS, IPV6_2292PKTOPTIONS). The kernel refuses
    # IP_MULTICAST_TTL and IP_MULTICAST_IF on a stream socket, and inet_drv
    # ignores the refusal: setopts says ok and nothing changes. An accepted
    # IPv4 connection's multicast_ttl is the TTL its SYN came with (64 on
    # loopback), which is what the kernel answers. Islet answered einval.
    @mcast_keys [:multicast_ttl, :multicast_loop, :multicast_if, :pktoptions]
    @mcast_families [:inet, :inet6, :mapped, :local]

    # gen_tcp's multicast_if is not the kernel's answer: inet_drv's reply
    # skips the 4 bytes it meant to fill and carries 4 it never wrote
    # (OTP 25 to 29; what an earlier call left there: {0, 0, 0, 1} after a
    # multicast_loop read), and keeps the option where its getsockopt
    # failed. Only its form is compared here (an IPv4 address on an IPv4
    # socket, an interface index on an IPv6 one); Islet answers the
    # kernel's value (see the Islet-only test).
    defp mcast_if_form({:ok, opts}) when is_list(opts) do
      {:ok,
       Enum.map(opts, fn
         {:multicast_if, {a, b, c, d}}
         when a in 0..255 and b in 0..255 and c in 0..255 and d in 0..255 ->
           {:multicast_if, :ipv4_address}

         {:multicast_if, n} when is_integer(n) ->
           {:multicast_if, :ifindex}

         other ->
           other
       end)}
    end

    defp mcast_if_form(other), do: other

    # Each key read on its own.
    defp mcast_read(mod, sock),
      do: Map.new(@mcast_keys, &{&1, mcast_if_form(mod.getopts(sock, [&1]))})

    # Listens on IPv4, IPv6, IPv6 any (for an IPv4 client: a v4-mapped
    # connection) or a Unix socket.
    defp mcast_listen(mod, :inet, opts), do: mod.listen(0, [ip: :loopback] ++ opts)
    defp mcast_listen(mod, :inet6, opts), do: mod.listen(0, [:inet6, ip: :loopback] ++ opts)
    defp mcast_listen(mod, :mapped, opts), do: mod.listen(0, [:inet6, ip: :any] ++ opts)

    # (An abstract name: there is no file to remove, and clients can still
    # connect when the scenario ends.)
    defp mcast_listen(mod, :local, opts) do
      path = Diff.name(<<0>> <> Path.basename(Diff.tmp_path("islet_mcast")), :path)
      mod.listen(0, [ip: {:local, path}] ++ opts)
    end

    # A scenario that crashed (the same way on both sides) compared nothing.
    defp ran!(result) do
      refute match?({tag, _} when tag in [:raised, :exit, :throw, :died, :hang], result),
             inspect(result)

      result
    end

    defp mcast_connect(mod, :mapped, l) do
      {:ok, c} =
        :gen_tcp.connect({127, 0, 0, 1}, Diff.port(mod, l), [:binary, active: false], 10_000)

      c
    end

    defp mcast_connect(mod, _family, l), do: Diff.connect(mod, l)

    # {listener, accepted connection, client}, or listen's error.
    defp mcast_pair(mod, family, opts \\ []) do
      with {:ok, l} <- mcast_listen(mod, family, opts) do
        c = mcast_connect(mod, family, l)
        {:ok, s} = mod.accept(l)
        {Diff.name(l, :listener), Diff.name(s, :server), Diff.name(c, :client)}
      end
    end

    test "getopts on a listener and a connection, alone and among others" do
      for family <- @mcast_families do
        ran!(
          assert_same(fn mod ->
            {l, s, _c} = mcast_pair(mod, family)

            {family,
             %{
               listener: mcast_read(mod, l),
               conn: mcast_read(mod, s),
               all: mcast_if_form(mod.getopts(s, @mcast_keys)),
               mixed: [
                 mod.getopts(s, [:multicast_ttl, :nodelay]),
                 mod.getopts(s, [:nodelay, :multicast_ttl, :multicast_loop]),
                 mod.getopts(l, [:multicast_loop, :reuseaddr, :multicast_ttl]),
                 mod.getopts(s, [:pktoptions, :nodelay]),
                 mod.getopts(s, [:nodelay, :pktoptions]),
                 mod.getopts(s, [:multicast_ttl, :bogus])
               ]
             }}
          end)
        )
      end
    end

    test "setopts: the values gen_tcp takes and refuses, and what getopts reads then" do
      sets =
        [multicast_ttl: 5, multicast_ttl: 300, multicast_ttl: 0, multicast_ttl: -1] ++
          [multicast_ttl: 0x1_0000_0005, multicast_ttl: :x, multicast_ttl: true] ++
          [multicast_loop: false, multicast_loop: true, multicast_loop: 3, multicast_loop: :x] ++
          [multicast_if: {127, 0, 0, 1}, multicast_if: {0, 0, 0, 0}, multicast_if: 0] ++
          [multicast_if: 1, multicast_if: -1, multicast_if: 0x1_0000_0000] ++
          [multicast_if: {1, 2}, multicast_if: {256, 0, 0, 0}, multicast_if: {-1, 0, 0, 0}] ++
          [multicast_if: {0, 0, 0, 0, 0, 0, 0, 1}, multicast_if: :any, multicast_if: "lo"] ++
          [pktoptions: [], pktoptions: true, pktoptions: [tos: 0], multicast_loop: false]

      for family <- @mcast_families do
        ran!(
          assert_same(fn mod ->
            {l, s, _c} = mcast_pair(mod, family)

            values =
              for sock <- [l, s], opt <- sets do
                {opt, mod.setopts(sock, [opt]), mod.getopts(sock, [:multicast_ttl]),
                 mod.getopts(sock, [:multicast_loop])}
              end

            # A list is checked whole before any of it is set.
            lists =
              for opts <- [
                    [multicast_loop: true, nodelay: true],
                    [nodelay: false, multicast_loop: 3],
                    [multicast_loop: false, pktoptions: []],
                    [pktoptions: [], multicast_loop: false],
                    [multicast_loop: false, multicast_if: {1, 2}],
                    [multicast_ttl: 9, multicast_loop: false, bogus: 1]
                  ] do
                {opts, mod.setopts(s, opts), mod.getopts(s, [:nodelay, :multicast_loop])}
              end

            # The kernel hands the listener's multicast_loop to what it accepts.
            :ok = mod.setopts(l, multicast_loop: false)
            _c2 = mcast_connect(mod, family, l)
            {:ok, s2} = mod.accept(l)
            inherited = mod.getopts(s2, [:multicast_loop, :multicast_ttl])

            {family, values, lists, inherited}
          end)
        )
      end
    end

    # pktoptions carries what the kernel kept of the received packets:
    # with recvtos and recvttl (IPv4; an IPv6 socket keeps neither) the
    # SYN's TOS and TTL, with recvtclass (IPv6) the last packet's traffic
    # class (the listener's own: its multicast TTL).
    test "pktoptions with recvtos, recvttl and recvtclass, before and after data" do
      for family <- [:inet, :inet6, :mapped],
          opts <- [
            [],
            [recvtos: true],
            [recvttl: true],
            [recvtos: true, recvttl: true],
            [recvtclass: true],
            [recvtclass: true, recvtos: true, recvttl: true],
            [tos: 32, recvtos: true]
          ] do
        ran!(
          assert_same(fn mod ->
            case mcast_pair(mod, family, opts) do
              {l, s, c} ->
                before = {mod.getopts(l, [:pktoptions]), mod.getopts(s, [:pktoptions])}
                :ok = :gen_tcp.send(c, "hi")
                {:ok, "hi"} = mod.recv(s, 2, 10_000)
                first = mod.getopts(s, [:pktoptions])
                # (one of the two applies to the client's family)
                _ = :inet.setopts(c, tos: 64)
                _ = :inet.setopts(c, tclass: 64)
                :ok = :gen_tcp.send(c, "hi")
                {:ok, "hi"} = mod.recv(s, 2, 10_000)
                second = mod.getopts(s, [:nodelay, :pktoptions, :recvtos])
                off = mod.setopts(s, recvtos: false, recvttl: false)
                {family, opts, before, first, second, off, mod.getopts(s, [:pktoptions])}

              error ->
                {family, opts, error}
            end
          end)
        )
      end
    end

    # Once a passive recv has said closed, gen_tcp's fd is gone: getopts
    # leaves the kernel's options out (but for multicast_if, see above) and
    # setopts ignores the refusals; after close, everything is einval.
    test "after the peer closed, and after close" do
      sets =
        [multicast_ttl: 3, multicast_loop: true, multicast_if: {0, 0, 0, 0}] ++
          [multicast_if: {1, 2}, pktoptions: [], multicast_loop: 3]

      for family <- @mcast_families do
        ran!(
          assert_same(fn mod ->
            {l, s, c} = mcast_pair(mod, family)
            :ok = :gen_tcp.close(c)
            {:error, :closed} = mod.recv(s, 0, 10_000)

            gone =
              {mcast_read(mod, s), mod.getopts(s, [:nodelay, :multicast_ttl]),
               for(opt <- sets, do: {opt, mod.setopts(s, [opt])})}

            :ok = mod.close(s)
            :ok = mod.close(l)

            closed =
              for sock <- [s, l] do
                {mcast_read(mod, sock), for(opt <- sets, do: {opt, mod.setopts(sock, [opt])})}
              end

            {family, gone, closed}
          end)
        )
      end
    end

    # gen_tcp takes them in setopts only: its listen exits with badarg
    # (through Islet.Reference.TCP and Thousand Island's transport alike).
    # Islet names them, as it names nopush there.
    test "in listen options: gen_tcp exits, Islet answers unsupported_option" do
      opts =
        [multicast_ttl: 4, multicast_ttl: :x, multicast_loop: false, multicast_loop: true] ++
          [multicast_if: {0, 0, 0, 0}, multicast_if: {1, 2}, pktoptions: []]

      {gen_tcp, islet} =
        Diff.run(fn mod ->
          for opt <- opts, do: Diff.catching(fn -> mod.listen(0, [{:ip, :loopback}, opt]) end)
        end)

      assert gen_tcp == List.duplicate({:exit, :badarg}, length(opts))
      assert islet == Enum.map(opts, &{:error, {:unsupported_option, &1}})
    end

    test "Islet: multicast_if is the kernel's IP_MULTICAST_IF or IPV6_MULTICAST_IF" do
      for family <- [:inet, :inet6, :mapped] do
        {l, s, c} = mcast_pair(Islet.TCP, family)

        for sock <- [l, s] do
          {:ok, [multicast_if: value]} = Islet.TCP.getopts(sock, [:multicast_if])

          kernel =
            case family do
              :inet ->
                {:ok, [{:raw, 0, 32, <<a, b, c, d>>}]} =
                  Islet.TCP.getopts(sock, [{:raw, 0, 32, 4}])

                {a, b, c, d}

              _ ->
                {:ok, [{:raw, 41, 17, <<i::native-32>>}]} =
                  Islet.TCP.getopts(sock, [{:raw, 41, 17, 4}])

                i
            end

          assert value == kernel, "#{family}: #{inspect(value)}, kernel #{inspect(kernel)}"
          # (Among other options, and on repeated reads, the same.)
          assert {:ok, [nodelay: _, multicast_if: ^value, multicast_if: ^value]} =
                   Islet.TCP.getopts(sock, [:nodelay, :multicast_if, :multicast_if])
        end

        # A listener's is unset; on TCP the kernel never lets it be set.
        assert Islet.TCP.getopts(l, [:multicast_if]) ==
                 {:ok, [multicast_if: if(family == :inet, do: {0, 0, 0, 0}, else: 0)]}

        :gen_tcp.close(c)
        Enum.each([s, l], &Islet.TCP.close/1)
      end
    end
  end

  describe "accept" do
    test "the acceptor owns the accepted socket" do
      assert_same(fn mod ->
        {:ok, l} = mod.listen(0, ip: :loopback)
        parent = self()

        acceptor =
          spawn(fn ->
            {:ok, s} = mod.accept(l)
            :ok = mod.setopts(s, active: true)
            Kernel.send(parent, {:accepted, s})

            receive do
              {:tcp, ^s, data} -> Kernel.send(parent, {:acceptor_got, data})
            end

            receive(do: (:exit -> :ok))
          end)

        c = Diff.connect(mod, l)
        s = receive(do: ({:accepted, s} -> s))
        :ok = :gen_tcp.send(c, "hello")
        got = receive(do: ({:acceptor_got, data} -> data))
        not_owner = mod.controlling_process(s, self())
        ref = Process.monitor(acceptor)
        Kernel.send(acceptor, :exit)
        receive(do: ({:DOWN, ^ref, _, _, _} -> :ok))
        # The owner is gone, and the socket with it.
        {not_owner, got, :gen_tcp.recv(c, 0, 10_000)}
      end)
    end

    test "many waiting acceptors each get one connection" do
      assert_same(fn mod ->
        {:ok, l} = mod.listen(0, ip: :loopback)
        parent = self()

        for i <- 1..50 do
          spawn_link(fn ->
            result = mod.accept(l)
            Kernel.send(parent, {:accept, i, elem(result, 0)})
            receive(do: (:stop -> :ok))
          end)
        end

        clients = for _ <- 1..50, do: Diff.connect(mod, l)
        results = for _ <- 1..50, do: receive(do: ({:accept, i, r} -> {i, r}))
        Enum.each(clients, &:gen_tcp.close/1)
        results |> Enum.sort() |> Enum.map(&elem(&1, 1)) |> Enum.frequencies()
      end)
    end

    test "closing the listener from another process wakes every acceptor with :closed" do
      assert_same(fn mod ->
        {:ok, l} = mod.listen(0, ip: :loopback)
        parent = self()
        n = 100

        for i <- 1..n do
          spawn_link(fn ->
            Kernel.send(parent, {:waiting, i})
            Kernel.send(parent, {:accept, i, mod.accept(l)})
          end)
        end

        for i <- 1..n, do: receive(do: ({:waiting, ^i} -> :ok))
        # Let them reach accept (a sleep, but the result does not depend on it:
        # an accept that starts after close also answers {:error, :closed}).
        Process.sleep(100)

        # How the closer ends, not whether it is still alive right after its
        # last message (a race with its own exit, with gen_tcp too).
        {closer, ref} = spawn_monitor(fn -> Kernel.send(parent, {:closed, mod.close(l)}) end)
        closed = receive(do: ({:closed, r} -> r))
        ended = receive(do: ({:DOWN, ^ref, :process, ^closer, reason} -> reason))
        results = for i <- 1..n, do: receive(do: ({:accept, ^i, r} -> r))
        {closed, ended, Enum.frequencies(results)}
      end)
    end

    test "the listener owner's death closes it and wakes acceptors" do
      assert_same(fn mod ->
        parent = self()

        owner =
          spawn(fn ->
            {:ok, l} = mod.listen(0, ip: :loopback)
            Kernel.send(parent, {:listener, l})
            receive(do: (:die -> exit(:normal)))
          end)

        l = receive(do: ({:listener, l} -> l))
        port = Diff.port(mod, l)

        for i <- 1..10 do
          spawn_link(fn -> Kernel.send(parent, {:accept, i, mod.accept(l)}) end)
        end

        Process.sleep(50)
        ref = Process.monitor(owner)
        Kernel.send(owner, :die)
        receive(do: ({:DOWN, ^ref, _, _, _} -> :ok))
        results = for i <- 1..10, do: receive(do: ({:accept, ^i, r} -> r))
        connect = :gen_tcp.connect({127, 0, 0, 1}, port, [], 5000)
        {Enum.frequencies(results), connect, mod.accept(l)}
      end)
    end

    test "accept on a connected socket and on a closed listener" do
      assert_same(fn mod ->
        {l, s, _c} = Diff.pair(mod)
        on_conn = mod.accept(s)
        :ok = mod.close(l)
        {on_conn, mod.accept(l)}
      end)
    end

    test "a connection that was reset before accept is still accepted" do
      assert_same(fn mod ->
        {:ok, l} = mod.listen(0, ip: :loopback)
        c = Diff.connect(mod, l, linger: {true, 0})
        :ok = :gen_tcp.close(c)
        Process.sleep(50)
        {:ok, s} = mod.accept(l)
        Diff.name(s, :server)
        {mod.recv(s, 0, 5000), mod.recv(s, 0, 5000)}
      end)
    end
  end

  describe "addresses" do
    test "sockname and peername of listener and connection" do
      assert_same(fn mod ->
        {l, s, c} = Diff.pair(mod)
        port = Diff.port(mod, l)
        {:ok, {_, cport}} = :inet.sockname(c)

        %{
          l_sockname: mod.sockname(l) == {:ok, {{127, 0, 0, 1}, port}},
          l_peername: mod.peername(l),
          s_sockname: mod.sockname(s) == {:ok, {{127, 0, 0, 1}, port}},
          s_peername: mod.peername(s) == {:ok, {{127, 0, 0, 1}, cport}}
        }
      end)
    end

    test "IPv6 addresses" do
      assert_same(fn mod ->
        {l, s, c} = Diff.pair(mod, [:inet6, ip: {0, 0, 0, 0, 0, 0, 0, 1}])
        port = Diff.port(mod, l)
        {:ok, {_, cport}} = :inet.sockname(c)

        {mod.sockname(s) == {:ok, {{0, 0, 0, 0, 0, 0, 0, 1}, port}},
         mod.peername(s) == {:ok, {{0, 0, 0, 0, 0, 0, 0, 1}, cport}}}
      end)
    end

    test "unix socket addresses" do
      assert_same(fn mod ->
        path = Diff.name(Diff.tmp_path("islet_sock"), :path)
        {l, s, _c} = Diff.pair(mod, ip: {:local, path})
        result = {mod.sockname(l), mod.peername(l), mod.sockname(s), mod.peername(s)}
        File.rm(path)
        result
      end)
    end

    test "after close" do
      assert_same(fn mod ->
        {l, s, _c} = Diff.pair(mod)
        mod.close(s)
        mod.close(l)
        {mod.sockname(l), mod.peername(l), mod.sockname(s), mod.peername(s)}
      end)
    end
  end

  describe "callbacks without I/O" do
    test "handshake/1,2, upgrade, negotiated_protocol, peercert, connection_information, secure?" do
      assert_same(fn mod ->
        {_l, s, _c} = Diff.pair(mod)
        {:ok, h1} = mod.handshake(s)
        {:ok, h2} = mod.handshake(s, 15_000)

        %{
          handshake_same: h1 == s and h2 == s,
          handshake_infinity: mod.handshake(s, :infinity),
          upgrade: mod.upgrade(s, []),
          negotiated_protocol: mod.negotiated_protocol(s),
          peercert: mod.peercert(s),
          connection_information: mod.connection_information(s),
          secure?: mod.secure?()
        }
      end)
    end

    test "sendfile on a listener" do
      # (Islet answered einval, gen_tcp's file:sendfile enotconn.)
      assert_same(fn mod ->
        {:ok, l} = mod.listen(0, ip: :loopback)
        {mod.sendfile(l, "/etc/hostname", 0, 0), elem(mod.sockname(l), 0)}
      end)
    end

    test "the same callbacks are exported" do
      ref = Islet.Reference.TCP.__info__(:functions) |> Enum.sort()
      islet = Islet.TCP.__info__(:functions) |> Enum.sort()
      assert islet == ref
    end
  end
end

defmodule Islet.BenchNginxTest do
  # The benchmark's outside reference (Islet.Bench.Nginx): its configuration
  # and status parsing always; starting, sampling and stopping a real nginx
  # where one is installed (tag :nginx, excluded otherwise by test_helper).
  use ExUnit.Case, async: false

  alias Islet.Bench.{Nginx, Transports}

  @moduletag :bench

  test "the configuration: one process, the certificates on loopback, no session reuse" do
    certs = %{main: {"/c/rsa.pem", "/c/rsa.key"}, ecdsa: {"/c/ec.pem", "/c/ec.key"}}
    text = Nginx.config("/w", 9000, %{main: 9001, ecdsa: 9002}, certs, ["uwsgi"])

    assert text =~ "master_process off;"
    assert text =~ "daemon off;"
    assert text =~ "listen 127.0.0.1:9001 ssl;\n    ssl_certificate /c/rsa.pem;"
    assert text =~ "listen 127.0.0.1:9002 ssl;\n    ssl_certificate /c/ec.pem;"
    assert text =~ "ssl_certificate_key /c/ec.key;"
    assert text =~ "listen 127.0.0.1:9000;"
    assert text =~ "stub_status;"
    assert text =~ "ssl_session_cache off;" and text =~ "ssl_session_tickets off;"
    assert text =~ "client_body_temp_path /w/tmp/client_body_temp_path;"
    assert text =~ "scgi_temp_path"
    # A module the build lacks: its directive would stop nginx.
    refute text =~ "uwsgi_temp_path"
  end

  test "the status page" do
    page = """
    Active connections: 1
    server accepts handled requests
     1204 1203 7
    Reading: 0 Writing: 1 Waiting: 0
    """

    assert Nginx.parse_status(page) == {:ok, %{accepts: 1204, handled: 1203, requests: 7}}
    assert {:error, {:bad_status_page, _}} = Nginx.parse_status("<html>502</html>")
  end

  @tag :nginx
  test "a real nginx: serves TLS, counts handshakes (not its status requests), uses CPU, stops" do
    dir = Path.join(System.tmp_dir!(), "islet_nginx_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf(dir) end)
    pair = Transports.tls()
    main = pair.listen_options.(dir)
    [ecdsa: ecdsa] = pair.extra_listeners.(dir)

    certs = %{
      main: {main[:certfile], main[:keyfile]},
      ecdsa: {ecdsa[:certfile], ecdsa[:keyfile]}
    }

    assert {:ok, nginx} = Nginx.start(Path.join(dir, "nginx"), "0", certs)

    try do
      assert {:ok, before} = Nginx.sample(nginx)

      for {name, version} <- [main: :"tlsv1.3", ecdsa: :"tlsv1.2", ecdsa: :"tlsv1.3"] do
        {:ok, c} =
          :ssl.connect(~c"127.0.0.1", nginx.ports[name], verify: :verify_none, versions: [version])

        assert {:ok, [protocol: ^version]} = :ssl.connection_information(c, [:protocol])
        :ssl.close(c)
      end

      assert {:ok, later} = Nginx.sample(nginx)
      assert later.counters.accepted - before.counters.accepted == 3
      assert later.cpu_ns > before.cpu_ns
      assert later.at_ns > before.at_ns
    after
      Nginx.stop(nginx)
    end

    refute File.exists?("/proc/#{nginx.os_pid}")
  end

  @tag :nginx
  test "nginx goes when the process that started it goes, without stop" do
    dir = Path.join(System.tmp_dir!(), "islet_nginx_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf(dir) end)
    main = Transports.tls().listen_options.(dir)
    certs = %{main: {main[:certfile], main[:keyfile]}}
    parent = self()

    {pid, ref} =
      spawn_monitor(fn ->
        {:ok, nginx} = Nginx.start(Path.join(dir, "nginx"), "0", certs)
        send(parent, {:started, nginx.os_pid})
      end)

    assert_receive {:started, os_pid}, 10_000
    assert_receive {:DOWN, ^ref, :process, ^pid, :normal}
    assert os_pid > 0
    # Gone within 5 s (its shell saw its stdin close).
    assert Enum.any?(1..50, fn _ ->
             Process.sleep(100)
             not File.exists?("/proc/#{os_pid}")
           end)
  end
end

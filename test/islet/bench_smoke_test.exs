defmodule Islet.BenchSmokeTest do
  # Checks that the benchmark harness works end to end (`mix islet.bench
  # --quick`, about 30 s): every workload runs on both transports of both
  # pairs (TCP and TLS), and the JSON has every row with figures, the
  # handshake rows without resumed sessions, and the checks against other
  # rows. Speed is not checked. Excluded with `mix test --exclude bench`.
  use ExUnit.Case, async: false

  alias Islet.Bench.{JSON, Load, Transports, Workloads}

  @moduletag :bench
  @moduletag timeout: 180_000

  test "mix islet.bench --quick measures every workload and writes the JSON and the chart" do
    out = Path.join(System.tmp_dir!(), "islet_bench_smoke_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf(out) end)

    output =
      ExUnit.CaptureIO.capture_io(fn ->
        result =
          try do
            Mix.Tasks.Islet.Bench.run(["--quick", "--out", out])
          rescue
            error in Mix.Error -> error
          end

        send(self(), {:result, result})
      end)

    assert_received {:result, result}
    refute match?(%Mix.Error{}, result), "the benchmark failed:\n#{output}"
    assert output =~ "keep-alive"

    assert {:ok, json} = File.read(Path.join(out, "latest.json"))

    assert {:ok, %{"meta" => meta, "rows" => rows, "failures" => [], "outside_failures" => []}} =
             JSON.decode(json)

    assert meta["quick"] == true
    assert meta["handshake_client"] == "islet_hsload" and meta["handshake_clients"] == 16

    pairs = Transports.select(nil)
    assert Enum.map(pairs, & &1.id) == [:tcp, :tls], "both pairs run by default"

    expected =
      for pair <- pairs,
          workload <- Workloads.for_pair(pair),
          metric <- Workloads.metrics(workload),
          do: "#{pair.id}.#{workload}.#{metric.key}"

    assert Enum.map(rows, & &1["id"]) == expected
    assert "tls.handshake.rsa12_per_s" in expected

    for row <- rows do
      assert is_number(row["candidate"]["median"]), "#{row["id"]}: no figure for the candidate"
      assert is_number(row["reference"]["median"]), "#{row["id"]}: no figure for the reference"
      assert is_number(row["ratio"]), "#{row["id"]}: no ratio"

      for check <- row["checks"] do
        assert is_number(check["quotient"]), "#{row["id"]} #{check["label"]}: no figure"
      end

      refute Enum.any?(row["warnings"], &(&1 =~ "resumed")),
             "#{row["id"]}: TLS sessions were resumed: #{inspect(row["warnings"])}"
    end

    keepalive = Enum.find(rows, &(&1["id"] == "tls.keepalive.req_per_s"))

    assert [%{"label" => "vs Islet.TCP", "against" => "tcp.keepalive.req_per_s"}] =
             keepalive["checks"]

    # nginx, when installed, is measured for the handshake rows that have a
    # goal: its figure against :ssl's and Islet.TLS's against it.
    handshake = Enum.find(rows, &(&1["id"] == "tls.handshake.ecdsa13_per_cpu_s"))
    nginx_checks = Enum.filter(handshake["checks"], &(&1["against"] == "nginx"))

    if Islet.Bench.Nginx.available?() do
      assert meta["outside"] == %{"nginx" => Islet.Bench.Nginx.version()}
      assert [%{"label" => "nginx", "median" => median}] = handshake["outside"]
      assert is_number(median) and median > 0
      assert Enum.map(nginx_checks, & &1["label"]) == ["nginx vs :ssl", "vs nginx"]
      assert Enum.all?(nginx_checks, &(&1["goal"] == nil))
    else
      assert meta["outside"] == %{}
      assert handshake["outside"] == [] and nginx_checks == []
    end

    assert <<0x89, "PNG", _::binary>> = File.read!(Path.join(out, "latest.png"))
  end

  # The handshake client: full handshakes (each one the server's, none
  # resumed), in both versions, and it stops by itself, also when every
  # handshake fails.
  test "islet_hsload makes full handshakes for its time, then stops" do
    hsload = Mix.Tasks.Compile.IsletNif.build_target!("islet_hsload")

    {:ok, server} =
      Islet.Bench.Server.start_link(
        transport: Islet.TLS,
        listen_options: Islet.Test.Certs.server_opts(:server_ec),
        check_resumption: true
      )

    port = Islet.Bench.Server.port(server)
    counters = Islet.Bench.Server.counters(server)

    for version <- ["tls1_3", "tls1_2"] do
      before = Islet.Bench.Counters.read(counters)
      {out, 0} = System.cmd(hsload, ["127.0.0.1", "#{port}", version, "4", "0.3"])

      assert [_, made, "0", seconds] =
               Regex.run(~r/^handshakes (\d+) failures (\d+) seconds ([\d.]+)/, out)

      assert String.to_integer(made) > 0
      assert_in_delta String.to_float(seconds), 0.3, 0.2

      # The handshakes the client ended mid-way at its stop may still be
      # counted as connections; none was resumed.
      Process.sleep(100)
      later = Islet.Bench.Counters.read(counters)
      accepted = later.accepted - before.accepted
      assert accepted >= String.to_integer(made) and accepted <= String.to_integer(made) + 4
      assert later.resumed == before.resumed
    end

    # A listener that refuses every handshake (TLS 1.2 only, asked for 1.3).
    {:ok, tls12} =
      Islet.Bench.Server.start_link(
        transport: Islet.TLS,
        listen_options: Islet.Test.Certs.server_opts(:server_ec) ++ [versions: [:"tlsv1.2"]]
      )

    {out, 1} =
      System.cmd(hsload, ["127.0.0.1", "#{Islet.Bench.Server.port(tls12)}", "tls1_3", "2", "5"],
        stderr_to_stdout: true
      )

    assert out =~ "every handshake fails"
    assert out =~ ~r/handshakes 0 failures \d+/
  end

  test "wrk's --latency report is parsed" do
    output = """
    Running 1s test @ http://127.0.0.1:4000/
      1 threads and 50 connections
      Thread Stats   Avg      Stdev     Max   +/- Stdev
        Latency     1.20ms  300.00us   9.00ms   90.00%
        Req/Sec    40.00k     1.00k   42.00k    70.00%
      Latency Distribution
         50%  950.00us
         75%    1.30ms
         90%    1.80ms
         99%    1.20s
      40000 requests in 1.00s, 3.00MB read
      Socket errors: connect 0, read 2, write 0, timeout 1
    Requests/sec:  39990.12
    Transfer/sec:      3.00MB
    """

    assert {:ok, result} = Load.parse_wrk(output)
    assert result.requests == 40_000
    assert_in_delta result.requests_per_s, 39_990.12, 0.001
    assert_in_delta result.p50_ms, 0.95, 1.0e-9
    assert_in_delta result.p99_ms, 1200.0, 1.0e-9
    assert result.socket_errors == 3
    assert result.non_2xx == 0
  end

  test "JSON round trip" do
    term = %{"a" => [1, 2.5, nil, true], "b" => %{"c" => "quote \" and \\ and \n"}, "d" => []}
    assert {:ok, ^term} = JSON.decode(JSON.encode(term))
  end
end

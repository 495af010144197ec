# Islet's demo server: a small HTTP/1.1 responder on Islet.TCP, driven by the
# benchmark's miniature of Thousand Island's runtime (Islet.Bench.Server: one
# listener, 100 acceptors, a handler process per connection looping on
# setopts(active: :once)).
#
#     mix run bench/demo_server.exs
#
# Environment: PORT (default 4000), BIND (address to listen on, default
# 127.0.0.1; 0.0.0.0 for all interfaces), DOWNLOAD (a file served at
# GET /download with sendfile), TRANSPORT=gen_tcp to serve the same thing
# with Islet.Reference.TCP for comparison.
#
# Routes: GET /download (if DOWNLOAD is set), PUT or POST with a body (read
# in passive mode and counted), anything else: "Hello, world!".

port = String.to_integer(System.get_env("PORT", "4000"))
bind = System.get_env("BIND", "127.0.0.1")

{:ok, ip} = bind |> String.to_charlist() |> :inet.parse_address()

transport =
  case System.get_env("TRANSPORT", "islet") do
    "gen_tcp" -> Islet.Reference.TCP
    _ -> Islet.TCP
  end

options = [
  transport: transport,
  port: port,
  listen_options: [ip: ip],
  download: System.get_env("DOWNLOAD")
]

case Islet.Bench.Server.start_link(options) do
  {:ok, server} ->
    host = if bind == "0.0.0.0", do: "127.0.0.1", else: bind
    url = "http://#{host}:#{Islet.Bench.Server.port(server)}"

    IO.puts("""
    Islet demo server (#{inspect(transport)}) listening on #{url}
      curl #{url}/
      curl -T some_file #{url}/upload
      wrk -c 50 -d 5s #{url}/#{if options[:download], do: "\n  curl -o /dev/null #{url}/download", else: ""}
    Stop it with Ctrl-C twice.
    """)

    Process.sleep(:infinity)

  {:error, reason} ->
    IO.puts(:stderr, "could not start on #{bind}:#{port}: #{inspect(reason)}")
    System.halt(1)
end

defmodule Islet.Bench.HTTP do
  @moduledoc """
  The little HTTP/1.1 the benchmark server speaks: request heads are parsed
  just enough to route (method, path, `connection`, `content-length`);
  responses are small iodata. No chunked bodies, no pipelining limits.
  """

  @max_head 65_536

  @typedoc "A parsed request head."
  @type request :: %{
          method: binary(),
          path: binary(),
          close?: boolean(),
          content_length: non_neg_integer()
        }

  @doc """
  Parses one request head from the front of `buffer`: `{:ok, request, rest}`
  (`rest` starts with the body, if any), `:more` when the head is not complete
  yet, or `{:error, reason}`.
  """
  @spec parse(binary()) :: {:ok, request(), binary()} | :more | {:error, atom()}
  def parse(buffer) do
    case :binary.match(buffer, "\r\n\r\n") do
      {pos, 4} ->
        {head, <<_::binary-size(4), rest::binary>>} = :erlang.split_binary(buffer, pos)

        with {:ok, request} <- parse_head(head), do: {:ok, request, rest}

      :nomatch when byte_size(buffer) > @max_head ->
        {:error, :head_too_large}

      :nomatch ->
        :more
    end
  end

  defp parse_head(head) do
    [line | headers] = :binary.split(head, "\r\n", [:global])

    case :binary.split(line, " ", [:global]) do
      [method, path, version] ->
        request = %{
          method: method,
          path: path,
          close?: version == "HTTP/1.0",
          content_length: 0
        }

        parse_headers(headers, request)

      _ ->
        {:error, :bad_request_line}
    end
  end

  defp parse_headers([], request), do: {:ok, request}

  defp parse_headers([line | rest], request) do
    case :binary.split(line, ":") do
      [name, value] -> parse_headers(rest, header(String.downcase(name), value, request))
      _ -> {:error, :bad_header}
    end
  end

  defp header("connection", value, request) do
    case String.downcase(String.trim(value)) do
      "close" -> %{request | close?: true}
      "keep-alive" -> %{request | close?: false}
      _ -> request
    end
  end

  defp header("content-length", value, request) do
    case Integer.parse(String.trim(value)) do
      {length, ""} when length >= 0 -> %{request | content_length: length}
      _ -> request
    end
  end

  defp header(_name, _value, request), do: request

  @doc "A complete response with a `text/plain` body."
  @spec response(pos_integer(), iodata(), boolean()) :: iodata()
  def response(status, body, close?) do
    [head(status, IO.iodata_length(body), close?) | body]
  end

  @doc "A response head announcing `length` body bytes."
  @spec head(pos_integer(), non_neg_integer(), boolean()) :: iodata()
  def head(status, length, close?) do
    [
      status_line(status),
      "content-type: text/plain\r\ncontent-length: ",
      Integer.to_string(length),
      if(close?, do: "\r\nconnection: close\r\n\r\n", else: "\r\n\r\n")
    ]
  end

  defp status_line(200), do: "HTTP/1.1 200 OK\r\n"
  defp status_line(400), do: "HTTP/1.1 400 Bad Request\r\n"
  defp status_line(404), do: "HTTP/1.1 404 Not Found\r\n"
  defp status_line(status), do: "HTTP/1.1 #{status} Status\r\n"
end

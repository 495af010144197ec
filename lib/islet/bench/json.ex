defmodule Islet.Bench.JSON do
  @moduledoc """
  Just enough JSON for the benchmark's results file (the project has no
  dependencies): `encode/1` for maps, lists, strings, numbers, booleans,
  `nil` and atoms (as strings), and `decode/1` for reading it back.
  """

  @doc "Encodes a term as pretty-printed JSON."
  @spec encode(term()) :: String.t()
  def encode(term), do: IO.iodata_to_binary([value(term, 0), ?\n])

  defp value(nil, _), do: "null"
  defp value(true, _), do: "true"
  defp value(false, _), do: "false"
  defp value(atom, _) when is_atom(atom), do: string(Atom.to_string(atom))
  defp value(string, _) when is_binary(string), do: string(string)
  defp value(integer, _) when is_integer(integer), do: Integer.to_string(integer)
  defp value(float, _) when is_float(float), do: Float.to_string(float)
  defp value([], _), do: "[]"
  defp value(map, _) when map_size(map) == 0, do: "{}"

  defp value(list, depth) when is_list(list) do
    if Enum.all?(list, &(is_number(&1) or is_nil(&1))) do
      ["[", Enum.map_intersperse(list, ", ", &value(&1, depth)), "]"]
    else
      inner = Enum.map_intersperse(list, ",\n", &[indent(depth + 1), value(&1, depth + 1)])
      ["[\n", inner, "\n", indent(depth), "]"]
    end
  end

  defp value(map, depth) when is_map(map) do
    inner =
      map
      |> Enum.sort_by(fn {key, _} -> to_string(key) end)
      |> Enum.map_intersperse(",\n", fn {key, item} ->
        [indent(depth + 1), string(to_string(key)), ": ", value(item, depth + 1)]
      end)

    ["{\n", inner, "\n", indent(depth), "}"]
  end

  defp indent(depth), do: String.duplicate("  ", depth)

  defp string(string) do
    escaped =
      for <<char::utf8 <- string>>, into: "" do
        case char do
          ?" -> "\\\""
          ?\\ -> "\\\\"
          ?\n -> "\\n"
          ?\r -> "\\r"
          ?\t -> "\\t"
          c when c < 0x20 -> "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0")
          c -> <<c::utf8>>
        end
      end

    [?", escaped, ?"]
  end

  @doc "Decodes JSON text: objects become maps with string keys."
  @spec decode(String.t()) :: {:ok, term()} | {:error, term()}
  def decode(text) do
    case parse(skip(text)) do
      {value, rest} ->
        if skip(rest) == "", do: {:ok, value}, else: {:error, :trailing_data}
    end
  catch
    {:json_error, reason} -> {:error, reason}
  end

  defp parse("{" <> rest), do: object(skip(rest), %{})
  defp parse("[" <> rest), do: array(skip(rest), [])
  defp parse("\"" <> rest), do: chars(rest, [])
  defp parse("true" <> rest), do: {true, rest}
  defp parse("false" <> rest), do: {false, rest}
  defp parse("null" <> rest), do: {nil, rest}

  defp parse(text) do
    case Regex.run(~r/^-?\d+(\.\d+)?([eE][-+]?\d+)?/, text) do
      [number | _] ->
        rest = binary_part(text, byte_size(number), byte_size(text) - byte_size(number))

        value =
          if String.contains?(number, [".", "e", "E"]),
            do: number_to_float(number),
            else: String.to_integer(number)

        {value, rest}

      nil ->
        throw({:json_error, {:unexpected, String.slice(text, 0, 20)}})
    end
  end

  # Elixir's encoder writes floats such as "1.0e3"; Float.parse takes them.
  defp number_to_float(number) do
    {float, ""} = Float.parse(number)
    float
  end

  defp object("}" <> rest, acc), do: {acc, rest}

  defp object("\"" <> rest, acc) do
    {key, rest} = chars(rest, [])
    ":" <> rest = skip(rest)
    {value, rest} = parse(skip(rest))
    acc = Map.put(acc, key, value)

    case skip(rest) do
      "," <> rest -> object(skip(rest), acc)
      "}" <> rest -> {acc, rest}
      other -> throw({:json_error, {:bad_object, String.slice(other, 0, 20)}})
    end
  end

  defp object(other, _acc), do: throw({:json_error, {:bad_object, String.slice(other, 0, 20)}})

  defp array("]" <> rest, acc), do: {Enum.reverse(acc), rest}

  defp array(text, acc) do
    {value, rest} = parse(text)

    case skip(rest) do
      "," <> rest -> array(skip(rest), [value | acc])
      "]" <> rest -> {Enum.reverse([value | acc]), rest}
      other -> throw({:json_error, {:bad_array, String.slice(other, 0, 20)}})
    end
  end

  defp chars("\"" <> rest, acc), do: {IO.iodata_to_binary(Enum.reverse(acc)), rest}
  defp chars("\\\"" <> rest, acc), do: chars(rest, [?" | acc])
  defp chars("\\\\" <> rest, acc), do: chars(rest, [?\\ | acc])
  defp chars("\\/" <> rest, acc), do: chars(rest, [?/ | acc])
  defp chars("\\n" <> rest, acc), do: chars(rest, [?\n | acc])
  defp chars("\\r" <> rest, acc), do: chars(rest, [?\r | acc])
  defp chars("\\t" <> rest, acc), do: chars(rest, [?\t | acc])

  defp chars("\\u" <> <<hex::binary-size(4), rest::binary>>, acc),
    do: chars(rest, [<<String.to_integer(hex, 16)::utf8>> | acc])

  defp chars(<<char::utf8, rest::binary>>, acc), do: chars(rest, [<<char::utf8>> | acc])
  defp chars("", _acc), do: throw({:json_error, :unterminated_string})

  defp skip(<<c, rest::binary>>) when c in [?\s, ?\n, ?\r, ?\t], do: skip(rest)
  defp skip(text), do: text
end

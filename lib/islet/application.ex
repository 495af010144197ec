defmodule Islet.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    Supervisor.start_link([Islet.Owners | Islet.Pump.child_specs()] ++ [Islet.TLS.Sweeper],
      strategy: :one_for_one,
      name: Islet.Supervisor
    )
  end
end

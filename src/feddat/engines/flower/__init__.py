"""The Flower deployment engine: the same methods as the embedded engine, run by Flower's
SuperLink, SuperNodes and `flwr run` (docs/design.md §7).

- `server_app`: the ServerApp; its strategy drives the rounds of `engines.rounds`, as the
  embedded engine does, and calls `Method.server_round` (the server step).
- `client_app`: the ClientApp; one SuperNode is one client, named by its node config.
- `transport`: what travels (ArrayRecord / MetricRecord / ConfigRecord) and how the
  feddat configuration reaches both sides (run config).
- `launch`: start Flower's own daemons, submit a run, clean up every process.
- `guard`: a local federation's processes die with its launcher, however it dies.
- `secure`: secure aggregation with Flower's SecAgg+ (flower.secure_aggregation).
"""

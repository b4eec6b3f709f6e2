"""FedAvg + Adapter: each client trains the shared adapter A_s and its private head H_k on the
task loss; the server takes the weighted mean of the A_s it receives (Method.aggregate).

That client step is the hookable loop in common.py, which the drift-correcting baselines
extend; this method is that loop with no hook overridden.
"""

from __future__ import annotations

from feddat.algorithms.common import AdapterClient


class FedAvgAdapter(AdapterClient):
    name = "fedavg"

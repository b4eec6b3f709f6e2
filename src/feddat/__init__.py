"""feddat: Federated Dual-Adapter Teacher (arXiv 2308.12305) and its baselines."""

__version__ = "0.1.0"

"""Parameter-efficient modules: bottleneck adapters at sites wrapping transformer blocks."""

from feddat.peft.adapter import AdapterSite, BottleneckAdapter
from feddat.peft.model import AdaptedModel, check_state

__all__ = ["AdapterSite", "BottleneckAdapter", "AdaptedModel", "check_state"]

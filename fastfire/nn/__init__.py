"""The training engine: ActiveSets, layers, selectors, losses, optimizers and the Network."""

from fastfire.nn.active import ActiveSet
from fastfire.nn.network import Network
from fastfire.nn.selectors import Dense, Selector, resolve_selection

__all__ = ["ActiveSet", "Dense", "Network", "Selector", "resolve_selection"]

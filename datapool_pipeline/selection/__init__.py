"""Sample selection: diversity (greedy k-center) given the datapool, and stopping conditions."""

from datapool_pipeline.selection.kcenter import KCenterResult, greedy_k_center, nearest_pool_distance
from datapool_pipeline.selection.stopping import samples_to_select

__all__ = ["KCenterResult", "greedy_k_center", "nearest_pool_distance", "samples_to_select"]

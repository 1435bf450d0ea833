"""Grouping: pairwise affinity -> hierarchy of segments -> ranked candidate masks."""
from .grouping import ADDITIONS, DEFAULTS, EXTENDED_SETTINGS, GROUPINGS, PAPER_SETTINGS, RANKINGS, build_hierarchy, nms_masks, potential_from_affinity, propose, score_masks

__all__ = ["ADDITIONS", "DEFAULTS", "EXTENDED_SETTINGS", "GROUPINGS", "PAPER_SETTINGS", "RANKINGS", "build_hierarchy", "nms_masks", "potential_from_affinity", "propose", "score_masks"]

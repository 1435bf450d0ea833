"""Grouping: pairwise affinity -> hierarchy of segments -> ranked candidate masks."""

"""The studies drx ships: ablation grids (``ablations/``) and search spaces (``search_spaces/``)."""

"""Questions about a grid of cells: patch, path patching, the attribution estimate, PatchResult, Grid."""

"""Questions about a set of cells: joint patching, MIB's faithfulness, the Circuit."""

"""Searches that call the loop many times: find_bottleneck (denoising) and find_circuit (MIB's nodes)."""

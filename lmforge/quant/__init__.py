"""Quantization recipes: BitNet b1.58 layers, their layer swap, packing and training schedule."""

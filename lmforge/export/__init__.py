"""Export a trained run: Hugging Face transformers folders (`gpt` models) or plain safetensors (any model)."""
from lmforge.export.safetensors_export import export_safetensors

__all__ = ["export_safetensors"]

"""Models that need no download: the embedded SmolLM2-135M-Instruct and tiny random Llamas for tests."""

from cdra_ray.models.embedded import resolve_model, smollm2_dir, smollm2_tokenizer
from cdra_ray.models.tiny import build_tiny_model, train_tiny_tokenizer

__all__ = ["resolve_model", "smollm2_dir", "smollm2_tokenizer", "build_tiny_model", "train_tiny_tokenizer"]

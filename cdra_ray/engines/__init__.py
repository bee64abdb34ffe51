"""Generation backends behind one protocol (:class:`GenerationEngine`): vLLM and plain transformers.

``create_engine("vllm" | "hf", model_dir, **options)`` picks one; vLLM is imported only by the vLLM modules.
"""

from cdra_ray.engines.base import Completion, GenerationEngine, SamplingSettings
from cdra_ray.engines.factory import ENGINE_KINDS, create_engine

__all__ = ["Completion", "GenerationEngine", "SamplingSettings", "ENGINE_KINDS", "create_engine"]

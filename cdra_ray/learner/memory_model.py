"""How much memory a DeepSpeed learner rank needs: model states by ZeRO's rules, plus an activation estimate.

Mixed-precision AdamW keeps, per parameter: the 16-bit weight (2 B), its 16-bit gradient (2 B), an fp32 master
copy (4 B) and two fp32 Adam moments (8 B) = 16 B (in fp32 training the weight is its own master: 4 + 4 + 8 =
16 B as well). ZeRO partitions these across the N data-parallel ranks: stage 1 the master + moments, stage 2 also
the gradients, stage 3 also the weights. Optimizer offload (ZeRO-Offload) keeps master + moments on the CPU and
reduces each gradient partition into an fp32 CPU buffer (4 B) that CPU Adam reads, so the GPU holds gradients
only in transit (DeepSpeed's reduce buckets; ``TRANSIENT_BYTES`` below). Parameter offload (stage 3) moves the
16-bit weights to the CPU as well.

The activation estimate is deliberately rough (decoder-only transformer, sdpa/flash attention, so no
sequence-squared term): with gradient checkpointing one hidden state per layer boundary is kept and one layer's
working set is rebuilt during backward; the logits and their gradient come on top. ``python -m
cdra_ray.learner.memory_model`` prints the tables quoted in the README's "Scaling out" section.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
ADAM_BYTES = 8  # two fp32 moments
MASTER_BYTES = 4  # fp32 master weights (mixed precision) / the fp32 gradient CPU Adam reads (offload)
# ZeRO-3 holds up to stage3_max_live_parameters (1e9) gathered 16-bit weights plus a reduce bucket (5e8
# elements) at DeepSpeed's defaults: a ceiling of about 3 GB in 16 bit, whatever the model size.
TRANSIENT_BYTES = 3 * GB


@dataclass(frozen=True)
class ModelShape:
    """The numbers the estimate needs from a model's config.json."""

    name: str
    params: float
    hidden: int
    layers: int
    intermediate: int
    vocab: int


# Published configs (config.json of each model).
QWEN25_7B = ModelShape("Qwen2.5-7B-Instruct", 7.62e9, 3584, 28, 18944, 152064)
LLAMA3_70B = ModelShape("Llama-3.1-70B-Instruct", 70.6e9, 8192, 80, 28672, 128256)


@dataclass(frozen=True)
class RankMemory:
    """Bytes per learner rank, split by what they hold and where."""

    weights_gpu: float
    grads_gpu: float
    master_gpu: float
    adam_gpu: float
    weights_cpu: float = 0.0
    grads_cpu: float = 0.0
    master_cpu: float = 0.0
    adam_cpu: float = 0.0

    @property
    def gpu(self) -> float:
        return self.weights_gpu + self.grads_gpu + self.master_gpu + self.adam_gpu

    @property
    def cpu(self) -> float:
        return self.weights_cpu + self.grads_cpu + self.master_cpu + self.adam_cpu


def model_state_bytes(params: float, *, ranks: int = 1, zero_stage: int = 3, precision: str = "bf16",
                      offload_optimizer: bool = False, offload_params: bool = False) -> RankMemory:
    """Per-rank bytes of weights, gradients, master weights and Adam moments under ZeRO ``zero_stage``."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    if ranks < 1 or params <= 0:
        raise ValueError(f"need ranks >= 1 and params > 0, got ranks={ranks}, params={params}")
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be bf16, fp16 or fp32, got {precision!r}")
    if offload_params and zero_stage != 3:
        raise ValueError("parameter offload needs ZeRO stage 3")
    if offload_optimizer and zero_stage == 0:
        raise ValueError("optimizer offload needs ZeRO stage >= 1")
    width = 4 if precision == "fp32" else 2
    master = 0 if precision == "fp32" else MASTER_BYTES  # fp32 training updates the weights themselves

    def share(stage_from: int) -> float:  # partitioned across ranks from this ZeRO stage on
        return params / ranks if zero_stage >= stage_from else params

    weights, grads = width * share(3), width * share(2)
    optimizer_master, adam = master * share(1), ADAM_BYTES * share(1)
    if not offload_optimizer:
        return RankMemory(0.0 if offload_params else weights, grads, optimizer_master, adam,
                          weights_cpu=weights if offload_params else 0.0)
    # ZeRO-Offload: CPU Adam steps the fp32 partition; gradients land in an fp32 CPU buffer
    return RankMemory(0.0 if offload_params else weights, 0.0, 0.0, 0.0,
                      weights_cpu=weights if offload_params else 0.0, grads_cpu=MASTER_BYTES * share(1),
                      master_cpu=MASTER_BYTES * share(1), adam_cpu=adam)


def activation_bytes(shape: ModelShape, tokens: int, *, checkpointing: bool = True, width: int = 2) -> float:
    """Rough activation memory of one micro-batch of ``tokens`` tokens (forward + backward peak)."""
    per_layer_working = tokens * (8 * shape.hidden + 3 * shape.intermediate) * width
    kept = tokens * shape.hidden * shape.layers * width + per_layer_working if checkpointing \
        else per_layer_working * shape.layers
    logits = 2 * tokens * shape.vocab * width  # logits and their gradient
    return kept + logits


def extrapolate_peak(measured_peak: float, measured_states: float, target_states: float,
                     target_activations: float) -> dict[str, float]:
    """Carry a measured peak over to a bigger model: model states from the arithmetic, activations from the
    estimate, and what the small run used beyond its own model states (buffers, allocator) kept as an offset."""
    overhead = max(0.0, measured_peak - measured_states)
    return {"overhead": overhead, "states": target_states, "activations": target_activations,
            "peak": target_states + target_activations + overhead}


@dataclass(frozen=True)
class Layout:
    name: str
    ranks: int
    zero_stage: int
    offload_optimizer: bool = False
    offload_params: bool = False


def memory_rows(shape: ModelShape, layouts: list[Layout], tokens: int) -> list[dict[str, object]]:
    """One row per layout: GB per rank of each model state, activations, and the GPU / CPU totals."""
    rows = []
    activations = activation_bytes(shape, tokens)
    for layout in layouts:
        m = model_state_bytes(shape.params, ranks=layout.ranks, zero_stage=layout.zero_stage,
                              offload_optimizer=layout.offload_optimizer, offload_params=layout.offload_params)
        transient = TRANSIENT_BYTES if layout.zero_stage == 3 else 0.0
        rows.append({
            "layout": layout.name, "ranks": layout.ranks, "zero": layout.zero_stage,
            "weights": (m.weights_gpu + m.weights_cpu) / GB, "grads": (m.grads_gpu + m.grads_cpu) / GB,
            "master": (m.master_gpu + m.master_cpu) / GB, "adam": (m.adam_gpu + m.adam_cpu) / GB,
            "gpu_states": m.gpu / GB, "gpu_total": (m.gpu + activations + transient) / GB, "cpu": m.cpu / GB,
        })
    return rows


def format_rows(rows: list[dict[str, object]]) -> str:
    header = ("| layout | ranks | ZeRO | weights | grads | fp32 master | Adam m+v | GPU: states | GPU: + activations "
              "+ buffers | CPU RAM |")
    lines = [header, "|" + " --- |" * 10]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['ranks']} | {r['zero']} | {r['weights']:.1f} | {r['grads']:.1f} | "
                     f"{r['master']:.1f} | {r['adam']:.1f} | {r['gpu_states']:.1f} | {r['gpu_total']:.1f} | "
                     f"{r['cpu']:.1f} |")
    return "\n".join(lines)


PAPER_LAYOUTS = [
    Layout("1 rank, no offload", 1, 3),
    Layout("1 rank, optimizer offload", 1, 3, offload_optimizer=True),
    Layout("2 ranks, optimizer offload (the paper; the preset)", 2, 3, offload_optimizer=True),
    Layout("2 ranks, no offload", 2, 3),
]
LLAMA70_LAYOUTS = [
    Layout("8 ranks (1 node), no offload", 8, 3),
    Layout("8 ranks (1 node), optimizer offload", 8, 3, offload_optimizer=True),
    Layout("16 ranks (2 nodes), no offload", 16, 3),
    Layout("16 ranks (2 nodes), optimizer offload", 16, 3, offload_optimizer=True),
    Layout("32 ranks (4 nodes), no offload", 32, 3),
]
PAPER_TOKENS = 5 * (1024 + 1024)  # a micro-batch of 5 responses, prompt + 1024 generated tokens


def main() -> None:
    for shape, layouts in ((QWEN25_7B, PAPER_LAYOUTS), (LLAMA3_70B, LLAMA70_LAYOUTS)):
        print(f"\n{shape.name}: {shape.params / 1e9:.2f} B parameters, micro-batch of {PAPER_TOKENS} tokens "
              f"(activations ~{activation_bytes(shape, PAPER_TOKENS) / GB:.1f} GB with checkpointing); GB per rank")
        print(format_rows(memory_rows(shape, layouts, PAPER_TOKENS)))


if __name__ == "__main__":
    main()

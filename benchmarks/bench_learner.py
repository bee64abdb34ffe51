"""Learner throughput: training tokens/s and achieved FLOP/s of one CDPA update, against this machine's fp32
matmul peak (measured by this script, same threads) and against a bare-torch step on the same batch.

What runs, interleaved (learner, learner without prompt sharing, bare, learner, ...), after warm-up:
- ``Learner.train_on_groups`` (cdra_ray.learner: DeepSpeed engine, batch building, advantages, CDPA loss with
  KL to the reference, clipped grad norm, AdamW step) on one synthetic batch of G responses, as configured by
  default (``share_prompt_forward``: a group's prompt runs once per micro-batch), and with that switched off;
- a bare-torch step on the very same tensors: HF model, the same log-prob and loss functions, backward,
  ``clip_grad_norm_``, ``torch.optim.AdamW``: the floor any learner pays, so the difference is the learner's
  own overhead.

FLOP count per update (model FLOPs, the usual 6 N T rule, applied where the work really happens):
    6 * N_body * T_all  +  6 * N_head * T_resp
N_body = parameters outside the token embedding / LM head; N_head = vocab x hidden (the LM-head matmul; tied
or not, it is done once per predicted token); T_all = real (non-pad) tokens of the forward pass (prompt +
response of every row); T_resp = response tokens (the learner asks for logits of response positions only).
With prompt sharing T_all counts what is really computed: per micro-batch, each distinct prompt once plus
every row's (padded) response. "update tok/s" = the update's real tokens / s, the same work for every variant:
how fast an update goes. Attention score FLOPs (about 10% more at these lengths) and the gradient-checkpointing
recompute are not counted, so the utilisation is a slight underestimate. The plain "6 x params x tokens"
figure is in the JSON too (``flops_simple``), for comparison.

Target: learner >= 50% of the machine's fp32 matmul peak.

    python benchmarks/bench_learner.py                      # SmolLM2-135M, G=5, 192 prompt + 192 response
    python benchmarks/bench_learner.py --model tiny --response-tokens 64   # seconds, for a smoke check
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from cdra_ray.actors.environment import MALLOC_ENV  # noqa: E402

TARGET_PEAK_SHARE = 0.5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="smollm2 (the demo model), tiny, or an HF model directory")
    p.add_argument("--group-size", type=int, default=5, help="G responses per group (rows per update)")
    p.add_argument("--groups", type=int, default=1, help="groups per update")
    p.add_argument("--prompt-tokens", type=int, default=192)
    p.add_argument("--response-tokens", type=int, default=192)
    p.add_argument("--micro-batch-size", type=int, default=5)
    p.add_argument("--beta", type=float, default=0.05, help="KL coefficient (reference log-probs are given data)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (learner, bare, matmul)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--matmul-n", type=int, default=2048, help="side of the square matrices of the peak probe")
    p.add_argument("--skip-bare", action="store_true", help="do not run the bare-torch comparison")
    return p.parse_args(argv)


def resolve_model(name: str, scratch: Path) -> Path:
    if name == "smollm2":
        from cdra_ray.models.embedded import smollm2_dir

        return smollm2_dir()
    if name == "tiny":
        from cdra_ray.models.tiny import build_tiny_model

        return build_tiny_model(scratch / "tiny", hidden=128, layers=2, heads=2)
    return Path(name)


def synthetic_groups(model_dir: Path, args) -> list:
    """G responses per group with random (but valid) token ids and spread-out outcome scores, so every
    advantage is non-zero and the loss does real work."""
    import json

    import torch

    from cdra_ray.messages import Group, Sample, Scenario, StepScore

    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(0)
    groups = []
    for k in range(args.groups):
        prompt = torch.randint(100, vocab - 100, (args.prompt_tokens,), generator=g).tolist()
        samples, scores, steps, refs = [], [], [], []
        for i in range(args.group_size):
            ids = torch.randint(100, vocab - 100, (args.response_tokens,), generator=g).tolist()
            samples.append(Sample(response_text="x" * len(ids), response_token_ids=ids,
                                  sampling_logprobs=[-3.0] * len(ids), finish_reason="length"))
            scores.append([StepScore(0, len(ids), score=(i - args.group_size / 2) / args.group_size)])
            steps.append([0] * len(ids))
            refs.append([-3.0] * len(ids))
        group = Group(scenario=Scenario(uid=f"bench-{k}", preference="p", query="q", index=k),
                      prompt_token_ids=prompt, samples=samples, policy_version=0,
                      step_spans=[[(0, len(s.response_text))] for s in samples], token_steps=steps,
                      step_scores=scores, ref_logprobs=torch.tensor(refs) if args.beta > 0 else None)
        groups.append(group)
    return groups


def count_params(model) -> dict[str, int]:
    """Total parameters, and the share of the token embedding / LM head (counted once when tied)."""
    seen, total, head = set(), 0, 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    head_w = out.weight if out is not None else emb
    head = head_w.numel()
    tied = head_w is emb or head_w.data_ptr() == emb.data_ptr()
    body = total - head - (0 if tied else emb.numel())
    return {"total": total, "head": head, "body": body, "tied": int(tied)}


class BareStep:
    """The same update in plain torch: the floor under any learner implementation on this machine."""

    def __init__(self, model_dir: Path, args, batch, lr: float = 5e-6):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                          attn_implementation="sdpa")
        self.model.train()
        if args.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.batch = batch
        self.args = args

    def step(self) -> None:
        from cdra_ray.algorithms.policy_loss import cdpa_policy_loss
        from cdra_ray.learner.batch import micro_batches
        from cdra_ray.learner.logprobs import response_logprobs

        torch, b = self.torch, self.batch
        n = b.num_rows
        for rows in micro_batches(n, self.args.micro_batch_size):
            sub = b.select(rows)
            lp = response_logprobs(self.model, sub.input_ids, sub.attention_mask, sub.position_ids,
                                   sub.response_ids)
            adv = (sub.step_rewards[:, :1] - sub.step_rewards[:, :1].mean()).expand_as(lp).contiguous()
            loss, _ = cdpa_policy_loss(lp, lp.detach(), sub.ref_logprobs, adv, sub.response_mask,
                                       beta=self.args.beta, aggregation="seq-mean-token-sum")
            (loss * len(rows) / n).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def shared_prompt_tokens(batch, micro_batch_size: int) -> int:
    """Token positions the learner computes with prompt sharing: per micro-batch, each distinct prompt once, and
    every row's response padded to the micro-batch's longest (see ``shared_prompt_logprobs``)."""
    from cdra_ray.learner.batch import micro_batches

    total = 0
    for rows in micro_batches(batch.num_rows, micro_batch_size):
        sub = batch.select(rows)
        width_p = sub.prompt_width
        prompts = {tuple(sub.input_ids[i, :width_p][sub.attention_mask[i, :width_p].bool()].tolist())
                   for i in range(sub.num_rows)}
        total += sum(len(p) for p in prompts) + sub.num_rows * sub.response_width
    return total


def main(argv=None) -> dict:
    args = parse_args(argv)
    common.reexec_with(MALLOC_ENV)  # the learner actor's environment (actors/environment.py), for both variants
    common.quiet_logs()
    import torch

    torch.set_num_threads(args.threads)
    from cdra_ray.learner.batch import build_batch
    from cdra_ray.learner.learner import Learner, LearnerSettings

    peak = common.matmul_peak_flops(args.matmul_n, threads=args.threads)
    print(f"fp32 matmul peak ({args.matmul_n}^2, {peak['threads']} threads): best {peak['best_flops'] / 1e9:.1f} "
          f"GFLOP/s, median {peak['median_flops'] / 1e9:.1f}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="bench_learner_") as tmp:
        model_dir = resolve_model(args.model, Path(tmp))
        groups = synthetic_groups(model_dir, args)
        settings = LearnerSettings(
            model_dir=str(model_dir), lr=5e-6, beta=args.beta, advantage="grpo", aggregation="seq-mean-token-sum",
            micro_batch_size=args.micro_batch_size, gradient_checkpointing=args.gradient_checkpointing,
            num_threads=args.threads, zero_stage=0, temperature=1.0,
        )
        learner = Learner(settings)
        per_row = Learner(replace(settings, share_prompt_forward=False))
        params = count_params(learner.model)
        batch = build_batch(groups, pad_token_id=learner.pad_token_id)
        variants = {"learner": lambda: learner.train_on_groups(groups),
                    "learner, no prompt sharing": lambda: per_row.train_on_groups(groups)}
        if not args.skip_bare:
            bare = BareStep(model_dir, args, batch)
            variants["bare torch"] = bare.step
        results = common.interleaved(variants, warmup=args.warmup, repeats=args.repeats)
        peak_after = common.matmul_peak_flops(args.matmul_n, threads=args.threads)  # the machine may have changed

    t_all = int(batch.attention_mask.sum())
    t_resp = int(batch.response_mask.sum())
    sharing = settings.share_prompt_forward and not args.gradient_checkpointing
    computed = {"learner": shared_prompt_tokens(batch, args.micro_batch_size) if sharing else t_all}
    flops_of = {name: 6 * params["body"] * computed.get(name, t_all) + 6 * params["head"] * t_resp
                for name in results}
    flops = flops_of["learner"]
    flops_simple = 6 * params["total"] * t_all
    peak_best = max(peak["best_flops"], peak_after["best_flops"])

    headers = ["variant", "s/update (median)", "update tok/s", "computed tok", "GFLOP/s", "% of peak",
               "target % of peak", "status"]
    rows, payload_variants = [], {}
    for name, (seconds, _) in results.items():
        med = common.median(seconds)
        achieved = common.ratio(flops_of[name], med)
        share = common.ratio(achieved, peak_best)
        is_learner = name == "learner"
        rows.append([name, med, common.ratio(t_all, med), computed.get(name, t_all), achieved / 1e9, 100 * share,
                     100 * TARGET_PEAK_SHARE if is_learner else None,
                     common.target_status(share, TARGET_PEAK_SHARE) if is_learner else "-"])
        payload_variants[name] = {"seconds": seconds, "seconds_median": med, "train_tokens_per_s":
                                  common.ratio(t_all, med), "computed_tokens": computed.get(name, t_all),
                                  "flops_per_s": achieved, "peak_share": share}
    sharing_gain = common.ratio(common.median(results["learner, no prompt sharing"][0]),
                                common.median(results["learner"][0]))
    # the learner's own overhead: its run without prompt sharing does exactly the bare step's computation
    overhead = common.ratio(common.median(results["learner, no prompt sharing"][0]),
                            common.median(results["bare torch"][0])) if "bare torch" in results else float("nan")
    table = common.format_table(headers, rows, title=(
        f"Learner: {args.group_size * args.groups} rows x ({args.prompt_tokens} prompt + {args.response_tokens} "
        f"response) tokens = {t_all} tokens/update; params {params['total'] / 1e6:.1f}M "
        f"(body {params['body'] / 1e6:.1f}M, head {params['head'] / 1e6:.1f}M); {args.threads} threads; "
        f"fp32 matmul peak {peak_best / 1e9:.1f} GFLOP/s (n={args.matmul_n})"))
    notes = [f"FLOPs/update = 6*N_body*T_all + 6*N_head*T_resp = 6*{params['body']}*{t_all} + 6*{params['head']}*"
             f"{t_resp} = {flops_of.get('bare torch', flops_of['learner']) / 1e9:.1f} GFLOP without prompt sharing, "
             f"{flops / 1e9:.1f} with it (T_all = {computed['learner']}); 6*N*T would say {flops_simple / 1e9:.1f}",
             f"speed-up from prompt sharing: {sharing_gain:.2f}x",
             f"learner (no prompt sharing) / bare-torch time = {overhead:.2f}x (DeepSpeed, batch building, metrics)"]
    payload = {
        "model": str(model_dir), "threads": args.threads, "tokens_per_update": t_all, "response_tokens": t_resp,
        "params": params, "flops_per_update": flops, "flops_simple": flops_simple,
        "matmul_peak": {"before": peak, "after": peak_after, "best": peak_best},
        "variants": payload_variants, "learner_over_bare": overhead, "prompt_sharing_speedup": sharing_gain,
        "target": {"peak_share": TARGET_PEAK_SHARE,
                   "status": common.target_status(payload_variants["learner"]["peak_share"], TARGET_PEAK_SHARE)},
        "machine": common.machine_info(),
    }
    common.print_report(table, "learner", payload, notes)
    return payload


if __name__ == "__main__":
    main()

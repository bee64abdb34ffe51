"""SFT trainer throughput: tokens/s and achieved FLOP/s of Pers-GenPRM SFT steps (cdra_ray.sft, the learner's
DeepSpeed engine), against this machine's fp32 matmul peak (the learner benchmark's probe, same threads).

What runs: ``SFTTrainer.train_step`` on the bundled D_Rea sample (``prm`` task: the reward service's critique
prompt + critique/score target), after warm-up steps, as configured by ``--micro-batch-size``/``--grad-accum``.

FLOPs per step (model FLOPs, the 6 N T rule applied where the work happens, as in bench_learner.py):
    6 * N_body * T_all  +  6 * N_head * T_logits
T_all = real tokens of the step; T_logits = positions that get LM-head logits (per micro-batch, rows x the
longest target + 1: the trainer asks only for the target's logits). Attention-score FLOPs are not counted.

    python benchmarks/bench_sft.py                       # SmolLM2-135M, 4 x 2 examples per step
    python benchmarks/bench_sft.py --model tiny --steps 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_learner import count_params, resolve_model  # noqa: E402
from cdra_ray.actors.environment import MALLOC_ENV  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="smollm2 (the demo model), tiny, or an HF model directory")
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--matmul-n", type=int, default=2048)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    common.reexec_with(MALLOC_ENV)
    common.quiet_logs()
    import torch
    from transformers import AutoTokenizer

    from cdra_ray.data.scenarios import SAMPLES_DIR
    from cdra_ray.sft.data import load_records
    from cdra_ray.sft.tasks import create_sft_task
    from cdra_ray.sft.trainer import SFTTrainer, TrainerSettings

    torch.set_num_threads(args.threads)
    peak = common.matmul_peak_flops(args.matmul_n, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp:
        model_dir = resolve_model(args.model, Path(tmp))
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        task = create_sft_task("prm")
        examples = task.build_examples(tok, load_records(SAMPLES_DIR / "deeppref_sample_d_rea.jsonl", "d_rea"),
                                       args.max_length)
        total = args.warmup + args.steps
        trainer = SFTTrainer(task, str(model_dir), TrainerSettings(
            total_steps=total, micro_batch_size=args.micro_batch_size, grad_accum_steps=args.grad_accum, lr=1e-5,
            num_threads=args.threads, eval_every=0), examples, [], tok.pad_token_id, tokenizer=tok)
        params = count_params(trainer.model)
        rows, seconds, tokens, flops = [], [], [], []
        for k in range(total):
            batch = trainer.step_examples()
            metrics = trainer.train_step()
            if k < args.warmup:
                continue
            t_all = sum(len(e.input_ids) for e in batch)
            t_logits = sum(len(m) * (max(e.count for e in m) + 1)
                           for m in [batch[i:i + args.micro_batch_size]
                                     for i in range(0, len(batch), args.micro_batch_size)])
            seconds.append(metrics["train/step_time_s"])
            tokens.append(t_all)
            flops.append(6 * params["body"] * t_all + 6 * params["head"] * t_logits)
        peak_after = common.matmul_peak_flops(args.matmul_n, threads=args.threads)
    peak_best = max(peak["best_flops"], peak_after["best_flops"])
    med = common.median(seconds)
    tok_s = sum(tokens) / sum(seconds)
    achieved = sum(flops) / sum(seconds)
    headers = ["variant", "s/step (median)", "tokens/step", "tok/s", "GFLOP/s", "% of peak"]
    rows = [["sft prm", med, sum(tokens) / len(tokens), tok_s, achieved / 1e9, 100 * achieved / peak_best]]
    table = common.format_table(headers, rows, title=(
        f"SFT (prm task): {args.micro_batch_size} x {args.grad_accum} examples/step, params "
        f"{params['total'] / 1e6:.1f}M; {args.threads} threads; fp32 matmul peak {peak_best / 1e9:.1f} GFLOP/s"))
    payload = {"model": str(args.model), "threads": args.threads, "seconds": seconds, "tokens": tokens,
               "tokens_per_s": tok_s, "flops_per_s": achieved, "peak_share": achieved / peak_best,
               "matmul_peak": {"before": peak, "after": peak_after, "best": peak_best}, "params": params,
               "machine": common.machine_info()}
    common.print_report(table, "sft", payload)
    return payload


if __name__ == "__main__":
    main()

"""The ``cdra-ray`` command.

    cdra-ray train --config cpu_demo [key=value ...]    run CDPA (local Ray, or the cluster in RAY_ADDRESS)
    cdra-ray config --config cpu_demo [key=value ...]   print the resolved config and exit
    cdra-ray check-data PATH                            validate a (preference, query) JSONL file
    cdra-ray prepare-model [NAME]                       convert the embedded demo model into an HF dir
    cdra-ray ablate [PRESET ...] [key=value ...]        the paper's Table 3 reward ablation, one comparison table
    cdra-ray construct --config construct_cpu_demo      build DeepPref-style data (trees, D_Rea, D_RFT)
    cdra-ray evaluate --config P [key=value ...]        Table 1 metrics of policies and prompting baselines
    cdra-ray recipe --config P [key=value ...]          every stage of the paper, resumable, one run directory
    cdra-ray serve-reward --config P [key=value ...]    serve the reward model over HTTP on Ray Serve
    cdra-ray sft --task prm|rft|prm_head|scalar_rm --config sft_cpu_demo [key=value ...]   SFT -> HF checkpoint
    cdra-ray prm-eval --config sft_cpu_demo [key=value ...]   critic quality before/after SFT on held-out scenarios
"""

from __future__ import annotations

import argparse
import logging
import sys

EPILOG = """\
Overrides are key=value pairs over the dotted keys of the config schema (cdra_ray/config/schema.py), e.g.
  train.total_updates=3 rollout.group_size=5 train.max_staleness=1 reward.kind=pers_genprm
Presets live in configs/: cpu_demo, tiny_test, paper_qwen7b_4gpu (train); construct_cpu_demo, sft_cpu_demo,
recipe_cpu_demo, recipe_paper (the other stages); *_tiny_test and serve_tiny (tests).
Resume a stopped run with the same command plus run.resume=true.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdra-ray", description="Critique-Driven Reasoning Alignment on Ray",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "run CDPA training"), ("config", "print the resolved config"),
                            ("construct", "build DeepPref-style data: council trees, D_Rea, D_RFT"),
                            ("evaluate", "evaluate policies and prompting baselines with an LLM judge (Table 1)"),
                            ("recipe", "run the paper's stages in order into one run directory (resumable)"),
                            ("serve-reward", "serve the reward model over HTTP on Ray Serve (OpenRLHF /get_reward, "
                                             "/v1/score_steps, /health) until Ctrl-C")):
        p = sub.add_parser(name, help=help_text, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", "-c", default=None, help="preset name in configs/ or a YAML path")
        p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    p = sub.add_parser("sft", help="supervised fine-tuning: Pers-GenPRM critic, RFT policy, ablation reward models",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("prm", "rft", "prm_head", "scalar_rm"), default=None,
                   help="what to train (default: sft.task)")
    p.add_argument("--config", "-c", default=None, help="preset name in configs/ or a YAML path")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    p = sub.add_parser("prm-eval", help="critic-quality report of Pers-GenPRM before/after SFT (held-out scenarios)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", default=None, help="preset name in configs/ or a YAML path")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    p = sub.add_parser("check-data", help="validate a JSONL file of (preference, query) scenarios")
    p.add_argument("path", help="JSONL path or builtin:NAME")
    p.add_argument("--max-field-chars", type=int, default=None,
                   help="longest accepted preference/query/id text (default: data.max_field_chars of the schema)")
    p = sub.add_parser("ablate", help="run reward-model ablation presets (configs/ablations/) with equal budgets "
                                      "and write one comparison table")
    p.add_argument("items", nargs="*", help="preset names (default: all six Table 3 rows) and key=value overrides")
    p.add_argument("--budget", type=int, default=None, help="train.total_updates for every preset")
    p.add_argument("--output-dir", default="runs/ablation", help="where runs and ablation.{md,csv,json} go")
    p.add_argument("--skip-existing", action="store_true", help="reuse finished runs (resume an ablation)")
    p.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=None,
                   help="add the evaluation metrics of every trained policy (default: on when evaluate.judge.model "
                        "is set)")
    p = sub.add_parser("prepare-model", help="convert the embedded SmolLM2 GGUF into a cached HF directory")
    p.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    return parser


def parse_command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """Like ``parse_args``, but ``key=value`` overrides may also follow the options (``ablate --budget 2 k=v``,
    ``train --config P --flag k=v``): argparse stops filling a positional list once an option interrupts it."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    target = "overrides" if hasattr(args, "overrides") else "items" if hasattr(args, "items") else None
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if extra and (target is None or stray):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        setattr(args, target, list(getattr(args, target) or []) + extra)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cdra_ray.config import ConfigError, load_config, to_yaml
    from cdra_ray.data.scenarios import ScenarioDataError, load_scenarios
    from cdra_ray.sft.data import SFTDataError

    try:
        if args.command == "config":
            print(to_yaml(load_config(args.config, args.overrides)))
        elif args.command == "check-data":
            scenarios = load_scenarios(args.path, max_field_chars=args.max_field_chars)
            print(f"{args.path}: {len(scenarios)} valid scenarios")
        elif args.command == "prepare-model":
            from cdra_ray.models.embedded import resolve_model

            print(resolve_model(args.name))
        elif args.command == "ablate":
            from cdra_ray.ablation import run_ablation, split_presets_and_overrides, to_markdown

            presets, overrides = split_presets_and_overrides(args.items)
            kwargs = {"presets": presets} if presets else {}
            rows = run_ablation(overrides=overrides, budget=args.budget, output_dir=args.output_dir,
                                skip_existing=args.skip_existing, evaluate=args.evaluate, **kwargs)
            print(to_markdown(rows))
        elif args.command == "construct":
            from cdra_ray.construction import run_construction

            print(run_construction(load_config(args.config, args.overrides)))
        elif args.command == "evaluate":
            from cdra_ray.evaluation.run import run_evaluation

            result = run_evaluation(load_config(args.config, args.overrides))
            print((result["dir"] / "table.md").read_text(encoding="utf-8"))
            print(f"report: {result['dir']}")
        elif args.command == "recipe":
            from cdra_ray.recipe import run_recipe

            status = run_recipe(load_config(args.config, args.overrides), preset=args.config,
                                overrides=args.overrides)
            for entry in status:
                seconds = "" if entry.get("seconds") is None else f"{entry['seconds']:.0f} s"
                print(f"{entry['stage']:>12}  {entry['state']:<8} {seconds:>8}  {entry['dir']}")
        elif args.command == "serve-reward":
            from cdra_ray.serving.launch import serve_reward

            serve_reward(load_config(args.config, args.overrides))
        elif args.command == "sft":
            import json

            from cdra_ray.sft.run import run_sft

            final = run_sft(load_config(args.config, args.overrides), args.task)
            evals = json.loads((final.parent / "summary.json").read_text())["evals"]
            if len(evals) >= 2:
                print(f"held-out loss {evals[0]['eval/loss']:.4f} (step {evals[0]['step']}) -> "
                      f"{evals[-1]['eval/loss']:.4f} (step {evals[-1]['step']})")
            print(final)
        elif args.command == "prm-eval":
            from cdra_ray.sft.prm_eval import run_prm_eval

            print(run_prm_eval(load_config(args.config, args.overrides)))
        elif args.command == "train":
            from cdra_ray.train import train_command

            return train_command(load_config(args.config, args.overrides))
    except (ConfigError, ScenarioDataError, SFTDataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from cdra_ray.recipe import RecipeError

        if not isinstance(err, RecipeError):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

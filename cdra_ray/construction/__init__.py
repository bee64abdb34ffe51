"""DeepPref-style data construction (paper §2.2, App. E): a persona council grows a tree of thoughts per (P, q),
a value judge prunes it, every surviving path gets a final answer and step-wise critiques; the outputs are the
Pers-GenPRM set D_Rea and the policy's RFT set D_RFT.

Layout: ``tree.py`` (pure tree logic), ``prompts.py`` (council and judge prompts), ``backend.py`` (model calls),
``search.py`` (one scenario), ``records.py`` (trees -> D_Rea / D_RFT / DeepPref export), ``inputs.py`` (JSONL,
PrefEval, DeepPref), ``outputs.py`` (files, resume, stats), ``engines.py`` + ``ray_shells.py`` (Ray), ``run.py``
(``cdra-ray construct``).
"""


def run_construction(config):
    """See :func:`cdra_ray.construction.run.run_construction` (imported lazily: no Ray at package import)."""
    from cdra_ray.construction.run import run_construction as run

    return run(config)


__all__ = ["run_construction"]

"""Supervised fine-tuning stages: the Pers-GenPRM critic (paper §2.3, Eq. 2), the policy's RFT initialisation
(§2.4 step 1), the trainable ablation reward models, and the critic-quality report.

``cdra-ray sft --task prm|rft|prm_head|scalar_rm`` -> :func:`cdra_ray.sft.run.run_sft`;
``cdra-ray prm-eval`` -> :func:`cdra_ray.sft.prm_eval.run_prm_eval`. Records: ``data.py``; records to token
examples (rendered by the functions inference uses): ``examples.py``; losses: ``losses.py``; what differs per
task: ``tasks.py``; the one trainer (the learner's DeepSpeed engine): ``trainer.py``.
"""

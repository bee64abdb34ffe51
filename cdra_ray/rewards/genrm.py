"""``genrm``: a generative reward model that critiques the WHOLE response, then scores it in [-1, 1].

Table 3's "GRPO (with GRM)": critique supervision without process supervision. Same judge machinery as
Pers-GenPRM (critique, then a regex-forced ``SCORE:`` line; cache; dedup; retry; parse-rate floor), but one request
per response and one span over the whole response (see :mod:`cdra_ray.rewards.judge`), so it pairs with the
outcome estimator ``grpo``. Pers-GenPRM's step prompt asks about step j given steps 1..j; this prompt asks about
the answer as a whole. The wording is ours; the scale is the paper's [-1, 1].
"""

from __future__ import annotations

from cdra_ray.rewards.base import register_reward_model
from cdra_ray.rewards.judge import STEP_SCALE
from cdra_ray.rewards.outcome_judge import UNTRUSTED_NOTE, SingleCritiqueJudgeModel  # noqa: F401

OUTCOME_RUBRIC = """You review a complete answer that an assistant wrote for one particular user. Decide how well the
answer as a whole serves this user: does it respect the preference they stated, does it notice the needs and values
that preference implies without being told, does its reasoning hold together, and is the final advice concrete,
useful and safe for this person?

Scores run from -1 to 1. Be strict and use the whole range:
  0.9 to 1.0     exceptional: finds a non-obvious need of the user and answers it precisely
  0.6 to 0.89    strong: respects the preference and adds well-grounded, useful nuance
  0.2 to 0.59    adequate: respects the stated preference but stays on the surface
  -0.19 to 0.19  generic: makes little use of the preference
  -0.2 to -0.59  flawed: misreads the preference, or its advice is weak or poorly supported
  -0.6 to -1.0   contradicts the user's preference or could harm them

Answer with a short critique of the whole answer (two to four sentences), then one last line of the form
SCORE: <number between -1 and 1>
and nothing after it."""

@register_reward_model("genrm")
class GenRM(SingleCritiqueJudgeModel):
    """Critique-then-score of the whole response, one span per response, score in [-1, 1]."""

    kind = "genrm"
    scale = STEP_SCALE
    system = OUTCOME_RUBRIC
    answer_label = "The assistant's complete answer:"
    instruction = "Critique the answer as a whole, then end with the line SCORE: <number between -1 and 1>."
    default_critique_tokens = 128


outcome_messages = GenRM.messages  # (P, q, response slots) -> chat messages
render_outcome_prompt = GenRM.render_prompt  # (tokenizer, P, q, response) -> prompt token ids

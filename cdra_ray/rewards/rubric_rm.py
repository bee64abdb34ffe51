"""``rubric_rm``: an LLM judge applying a written rubric to the whole response (Table 3's "Rubric-based RM").

The rubric is the paper's holistic review (App. E, Fig. 13) in our own words: reasoning 0-30 points, discovery of
unstated preferences 0-40, answer quality 0-30, summed into ``FINAL SCORE: <0-100>`` placed in the paper's bands.
The judge writes its reasoning with the points per criterion, then the score line is forced by a regex admitting
an integer 0..100 (:data:`~cdra_ray.rewards.judge.HUNDRED_SCALE`). The score maps linearly onto the reward scale:
r = score / 50 - 1 (0 -> -1, 50 -> 0, 100 -> 1), so ``default_score`` is on [-1, 1] like every variant's.
Outcome level: one span per response, for the ``grpo`` estimator.
"""

from __future__ import annotations

from cdra_ray.rewards.base import register_reward_model
from cdra_ray.rewards.judge import HUNDRED_SCALE
from cdra_ray.rewards.outcome_judge import SingleCritiqueJudgeModel

RUBRIC = """You are the last reviewer of an assistant's complete answer to one particular user. Judge the answer as a
whole, on three criteria, and award points for each:
1. Reasoning (0-30 points): does the line of thought hold together, each step following sensibly from the one
   before it?
2. Discovery of unstated preferences (0-40 points): does the answer find needs or motives that the user did not
   spell out but plausibly has, beyond the obvious? How insightful is its main finding?
3. Answer quality (0-30 points): is the final answer practical and helpful, and does it fit both what the user said
   and what was inferred about them? Does it actually solve the user's problem?

Add the points into one total from 0 to 100. The total should land in the band that describes the answer:
  0-20    seriously flawed or off-topic
  21-40   poor, with major problems
  41-60   middling, with little insight
  61-75   good, with sound reasoning
  76-85   very good, with clear insight
  86-95   excellent, with exceptional insight
  96-100  flawless and truly original (almost never deserved)

Write your reasoning first, naming the points you award for each criterion, then one last line of the form
FINAL SCORE: <integer from 0 to 100>
and nothing after it."""


@register_reward_model("rubric_rm")
class RubricRM(SingleCritiqueJudgeModel):
    """Rubric judge: reasoning with points per criterion, then ``FINAL SCORE: 0..100`` -> reward in [-1, 1]."""

    kind = "rubric_rm"
    scale = HUNDRED_SCALE
    system = RUBRIC
    answer_label = "The assistant's complete answer (its steps are its reasoning; its last step is the final answer):"
    instruction = "Apply the three criteria, then end with the line FINAL SCORE: <integer from 0 to 100>."
    default_critique_tokens = 160


rubric_messages = RubricRM.messages  # (P, q, response slots) -> chat messages
render_rubric_prompt = RubricRM.render_prompt  # (tokenizer, P, q, response) -> prompt token ids

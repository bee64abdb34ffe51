"""Records -> token-level training examples, rendered by the same functions inference uses.

- ``prm``: the prompt is the reward service's step-critique prompt (:func:`render_step_critique_prompt`, the one
  function Pers-GenPRM renders with), the target is ``critique\\nSCORE: x`` tokenized exactly as the reward
  service's constrained score phase continues it (critique + "\\n" as untrusted text, then ``SCORE:``, then the
  number), then the end-of-turn token. The loss is Eq. 2: -log p(c_j, r_j | P, q, s_<=j), prompt masked.
- ``rft``: the policy's inference prompt (:func:`cdra_ray.data.prompts.render_prompt_ids`) and the D_RFT
  response, then the end-of-turn token.
- ``prm_head``: the conversation a token-head PRM scores (:func:`cdra_ray.rewards.prm.build_prm_example`) with
  the step-end positions and teacher scores of a whole path.
- ``scalar_rm``: the chosen and rejected conversations (:func:`render_scoring_input`) of a D_RFT record.

An example longer than ``max_length`` loses prompt tokens from the left (the target is never cut); the count is
kept on the example. A target that alone does not fit is an error naming the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cdra_ray.algorithms.scores import parse_step_score
from cdra_ray.rewards.prompts import SCORE_PREFIX, encode_text, encode_untrusted, render_step_critique_prompt
from cdra_ray.sft.data import ReaRecord, RftRecord, SFTDataError


@dataclass
class Example:
    """One training example. ``count`` is its share of the loss's denominator (target tokens, steps or pairs)."""

    uid: str
    scenario_id: str
    input_ids: list[int]  # (L,) causal: prompt + target; prm_head: conversation; scalar_rm: chosen conversation
    count: int
    loss_mask: list[int] = field(default_factory=list)  # (L,) causal tasks: 1 at target tokens
    positions: list[int] = field(default_factory=list)  # (S,) prm_head: index of each step's last token
    targets: list[float] = field(default_factory=list)  # (S,) prm_head: teacher step scores in [-1, 1]
    rejected_ids: list[int] = field(default_factory=list)  # scalar_rm: the rejected conversation
    truncated: int = 0  # prompt tokens dropped from the left to fit max_length

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids) + len(self.rejected_ids)


def format_score(score: float) -> str:
    """A step score as the reward service's score regex admits it: two decimals in [-1, 1] (``0.70``, ``-1.00``)."""
    value = round(min(max(float(score), -1.0), 1.0), 2)
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def format_target(critique: str, score: float) -> str:
    """``critique`` + "\\n" + ``SCORE: x``: the judge's output as the reward service parses it."""
    return f"{critique.strip()}\n{SCORE_PREFIX} {format_score(score)}"


def end_of_turn(tokenizer) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [int(eos)] if eos is not None else []


def critique_target_ids(tokenizer, critique: str, score: float) -> list[int]:
    """Target tokens of one step: the critique as the constrained phase feeds it back, the score line, end of turn."""
    ids = encode_untrusted(tokenizer, critique.strip() + "\n") + encode_text(tokenizer, SCORE_PREFIX)
    ids += encode_text(tokenizer, " " + format_score(score)) + end_of_turn(tokenizer)
    return ids


def fit_left(prompt: list[int], target_len: int, max_length: int, uid: str) -> tuple[list[int], int]:
    """``prompt`` cut from the left so prompt + target fit ``max_length``; (kept prompt, tokens dropped)."""
    if target_len + 1 > max_length:
        raise SFTDataError(f"record {uid!r}: its target alone has {target_len} tokens; with one prompt token it "
                           f"exceeds sft.max_length={max_length} (raise sft.max_length)")
    drop = max(0, len(prompt) + target_len - max_length)
    return prompt[drop:], drop


def causal_example(uid: str, scenario_id: str, prompt: list[int], target: list[int], max_length: int) -> Example:
    prompt, dropped = fit_left(prompt, len(target), max_length, uid)
    return Example(uid=uid, scenario_id=scenario_id, input_ids=prompt + target, count=len(target),
                   loss_mask=[0] * len(prompt) + [1] * len(target), truncated=dropped)


def prm_example(tokenizer, record: ReaRecord, max_length: int) -> Example:
    prompt = render_step_critique_prompt(tokenizer, record.preference, record.query, record.steps)
    target = critique_target_ids(tokenizer, record.critique, record.score)
    # the target must read back as the teacher's score through the reward service's parser
    text = tokenizer.decode(target, skip_special_tokens=True)
    if parse_step_score(text) != round(record.score, 2):
        raise SFTDataError(f"record {record.uid!r}: its target {text[-40:]!r} does not parse back to score "
                           f"{record.score} (the tokenizer cannot round-trip the score line)")
    return causal_example(record.uid, record.scenario_id, prompt, target, max_length)


def rft_example(tokenizer, record: RftRecord, max_length: int) -> Example:
    from cdra_ray.data.prompts import render_prompt_ids
    from cdra_ray.messages import Scenario

    scenario = Scenario(uid=record.uid, preference=record.preference, query=record.query)
    prompt = render_prompt_ids(tokenizer, scenario, max_prompt_tokens=10**9)
    target = encode_text(tokenizer, record.response) + end_of_turn(tokenizer)
    return causal_example(record.uid, record.scenario_id, prompt, target, max_length)


def path_response_steps(steps) -> list[str]:
    """The steps as consecutive pieces of one response ("\\n" between steps, as D_RFT's ``response`` joins them)."""
    return [s + "\n" for s in steps[:-1]] + [steps[-1]]


def prm_head_example(tokenizer, record: ReaRecord, scores: list[float], max_length: int) -> Example:
    """A whole path (``record`` is its last step) with every step's teacher score, read at each step's last token."""
    from cdra_ray.rewards.head_models import render_scoring_input
    from cdra_ray.rewards.prm import step_read_positions

    pieces = path_response_steps(record.steps)
    spans, offset = [], 0
    for piece in pieces:
        spans.append((offset, offset + len(piece)))
        offset += len(piece)
    inp = render_scoring_input(tokenizer, record.preference, record.query, "".join(pieces))
    positions = step_read_positions(inp, spans)
    ids, start = inp.input_ids, inp.response_start
    uid = record.path_id
    kept, dropped = fit_left(ids[:start], len(ids) - start, max_length, uid)
    return Example(uid=uid, scenario_id=record.scenario_id, input_ids=kept + ids[start:], count=len(scores),
                   positions=[p - dropped for p in positions], targets=[float(s) for s in scores], truncated=dropped)


def scalar_rm_example(tokenizer, record: RftRecord, max_length: int) -> Example | None:
    """Chosen vs rejected conversation of one scenario; None when the record has no rejected response."""
    from cdra_ray.rewards.head_models import render_scoring_input

    if record.rejected_response is None:
        return None
    sides, dropped = [], 0
    for response in (record.response, record.rejected_response):
        inp = render_scoring_input(tokenizer, record.preference, record.query, response)
        head, tail = inp.input_ids[:inp.response_start], inp.input_ids[inp.response_start:]
        kept, cut = fit_left(head, len(tail), max_length, record.uid)
        sides.append(kept + tail)
        dropped += cut
    return Example(uid=record.uid, scenario_id=record.scenario_id, input_ids=sides[0], rejected_ids=sides[1],
                   count=1, truncated=dropped)

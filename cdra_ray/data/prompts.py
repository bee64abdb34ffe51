"""The policy's inference prompt: answer in numbered steps, the last one being the final answer.

The format follows the paper's inference setup (Fig. 14: analyse the stated preference, infer the unstated
ones, then answer, each as "Step k:"); the wording is ours. The step markers are what
:mod:`cdra_ray.algorithms.steps` segments on, so the prompt and the segmenter must agree on "Step k:".
"""

from __future__ import annotations

from typing import Sequence

from cdra_ray.messages import Scenario

SYSTEM_PROMPT = (
    "You are a careful assistant who tailors every answer to the person asking. Before answering, reason "
    "about what the user has told you and what they probably care about without saying it."
)

INSTRUCTIONS = (
    "Answer in numbered steps, each on its own line starting with 'Step k:'.\n"
    "Step 1: state the user's explicit preference and what it rules in or out.\n"
    "Middle steps: infer the deeper, unstated needs or values behind it, and any risk of getting it wrong.\n"
    "Last step: give a concrete, practical answer that respects both the stated and the inferred "
    "preferences.\n"
    "Keep each step to two or three sentences."
)


STEP_LINE = "Step {k}: {text}"  # one step per line; the segmenter (algorithms/steps.py) opens a step at each


def render_step_response(steps: Sequence[str]) -> str:
    """A response in the format :data:`INSTRUCTIONS` asks for: ``Step 1: ...``, one step per line, the last step
    being the final answer. Training targets (RFT data) are rendered here, so they cannot drift from the prompt.

    Each step is folded onto one line (inner line breaks become spaces), so
    :func:`~cdra_ray.algorithms.steps.segment_steps` cuts the result back into exactly these steps.
    """
    if not steps:
        raise ValueError("render_step_response needs at least one step")
    lines = []
    for k, step in enumerate(steps, start=1):
        text = " ".join(str(step).split())
        if not text:
            raise ValueError(f"render_step_response: step {k} is empty")
        lines.append(STEP_LINE.format(k=k, text=text))
    return "\n".join(lines)


def inference_messages(scenario: Scenario) -> list[dict[str, str]]:
    """Chat messages for one scenario, ready for ``tokenizer.apply_chat_template``."""
    user = f"{INSTRUCTIONS}\n\nUser preference: {scenario.preference}\nQuestion: {scenario.query}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def render_prompt_ids(tokenizer, scenario: Scenario, max_prompt_tokens: int) -> list[int]:
    """Token ids of the chat-formatted prompt; a prompt over the limit is an error naming the scenario."""
    return render_chat_ids(tokenizer, inference_messages(scenario), max_prompt_tokens, scenario.uid)


def render_chat_ids(tokenizer, messages: list[dict[str, str]], max_prompt_tokens: int, uid: str,
                    limit_key: str = "rollout.max_prompt_tokens") -> list[int]:
    """Token ids of any chat (the inference prompt, or a baseline's variant of it), rendered the same way."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        ids = list(ids)
    else:  # tokenizers without a chat template (tiny test models): plain text with a clear answer cue
        text = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:\n"
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if len(ids) > max_prompt_tokens:
        raise ValueError(
            f"scenario {uid!r}: prompt has {len(ids)} tokens, over {limit_key}="
            f"{max_prompt_tokens}; shorten the preference/query or raise the limit"
        )
    return ids

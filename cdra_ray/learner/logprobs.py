"""Per-token log-probabilities of response tokens under a causal language model.

``token_logprobs`` is the pure part: log softmax(logits / T)[target], computed ``chunk_size`` token rows at a
time as ``logit[target] - logsumexp(logits)``, so the full (N, C, V) log-softmax (and, for bf16 models, its
fp32 upcast) never exists at once: with SmolLM2's 49k vocabulary, 5 x 256 response tokens are 250 MB of
logits per copy.

``response_logprobs`` runs the model on a :class:`~cdra_ray.learner.batch.TrainBatch` layout (left-padded
prompt, right-padded response) and asks it for the last C+1 positions of logits only (``logits_to_keep``), the
ones that predict response tokens.
"""

from __future__ import annotations

import torch


def token_logprobs(
    logits: torch.Tensor, target_ids: torch.Tensor, *, chunk_size: int = 1024, temperature: float = 1.0
) -> torch.Tensor:
    """log p(target) from ``logits`` (..., V) and ``target_ids`` (...) -> (...) float32, differentiable.

    ``logits[..., t, :]`` must be the prediction for ``target_ids[..., t]`` (already shifted).
    ``temperature`` divides the logits first, matching an engine that sampled at that temperature.
    """
    if logits.shape[:-1] != target_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target_ids {tuple(target_ids.shape)} do not align "
                         "(logits must be (..., V) over the same leading dims)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = target_ids.reshape(-1, 1)
    out = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        chunk = flat_logits[start:start + chunk_size].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        picked = chunk.gather(1, flat_targets[start:start + chunk_size]).squeeze(1)
        out.append(picked - torch.logsumexp(chunk, dim=-1))
    if not out:
        return torch.zeros(target_ids.shape, dtype=torch.float32, device=logits.device)
    return torch.cat(out).reshape(target_ids.shape)


def response_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    response_ids: torch.Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(N, C) log p(response token) for the batch layout of ``TrainBatch`` (responses start at column P).

    ``model`` is an HF causal LM or a DeepSpeed engine wrapping one. Values at padded response positions are
    whatever the model says there: mask them. Gradients flow unless called under ``torch.no_grad()``.
    """
    width_c = response_ids.shape[1]
    if input_ids.shape[1] <= width_c:
        raise ValueError(f"input_ids width {input_ids.shape[1]} must exceed the response width {width_c} "
                         "(each row needs at least one prompt token)")
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=width_c + 1,
    )
    logits = out.logits if hasattr(out, "logits") else out[0]
    if logits.shape[1] != width_c + 1:
        # models whose forward ignores logits_to_keep return every position
        logits = logits[:, -(width_c + 1):]
    return token_logprobs(logits[:, :-1], response_ids, chunk_size=chunk_size, temperature=temperature)


def shared_prompt_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_ids: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> torch.Tensor:
    """What :func:`response_logprobs` returns, with each group's prompt run through the model once.

    The G responses of a group share their prompt; ``group_ids`` (N,) says which rows belong together (a
    :class:`~cdra_ray.learner.batch.TrainBatch` keeps them through ``select``). Per group, one forward pass
    (batch 1) over its prompt yields the KV cache and the logits that predict response token 0; the cache is
    repeated over the group's rows and the responses run on top of it. Gradients flow through the shared
    prompt pass, so a backward pass computes the prompt's gradient once instead of once per row: for a
    180-token prompt and G = 5 responses of 64 tokens, 500 token positions instead of 1,220. Needs a model
    that returns ``past_key_values`` (not with gradient checkpointing, which turns the cache off in training).
    """
    width_c = response_ids.shape[1]
    width_p = input_ids.shape[1] - width_c
    if width_p < 1:
        raise ValueError(f"input_ids width {input_ids.shape[1]} must exceed the response width {width_c} "
                         "(each row needs at least one prompt token)")
    if group_ids.shape != input_ids.shape[:1]:
        raise ValueError(f"group_ids {tuple(group_ids.shape)} must have one entry per row of input_ids "
                         f"{tuple(input_ids.shape)}")
    prompt_mask = attention_mask[:, :width_p].bool()
    rows_of: dict[int, list[int]] = {}
    for row, group in enumerate(group_ids.tolist()):
        rows_of.setdefault(int(group), []).append(row)
    pieces, order = [], []
    for rows in rows_of.values():
        prompt_ids = input_ids[rows[0], :width_p][prompt_mask[rows[0]]].unsqueeze(0)
        if prompt_ids.shape[1] == 0:
            raise ValueError(f"rows {rows} have no prompt token")
        length = prompt_ids.shape[1]
        head = model(input_ids=prompt_ids, use_cache=True, logits_to_keep=1)
        cache = head.past_key_values
        if cache is None:
            raise RuntimeError("shared_prompt_logprobs: the model returned no past_key_values (gradient "
                               "checkpointing turns the cache off); use response_logprobs instead")
        cache.batch_repeat_interleave(len(rows))
        rows_t = torch.tensor(rows, device=input_ids.device)
        mask = torch.cat([torch.ones(len(rows), length, dtype=attention_mask.dtype, device=attention_mask.device),
                          attention_mask[rows_t, width_p:]], dim=1)
        positions = torch.arange(length, length + width_c, device=input_ids.device).expand(len(rows), width_c)
        tail = model(input_ids=response_ids[rows_t], attention_mask=mask, position_ids=positions,
                     past_key_values=cache, use_cache=False, logits_to_keep=width_c)
        first = head.logits[:, -1:].expand(len(rows), 1, head.logits.shape[-1])
        logits = torch.cat([first, tail.logits[:, -width_c:][:, :-1]], dim=1)
        pieces.append(token_logprobs(logits, response_ids[rows_t], chunk_size=chunk_size, temperature=temperature))
        order += rows
    out = torch.cat(pieces)
    inverse = torch.empty(len(order), dtype=torch.long, device=out.device)
    inverse[torch.tensor(order, device=out.device)] = torch.arange(len(order), device=out.device)
    return out[inverse]

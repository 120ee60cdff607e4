"""Offline stand-ins for users' models: real tokenizer classes and model families with random small weights.

``build_standin("qwen2.5", dir)`` writes a folder that loads like a Qwen2.5 checkpoint: a byte-level
``Qwen2Tokenizer`` (256 byte tokens, no merges) with Qwen2.5's special tokens and a chat template of its
format, a small random ``Qwen2ForCausalLM`` and a generation_config.json of its own. ``"llama3"``: a byte-level
fast tokenizer that adds ``<|begin_of_text|>`` to plain text, Llama-3's header/turn tokens and chat format, a
small ``LlamaForCausalLM`` and three EOS ids in its generation config (as Llama-3.1 instruct ships).
``memorize`` trains such a model until its greedy continuation of one prompt is a given text, so a test can
rig what a "real" model writes (a turn marker, then another answer). Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

QWEN25_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
# Qwen2.5's format: a default system turn, then <|im_start|>role\ncontent<|im_end|>\n per message
QWEN25_CHAT = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
]
LLAMA3_CHAT = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0-255 (printable bytes stand for
    themselves, the others are shifted past 255), in byte order."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, shift = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + shift)
            shift += 1
    return [chars[b] for b in range(256)]


def qwen25_tokenizer(chat_template: str | None = QWEN25_CHAT):
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(byte_alphabet())}, merges=[])
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in QWEN25_SPECIAL[1:]]}
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def llama3_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(byte_alphabet())}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True) for t in LLAMA3_SPECIAL])
    bos = core.token_to_id("<|begin_of_text|>")
    core.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    tokenizer.chat_template = LLAMA3_CHAT
    return tokenizer


def build_standin(
    kind: str,
    directory: str | Path,
    *,
    generation_config: dict | None = None,
    seed: int = 0,
    max_positions: int = 512,
    chat_template: bool = True,
    hidden: int = 64,
    layers: int = 2,
) -> Path:
    """Write a ``kind`` ("qwen2.5" or "llama3") stand-in to ``directory``; ``generation_config``: extra fields of
    its generation_config.json (a repetition penalty, ...). Returns the folder."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    directory = Path(directory)
    if kind == "qwen2.5":
        tokenizer = qwen25_tokenizer(QWEN25_CHAT if chat_template else None)
        ids = tokenizer.convert_tokens_to_ids
        config_class, model_class = Qwen2Config, Qwen2ForCausalLM
        special = dict(bos_token_id=None, eos_token_id=ids("<|endoftext|>"), pad_token_id=ids("<|endoftext|>"))
        generation = dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|endoftext|>"))  # as Qwen2.5 base
    elif kind == "llama3":
        tokenizer = llama3_tokenizer()
        ids = tokenizer.convert_tokens_to_ids
        config_class, model_class = LlamaConfig, LlamaForCausalLM
        special = dict(bos_token_id=ids("<|begin_of_text|>"), eos_token_id=ids("<|eot_id|>"), pad_token_id=None)
        generation = dict(
            bos_token_id=ids("<|begin_of_text|>"),
            eos_token_id=[ids("<|end_of_text|>"), ids("<|eom_id|>"), ids("<|eot_id|>")],
        )
    else:
        raise ValueError(f"unknown stand-in {kind!r}")
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        **special,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
    model.generation_config = GenerationConfig(**generation, **(generation_config or {}))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def write_generation_config(directory: str | Path, **fields) -> None:
    """Replace the folder's generation_config.json fields (the weights stay as they are)."""
    path = Path(directory) / "generation_config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


def memorize(
    model,
    tokenizer,
    prompt: str | list[str],
    completion: str | list[str],
    *,
    steps: int = 600,
    lr: float = 3e-3,
    mean_loss_below: float = float("inf"),
) -> None:
    """Train ``model`` on (prompt, completion) pairs until greedy decoding of each prompt writes its completion
    (special tokens in it are single tokens) and the mean token loss is below ``mean_loss_below`` (sampling
    then writes the completion with about exp(-loss * tokens) probability); raises if it does not get there."""
    prompts, completions = ([prompt], [completion]) if isinstance(prompt, str) else (prompt, completion)
    pairs = []
    for p, c in zip(prompts, completions):
        p_ids, c_ids = (
            tokenizer(p, add_special_tokens=False)["input_ids"],
            tokenizer(c, add_special_tokens=False)["input_ids"],
        )
        ids = torch.tensor([p_ids + c_ids])
        labels = ids.clone()
        labels[0, : len(p_ids)] = -100
        pairs.append((ids, labels, len(p_ids), c_ids))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        loss = sum(model(input_ids=ids, labels=labels).loss for ids, labels, _, _ in pairs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 24:
            with torch.no_grad():
                learned = all(
                    model(input_ids=ids).logits[0, n - 1 : -1].argmax(-1).tolist() == c_ids
                    for ids, _, n, c_ids in pairs
                )
            if learned and loss.item() / len(pairs) < mean_loss_below:
                model.eval()
                return
    raise AssertionError(f"memorize: not learned in {steps} steps (loss {loss.item():.3f})")

"""Loading policies and tokenizers, and the tiny built-in model of the default run.

Every policy is a transformers ``AutoModelForCausalLM``. The default is a ~1M-parameter
Qwen2 of the same classes as Qwen2.5, with a character tokenizer built in code, so the
code path that trains it on a laptop is the one that trains a 1.5B model on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: Marks a directory holding a model written by conspo's tiny-model code; its tokenizer
#: is loaded with PreTrainedTokenizerFast (AutoTokenizer would pick the Qwen2 tokenizer
#: class for a qwen2-typed config and swap the pre-tokenizer: docs/design.md section 7).
TINY_MARKER = "conspo_tiny.json"

TINY_CHARS = "0123456789+-*=() "
TINY_SPECIAL = ["<pad>", "<eos>"]


def build_char_tokenizer(chars: str = TINY_CHARS):
    """A character-level fast tokenizer: one token per character, plus <pad> and <eos>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIAL + list(chars))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(
    vocab_size: int,
    *,
    hidden: int = 128,
    layers: int = 4,
    ffn: int = 512,
    heads: int = 4,
    max_positions: int = 64,
    seed: int = 0,
):
    """A small Qwen2 (tied embeddings) with the geometry from docs/design.md section 8 (~1.05M params).

    ``max_positions`` is the longest prompt + completion it is meant for (rotary positions: it
    adds no weights).
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config)


def save_pretrained(model, tokenizer, directory: str | Path, *, tiny_task: str = "") -> None:
    """Save weights as safetensors (never pickles) plus config and tokenizer files.

    ``tiny_task``: for conspo's tiny model, the built-in task it was warmed up on, written to its
    marker file (``conspo eval`` scores it on that task's held-out split by default).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    if tiny_task:
        (directory / TINY_MARKER).write_text(
            json.dumps({"tokenizer": "char", "chars": TINY_CHARS, "task": tiny_task}) + "\n"
        )


def looks_local(name_or_path: str) -> bool:
    """A model name that can only mean a local folder: an absolute, ./ ../ or ~ path, more than one '/', or a
    first component that is a folder here (hub ids are ``org/name``)."""
    if name_or_path.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name_or_path or name_or_path.count("/") > 1:
        return True
    return "/" in name_or_path and Path(name_or_path.split("/")[0]).is_dir()


def load_model_config(name_or_path: str, option: str = "--model"):
    """The model's transformers config, read before any weight; a local-looking path that does not exist fails
    at once in one line (instead of after the hub client's retries)."""
    from transformers import AutoConfig

    from conspo.errors import ConfigError

    path = Path(name_or_path).expanduser()
    if looks_local(name_or_path) and not path.exists():
        raise ConfigError(f"{option} {name_or_path}: no such folder (a local path; hub ids look like org/name)")
    if path.is_dir() and not (path / "config.json").exists():
        raise ConfigError(
            f"{option} {name_or_path}: the folder has no config.json (a transformers model folder has "
            "config.json, tokenizer files and *.safetensors weights)"
        )
    try:
        return AutoConfig.from_pretrained(str(path) if path.exists() else name_or_path)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{option} {name_or_path}: not a local model directory with a config.json nor a hub id "
            f"reachable from here: {str(e).splitlines()[0]}"
        ) from None


def max_positions(config) -> int | None:
    """The longest sequence (prompt + completion) the model's config declares, or None when it declares none."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_positions(name: str, config, tokenizer, prompts: list[str], max_new_tokens: int) -> None:
    """Refuse, before any weight is read, a generation limit that the longest prompt plus the completion
    would take past the model's positions (generation there runs on and its output means nothing)."""
    from conspo.errors import ConfigError

    positions = max_positions(config)
    if positions is None or not prompts:
        return
    from conspo.rollout import with_bos

    longest = max(len(ids) for ids in tokenizer(with_bos(tokenizer, prompts), add_special_tokens=False)["input_ids"])
    if longest + max_new_tokens > positions:
        room = positions - longest
        what = (
            f"lower --max-new-tokens to at most {room}"
            if room > 0
            else "its prompts alone are longer than that: use shorter prompts or a model with more positions"
        )
        raise ConfigError(
            f"--model {name}: the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} "
            f"needs {longest + max_new_tokens} positions, more than the model's {positions}: {what}"
        )


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (Path(name_or_path) / TINY_MARKER).exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(name_or_path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    tokenizer.padding_side = "left"  # generation appends on the right of every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def unknown_token_fraction(tokenizer, texts: list[str]) -> float:
    """Share of the tokens of ``texts`` that the tokenizer maps to its unknown token.

    Byte-level tokenizers (Qwen, Llama) have none; the tiny model's character tokenizer maps every
    character outside its 17 to ``<pad>`` (its unknown token), silently, hence this check.
    """
    unknown = {tokenizer.unk_token_id}
    backend_unk = getattr(getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None), "unk_token", None)
    if backend_unk is not None:
        unknown.add(tokenizer.convert_tokens_to_ids(backend_unk))
    unknown.discard(None)
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    return sum(i in unknown for i in ids) / max(len(ids), 1)


def load_policy(name_or_path: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Any causal LM by local path or hub id, refusing pickled weights."""
    from transformers import AutoModelForCausalLM

    path = Path(name_or_path)
    if path.is_dir() and not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
        raise ValueError(
            f"{path} holds only pickle (*.bin) weights; conspo loads safetensors only "
            "(pickles can run code when loaded). Convert them with a trusted tool first."
        )
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, use_safetensors=True)
    return model.to(device)


def lora_config(*, r: int, alpha: int, dropout: float, target_modules: str):
    """A peft ``LoraConfig`` for a causal LM (``target_modules``: comma-separated names or ``all-linear``)."""
    try:
        from peft import LoraConfig
    except ImportError as e:
        from conspo.errors import ConfigError

        raise ConfigError("LoRA (--lora-r > 0) needs peft: pip install 'conspo[lora]'") from e
    targets = (
        target_modules
        if target_modules == "all-linear"
        else [t.strip() for t in target_modules.split(",") if t.strip()]
    )
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")


def is_lora(model) -> bool:
    """True for a peft model (the trainable weights are an adapter on a frozen base)."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def save_final(model, tokenizer, directory: str | Path, *, tiny_task: str = "", lora_save: str = "merged") -> None:
    """The run's final model: a plain transformers directory, or for LoRA the adapter alone
    (``lora_save="adapter"``, peft format) or merged into the base weights (``"merged"``)."""
    if is_lora(model):
        if lora_save == "adapter":
            directory = Path(directory)
            model.save_pretrained(directory, safe_serialization=True)  # adapter_model.safetensors + adapter_config.json
            tokenizer.save_pretrained(directory)
            return
        model = model.merge_and_unload()  # the run is over: merging in place is fine
    save_pretrained(model, tokenizer, directory, tiny_task=tiny_task)

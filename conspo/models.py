"""Loading policies and tokenizers, and the tiny built-in model of the default run.

Every policy is a transformers ``AutoModelForCausalLM``. The default is a ~1M-parameter
Qwen2 of the same classes as Qwen2.5, with a character tokenizer built in code, so the
code path that trains it on a laptop is the one that trains a 1.5B model on a GPU.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from conspo.errors import ConfigError
from conspo.rollout import ignored_generation_settings, ignored_settings_note

if TYPE_CHECKING:
    from conspo.config import TrainConfig

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


def load_model(cfg: TrainConfig, task, device, dtype, log):
    """(model, tokenizer), with the task's prompts rendered for the tokenizer: the cached tiny base for
    ``model=tiny``, else a transformers causal LM.

    A model that cannot be found, whose positions cannot hold the longest prompt plus the generation limit,
    or whose weights, gradients and AdamW state alone would not fit in the device's free memory, is refused
    before any weight is loaded.
    """
    from conspo.warmup import tiny_base  # here: the warm-up builds on this module

    if cfg.model == "tiny":
        model, tokenizer, _ = tiny_base(
            task,
            steps=cfg.sft_steps,
            lr=cfg.sft_lr,
            batch_size=cfg.sft_batch_size,
            seed=cfg.sft_seed,
            cache_dir=cfg.cache_dir,
            decay_steps=cfg.sft_decay_steps,
            stop_accuracy=cfg.sft_stop_accuracy,
            log=log,
        )
        if hasattr(task, "set_tokenizer"):
            task.set_tokenizer(tokenizer)
        return model.to(device=device, dtype=dtype), tokenizer
    config = load_model_config(cfg.model)
    try:
        tokenizer = load_tokenizer(cfg.model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--model {cfg.model}: could not load its tokenizer: {str(e).splitlines()[0]}") from None
    if hasattr(task, "set_tokenizer"):
        task.set_tokenizer(tokenizer)
    prompts = [p.prompt for p in task.train_problems()] + [
        p.prompt for p in task.heldout_problems()[: cfg.eval_size or None]
    ]
    check_positions(cfg.model, config, tokenizer, prompts, cfg.max_new_tokens or task.max_new_tokens)
    check_memory(cfg, config, device, dtype)
    try:
        model = load_policy(cfg.model, dtype=dtype, device=device)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--model {cfg.model}: could not load it: {str(e).splitlines()[0]}") from None
    ignored = ignored_generation_settings(model.generation_config)
    if ignored:
        log(ignored_settings_note(ignored, "config.yaml, `resolved`"))
    return model, tokenizer


def check_memory(cfg: TrainConfig, config, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse a model whose weights + gradients + AdamW state exceed the device's free memory.

    The floor counted (bytes): P*w for the weights (w bytes per parameter in ``dtype``), T*(w + 8)
    for the trainable parameters' gradients and AdamW's two float32 moments (T = P, or ~0 with
    LoRA), and P*w more for a frozen reference copy when beta > 0 without LoRA. Activations,
    logits and the KV cache come on top, so passing this check does not promise the run fits;
    failing it proves it cannot. P comes from the model's ``config`` on the meta device (no weights read).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    width = torch.finfo(dtype).bits // 8
    trainable = 0 if cfg.lora_r else n_params
    needed = n_params * width + trainable * (width + 8) + (n_params * width if cfg.beta and not cfg.lora_r else 0)
    free = free_memory_bytes(device)
    if free is not None and needed > free:
        gib = 2**30
        raise ConfigError(
            f"--model {cfg.model}: {n_params / 1e9:.2f}B parameters need at least {needed / gib:.1f} GiB for weights, "
            f"gradients and AdamW state in {str(dtype).removeprefix('torch.')} (activations come on top), but "
            f"{device} has {free / gib:.1f} GiB free. Use LoRA (--lora-r 16), a smaller model, or a GPU"
        )


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` (CUDA: mem_get_info; CPU: MemAvailable of /proc/meminfo), None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def prepare_for_training(model, cfg: TrainConfig):
    """Activation checkpointing and LoRA as the config asks; returns the model to train."""
    if cfg.gradient_checkpointing:
        # non-reentrant: works with frozen inputs (LoRA) without enable_input_require_grads
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora_r:
        from peft import get_peft_model

        with (
            warnings.catch_warnings()
        ):  # peft 0.21 calls a transformers method deprecated in 5.x: not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(
                model,
                lora_config(
                    r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules
                ),
            )
    return model

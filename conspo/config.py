"""The run's options: ``TrainConfig`` (one documented field per option), its validation, and
which engine honours which option.

Everything about an option is declared at its field: ``--help`` text is the docstring under it
(``field_help``; the objective options inherited from ``conspo.objective_options.ObjectiveOptions``
carry theirs as metadata), its ``--help`` group is the ``# ---- title ----`` comment above it
(``help_sections``), and a field only one engine honours is declared with ``native_only`` or
``trl_only`` (``engine_support``): ``validate()`` refuses such a field set away from its default for
the other engine, so a native-vs-TRL comparison can never quietly run two different experiments.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, get_args, get_type_hints

from conspo.config_checks import check_device, check_engine, field_engines
from conspo.errors import ConfigError
from conspo.objective_options import ObjectiveOptions


def native_only(default, *, instead: str):
    """A field only the native engine honours; ``instead``: what to do with --engine trl."""
    return field(default=default, metadata={"engines": ("native",), "instead": instead})


def trl_only(default):
    """A field only --engine trl honours (vLLM generation goes through TRL)."""
    return field(
        default=default,
        metadata={
            "engines": ("trl",),
            "instead": "vLLM generation goes through TRL: use --engine trl (the native trainer generates with "
            "transformers)",
        },
    )


@dataclass
class TrainConfig(ObjectiveOptions):
    """Every option of a run. The objective options (tau, margin_*, positive_*, score, score_tau) are inherited
    from ``ObjectiveOptions``, the same declaration TRL's ``ConSPOConfig`` and verl's policy-loss config use."""

    # ---- what to train -------------------------------------------------------------
    objective: Literal["conspo", "grpo", "dr_grpo", "dapo", "gspo", "disco", "disco_ratio", "real"] = "conspo"
    """Policy objective: conspo, grpo, dr_grpo, dapo, gspo (conspo.objectives), or the sequence-score objectives disco
    (DisCO, length-normalised log-likelihood), disco_ratio (DisCO, likelihood ratio) and real (REAL)
    (conspo.score_objectives); also a score objective registered with
    conspo.score_objectives.register_score_objective (from Python)."""
    model: str = "tiny"
    """`tiny`: a ~1M-parameter Qwen2 warmed up on the task (built once, cached). Otherwise any transformers causal LM,
    local path or hub id."""
    task: Literal["addition", "chain", "math", "data"] = "addition"
    """Where prompts, held-out problems and the verifier come from: `addition` (built in, 3-token answers), `chain`
    (built in: sums of 4-7 terms written out as 11-64-token worked chains, final answer verified), `math`
    (train_data / eval_data below, math-verify rewards) or `data` (your train_data scored by your --reward; chosen
    when both are given without --task)."""
    reward: list[str] = field(default_factory=list)
    """A reward function with TRL's signature `(prompts, completions, **columns) -> list[float | None]` (sync or async;
    None: no score), as `FILE.py:FUNCTION` or `module:function`; repeat for several, summed with reward_weights.
    Replaces the task's verifier (which is `conspo.rewards.verifiers:math_accuracy`, `exact_answer` or
    `chain_final_answer` if you want it too)."""
    reward_weights: list[float] = field(default_factory=list)
    """One weight per --reward (TRL's reward_weights); empty: 1 each."""
    reward_errors: Literal["raise", "zero"] = native_only(
        "raise",
        instead="--engine trl passes your rewards to TRL unchanged, and TRL stops on a reward that raises; "
        "use --engine native to score such completions 0",
    )
    """A reward that raises or returns NaN/inf/a non-number: stop with the reward and row named (raise), or score 0 and
    count it in reward/errors/<name> (zero)."""
    train_data: str = ""
    """task=math or data: training rows, a shared set's short name (math_train, gsm8k_train, ...), a JSONL file, a
    datasets folder (save_to_disk) or a Hub id; task math default: math_train."""
    eval_data: str = ""
    """task=math or data: held-out rows, named as train_data; task math default: math500; task data default: the last
    10% (at most 200) of train_data, not trained on."""
    data_dir: str = ""
    """task=math or data: folder of the shared data sets (for short names); empty: $CONSPO_DATA_DIR, else
    ../shared/data next to a development checkout, else an error naming both."""
    prompt_field: str = ""
    """task=data: the prompt column (a string, or chat messages rendered with the tokenizer's chat template); empty:
    `prompt` (TRL's), else `problem`."""
    prompt_template: str = "qwen_math_boxed"
    """task=math: qwen_math_boxed, r1 or plain (rendered with the tokenizer's chat template when it has one)."""
    answer_extraction: Literal["lenient", "strict"] = "lenient"
    """task=math: a completion with no answer marker (box, "Answer:", ...) is judged by its last math expression
    (lenient, as published graders do) or scores 0 (strict: also teaches the model to mark its answer)."""
    reward_audit_every: int = native_only(
        0,
        instead="the TRL engine does not log the task's reward metrics; use --engine native",
    )
    """task=math: every N-th scored batch, also score it with plain math-verify and strict extraction and log how often
    they disagree with the reward (reward/second_opinion_disagree_frac, _fn_frac, _fp_frac), so a reward that
    silently drifts shows. 0: off."""
    decimal_match: str = "exact"
    """task=math: when a decimal counts for an exact gold (pi, 1/3): `exact` (math-verify's own comparison at 6 places,
    so a coarse 3.1 for pi earns nothing), `places:N` or `sig:N` (a correctly rounded decimal with at least N places
    / significant digits). See docs/rewards.md."""
    engine: Literal["native", "trl"] = "native"
    """`native` (conspo/train.py) or `trl` (the same task and options through TRL's GRPOTrainer; ConSPO via
    conspo.integrations.trl)."""
    seed: int = 0
    """Seed for prompt sampling, generation and initialisation."""
    output_dir: str = ""
    """Run directory. Empty: runs/<objective>-seed<seed>-<date-time>."""
    overwrite: bool = False
    """Start over in an existing output_dir: the run there (its checkpoints, final/, metrics, samples, summary, plots)
    is deleted first; other files are left alone."""
    resume: str = ""
    """Continue a run from its directory (newest complete checkpoint) or a checkpoint-<step> directory. Its saved
    config is used; options given on the command line override it."""
    stop_after: int = 0
    """Stop after this many optimizer steps in this invocation (0: run to `steps`); continue later with --resume."""

    # ---- the RL loop ---------------------------------------------------------------
    steps: int = 1200
    """Optimizer steps in the whole run."""
    prompts_per_step: int = 16
    """Prompts (groups) per optimizer step."""
    group_size: int = 8
    """Completions sampled per prompt (G)."""
    max_new_tokens: int = 0
    """Generation limit per completion; 0: the task's default."""
    temperature: float = 0.7
    """Sampling temperature of the rollouts (0.7 suits the tiny default; 1.0 is common for real models)."""
    top_p: float = 1.0
    """Nucleus sampling of the rollouts (1.0: off)."""
    updates_per_batch: int = 1
    """Optimizer steps on each generated batch. >1 reuses samples off-policy: clipped objectives use importance ratios;
    ConSPO recomputes its scores."""
    micro_batch_size: int = native_only(
        0,
        instead="the TRL engine runs one generation batch per optimizer step; use examples/trl/ with "
        "gradient_accumulation_steps for micro-batches",
    )
    """Rows per forward/backward pass; 0: the whole batch. Gradients are accumulated so the update equals the
    full-batch one."""
    max_tokens_per_micro_batch: int = native_only(
        0,
        instead="TRL forms micro-batches by row count (per_device_train_batch_size); use "
        "--engine native for token-budget micro-batches",
    )
    """Form micro-batches by real length instead: as many rows as fit this many padded tokens (rows x longest
    prompt+completion among them), each padded only to its own longest row; 0: off. The update stays the full-batch
    gradient."""
    group_mode: Literal["auto", "whole", "coefficients"] = "auto"
    """How ConSPO stays exact when micro-batches are used: `whole` (each micro-batch holds whole groups, loss
    in-graph), `coefficients` (no-grad scores of the batch, closed-form dL/ds, per-row surrogate: any split), `auto`
    (whole when micro_batch_size is a multiple of group_size; coefficients under a token budget)."""
    dynamic_sampling: bool = native_only(
        False,
        instead="not available through --engine trl; use --engine native",
    )
    """DAPO's dynamic sampling: generate prompts_per_step * dynamic_oversample groups and train on up to
    prompts_per_step groups whose rewards differ."""
    dynamic_oversample: float = native_only(
        2.0,
        instead="only used with --dynamic-sampling (native engine)",
    )
    """With dynamic_sampling: how many times more prompts to sample than are trained on."""

    # ---- optimisation --------------------------------------------------------------
    lr: float = 3e-5
    """AdamW learning rate after warm-up (the tiny base is fragile: 1e-4 and above wreck it,
    docs/design.md section 8)."""
    lr_warmup_steps: int = 30
    """Linear learning-rate warm-up from 0, in optimizer steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value (0: no clipping; the norm is logged either way)."""
    max_consecutive_skips: int = native_only(
        5,
        instead="TRL does not skip non-finite steps; use --engine native",
    )
    """A step with a non-finite loss or gradient is skipped (weights and optimizer untouched); this many in a row stop
    the run."""

    # ---- objective options -----------------------------------------------------------
    eps_low: float | None = None
    """Lower clip range of the clipped objectives; None: the objective's default (0.2; GSPO 3e-4)."""
    eps_high: float | None = None
    """Upper clip range; None: the objective's default (0.2; DAPO 0.28; GSPO 4e-4)."""
    beta: float = 0.0
    """Coefficient of a k3 KL penalty to the initial policy; 0: off (no reference model kept; with LoRA the reference
    is the base with the adapter off)."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment, for any objective: a completion ending within this many tokens of the
    generation limit gets an added reward falling linearly from 0 to -overlong_penalty_factor at the limit (0: off;
    the DAPO paper: 4096 of 20480)."""
    overlong_penalty_factor: float = 1.0
    """Size of the overlong penalty at the generation limit (needs overlong_buffer > 0; DAPO's 1.0)."""
    mask_truncated: bool = False
    """Truncated completions (generation limit reached without EOS) get no gradient, for any objective: DAPO's overlong
    filtering, TRL's mask_truncated_completions."""

    # ---- memory, precision, LoRA -------------------------------------------------------
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them (less memory, ~30% more compute)."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """bf16: forward and backward run in bfloat16 under torch.autocast while weights, gradients and AdamW state stay
    float32, so small updates are not rounded away (TRL's bf16=True). auto: bf16 on a CUDA GPU that supports it
    (with float32 weights), else no."""
    low_precision_weights: bool = False
    """Allow dtype bfloat16/float16 without LoRA: AdamW then updates half-precision weights directly, and an update
    smaller than half a weight's spacing is rounded away (at lr 1e-6 most of them; a warning gives this model's
    share). Off: such a run is refused."""
    lora_r: int = 0
    """LoRA rank (peft); 0: train all weights. Checkpoints then hold only the adapter."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target_modules: str = "all-linear"
    """Comma-separated module names to adapt, or `all-linear` (every linear layer but the output head)."""
    lora_save: Literal["merged", "adapter"] = "merged"
    """final/: the adapter merged into the base weights (a plain transformers model), or the adapter alone (peft
    format)."""

    # ---- generation with vLLM (--engine trl) -------------------------------------------
    vllm_mode: Literal["none", "colocate", "server"] = trl_only("none")
    """--engine trl: generate rollouts with vLLM (needs the vllm package and a CUDA GPU): `colocate` (inside each
    training process, sharing its GPU), `server` (a separate `trl vllm-serve` process), `none` (transformers
    generate)."""
    vllm_gpu_memory_utilization: float = trl_only(0.3)
    """vllm_mode=colocate: fraction of each GPU's memory vLLM may take (default as in TRL; a server takes `trl
    vllm-serve --gpu_memory_utilization`)."""
    vllm_tensor_parallel_size: int = trl_only(1)
    """vllm_mode=colocate: GPUs one vLLM engine spans (must divide the number of processes; a server takes `trl
    vllm-serve --tensor_parallel_size`)."""
    vllm_server_host: str = trl_only("0.0.0.0")
    """vllm_mode=server: host of the `trl vllm-serve` process."""
    vllm_server_port: int = trl_only(8000)
    """vllm_mode=server: port of the `trl vllm-serve` process."""

    # ---- the tiny default base -------------------------------------------------------
    sft_steps: int = 200
    """Supervised warm-up steps that make the tiny base partly competent (tiny model only)."""
    sft_seed: int = 0
    """Seed of the tiny base, separate from `seed` so that runs with different seeds start from the same base."""
    sft_lr: float = 1.5e-3
    """Learning rate of the supervised warm-up."""
    sft_decay_steps: int = 0
    """0: the warm-up's learning rate decays linearly to zero at its last step. N > sft_steps: it decays over N steps
    and the warm-up stops at sft_steps, so the base is a checkpoint from the middle of a longer schedule, not an
    annealed one (on one machine RL improved such a chain base and wrecked annealed ones; on another it wrecked
    both: docs/experiments/chain.md)."""
    sft_batch_size: int = 128
    """Batch size of the supervised warm-up."""
    sft_stop_accuracy: float = 0.0
    """Stop the warm-up at the first check (every 25 steps) where greedy accuracy on 200 of the task's training
    problems (never held-out ones) reaches this; sft_steps is then the most it trains. 0: off. Sets the base by what
    it can do, not by a step count: the chain warm-up learns abruptly, at a step that moved from about 900 to about
    1,300 between two machines (docs/experiments/chain.md)."""
    cache_dir: str = "~/.cache/conspo"
    """Where the warmed-up tiny base is cached."""

    # ---- evaluation, logging, checkpoints, hardware ---------------------------------
    eval_every: int = 100
    """Greedy held-out evaluation every N optimizer steps (and before and after training)."""
    eval_size: int = 0
    """Held-out problems per evaluation; 0: all of them."""
    log_samples_every: int = native_only(
        100,
        instead="TRL logs completions through its own log_completions option (examples/trl/)",
    )
    """Write one group of sampled completions to samples.jsonl every N steps (0: never)."""
    save_every: int = 200
    """Checkpoint every N optimizer steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    report_to: str = "none"
    """Also send metrics to: none, tensorboard, wandb (comma-separated)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype. auto: float32 master weights and AdamW state (compute in bf16 on a GPU: mixed_precision).
    bfloat16/float16 weights are for LoRA (frozen base, float32 adapter) or need low_precision_weights."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    threads: int = 0
    """torch CPU threads; 0: 1 for the tiny model (2.5-3x faster than 2 threads when another job shares the cores,
    1.2-1.5x slower on an idle machine: BENCHMARKS.md section 7), torch's default (one per core) for other models."""
    progress: bool = True
    """Show a progress bar."""

    @classmethod
    def for_task(cls, task: str = "addition", **options) -> "TrainConfig":
        """The config of a run on ``task``: the task's calibrated defaults (``TASK_DEFAULTS``, e.g. the chain
        task's warm-up and learning rate) under ``options``. ``TrainConfig(task="chain")`` alone keeps the
        global defaults; from Python, as from the command line, use this."""
        return cls(**{**task_defaults(task), **options, "task": task})

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""

        def bad(name, why):
            raise ConfigError(f"invalid config: {name}={getattr(self, name)!r}: {why}")

        from conspo.objectives import get_objective  # here: `conspo --help` needs no torch
        from conspo.update import resolve_group_mode

        hints = get_type_hints(TrainConfig)
        from conspo.score_objectives import REGISTERED

        for f in fields(self):
            choices = get_args(hints[f.name]) if getattr(hints[f.name], "__origin__", None) is Literal else ()
            if f.name == "objective":  # a score objective registered from Python is a valid objective too
                choices = (*choices, *REGISTERED)
            if choices and getattr(self, f.name) not in choices:
                bad(f.name, f"must be one of {', '.join(choices)}")
        from conspo.rewards.math import parse_decimal_match  # no sympy import

        try:
            parse_decimal_match(self.decimal_match)
        except ValueError as e:
            bad("decimal_match", str(e))
        for name in ("steps", "prompts_per_step", "group_size", "updates_per_batch", "sft_batch_size"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in (
            "max_new_tokens",
            "micro_batch_size",
            "max_tokens_per_micro_batch",
            "lora_r",
            "lr_warmup_steps",
            "eval_every",
            "eval_size",
            "log_samples_every",
            "save_every",
            "stop_after",
            "sft_steps",
            "sft_decay_steps",
            "threads",
            "keep_checkpoints",
            "max_consecutive_skips",
            "overlong_buffer",
            "reward_audit_every",
        ):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if get_objective(self.objective).couples_group and self.group_size < 2:
            bad("group_size", f"{self.objective} contrasts completions of the same prompt: needs >= 2")
        for name in ("lr", "temperature", "dynamic_oversample", "overlong_penalty_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                bad(name, "must be a finite number > 0")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if 0 < self.sft_decay_steps < self.sft_steps:
            bad(
                "sft_decay_steps",
                f"must be 0 or >= sft_steps ({self.sft_steps}): the warm-up stops at sft_steps, "
                "before or when its learning rate reaches zero (pass --sft-decay-steps 0, or a value >= --sft-steps)",
            )
        if not 0 <= self.sft_stop_accuracy <= 1:
            bad(
                "sft_stop_accuracy",
                "must be in [0, 1] (0: off; e.g. 0.5 stops the warm-up once half the checked "
                "training problems are solved)",
            )
        if not self.overlong_buffer and self.overlong_penalty_factor != TrainConfig.overlong_penalty_factor:
            bad("overlong_penalty_factor", "is only used with overlong_buffer > 0: set --overlong-buffer too")
        if self.max_new_tokens:
            self.check_generation_limit(self.max_new_tokens)
        for name in ("weight_decay", "max_grad_norm", "beta", "sft_lr", "lora_dropout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                bad(name, "must be a finite number >= 0")
        for name in ("eps_low", "eps_high"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                bad(name, "must be None or a finite number >= 0")
        from conspo.reporting import REPORTERS  # here, not at import: keeps `conspo --help` light

        unknown = [r for r in self.reporters() if r not in REPORTERS]
        if unknown:
            bad("report_to", f"unknown reporter(s) {unknown}; valid: {', '.join(REPORTERS)}")
        import importlib.util

        for reporter in self.reporters():  # checked before any work, not after the model is built
            if importlib.util.find_spec(reporter) is None:
                bad("report_to", f"needs the {reporter} package: pip install {reporter}")
        if self.model == "tiny" and self.task not in ("addition", "chain"):
            # its tokenizer knows 19 characters: math prompts become <pad> runs and generation blows up memory
            bad(
                "task",
                "the tiny model (a 19-character vocabulary) trains only the built-in tasks, addition and chain; "
                f"--task {self.task} needs --model (a transformers model directory or hub id, "
                "e.g. Qwen/Qwen2.5-0.5B-Instruct)",
            )
        problem = self.option_problem(self.objective)  # the objective options' one check, shared with TRL and verl
        if problem:
            raise ConfigError(f"invalid config: {problem[1]}")
        self._validate_options()
        check_device(self)
        if self.micro_batch_size and self.max_tokens_per_micro_batch:
            bad("max_tokens_per_micro_batch", "set either micro_batch_size or max_tokens_per_micro_batch, not both")
        if self.lora_r and self.lora_alpha < 1:
            bad("lora_alpha", "must be >= 1")
        if self.dtype in ("bfloat16", "float16") and not self.lora_r and not self.low_precision_weights:
            bad(
                "dtype",
                "AdamW would update half-precision weights directly and round small updates away (at lr 1e-6 "
                "most of them): use --dtype auto (float32 weights; on a GPU compute runs in bf16, "
                "--mixed-precision auto), "
                "LoRA (--lora-r 16: a frozen half-precision base), or --low-precision-weights to accept the loss",
            )
        if self.low_precision_weights and (self.dtype not in ("bfloat16", "float16") or self.lora_r):
            bad("low_precision_weights", "only changes a run with --dtype bfloat16 or float16 and no LoRA: drop it")
        if self.mixed_precision == "bf16" and self.dtype in ("bfloat16", "float16"):
            bad(
                "mixed_precision",
                f"keeps float32 weights under bf16 autocast; with dtype={self.dtype} the weights "
                "are already half precision: use dtype float32 (or auto) with it",
            )
        try:
            objective = get_objective(self.objective)
            resolve_group_mode(
                self.group_mode,
                couples_group=objective.couples_group,
                rows_per_micro_batch=self.micro_batch_size,
                group_size=self.group_size,
                token_budget=bool(self.max_tokens_per_micro_batch),
                in_graph=objective.normalizer is not None,
            )
        except ValueError as e:
            bad("micro_batch_size" if self.micro_batch_size else "group_mode", str(e))
        check_engine(self)

    def _validate_options(self) -> None:
        """Options with no effect on this objective, task or model (conspo/options.py), and the data task's needs."""
        from conspo.options import refused_option

        refusal = refused_option(self, asdict(TrainConfig()), task_defaults(self.task))
        if refusal:
            raise ConfigError(refusal)
        if self.task == "data" and not (self.train_data and self.reward):
            raise ConfigError(
                "invalid config: task='data' trains your rows with your reward: give both --train-data "
                "and --reward FILE.py:FUNC"
            )
        if self.reward_weights and len(self.reward_weights) != len(self.reward):
            raise ConfigError(
                f"invalid config: reward_weights={self.reward_weights!r}: give one weight per --reward "
                f"({len(self.reward)})"
            )
        for spec in self.reward:
            if ":" not in spec:
                raise ConfigError(f"invalid config: reward={spec!r}: expected FILE.py:FUNCTION or module:function")

    def objective_settings(self, *, margin: float, max_new_tokens: int) -> dict:
        """Every objective option this config sets; ``Objective.options`` keeps those its loss takes."""
        return dict(
            **self.loss_options(self.objective, margin),
            eps_low=self.eps_low,
            eps_high=self.eps_high,
            max_completion_length=max_new_tokens,
        )  # Dr.GRPO's L_max is the generation limit, as in TRL

    def check_generation_limit(self, max_new_tokens: int) -> None:
        """The checks that need the generation limit (``max_new_tokens``, or the task's default when it is 0)."""
        if self.overlong_buffer > max_new_tokens:
            raise ConfigError(
                f"invalid config: overlong_buffer={self.overlong_buffer}: must be at most the generation "
                f"limit ({max_new_tokens} tokens): lower it or raise --max-new-tokens"
            )

    def cpu_threads(self) -> int:
        """torch CPU threads for this run (``threads``; 0 picks per model, see its help), 0: leave torch's default."""
        return self.threads or (1 if self.model == "tiny" else 0)

    def reporters(self) -> list[str]:
        return [r.strip() for r in self.report_to.split(",") if r.strip() and r.strip() != "none"]


#: Defaults that differ by task, calibrated on 2 cores (docs/design.md section 8). An option given on the
#: command line or in --config wins; `conspo train --help` shows the addition task's values.
TASK_DEFAULTS: dict[str, dict] = {
    # the warm-up stops once it solves 45% of 200 training problems (the step where it learns the chain
    # moves between machines and seeds); at half the first default's warm-up rate (1e-3 over a 3,000-step
    # schedule) it stopped at step 1,125 with a base that RL at 3e-6 lifted by 15-18 points in 300 steps
    # (3 seeds), where the first default's base (lr 2e-3, stop at 50%) levelled off 9-11 points up at
    # every rate tried (docs/experiments/chain.md)
    "math": {"train_data": "math_train", "eval_data": "math500"},
    "chain": {
        "sft_steps": 3000,
        "sft_stop_accuracy": 0.45,
        "sft_batch_size": 64,
        "sft_lr": 1e-3,
        "lr": 3e-6,
        "steps": 300,
        "eval_every": 50,
        "prompts_per_step": 8,
    },
}


def upgrade_saved_options(values: dict) -> dict:
    """Options as an older version saved them (a run's config or --config file), in today's form: 0.2.0 wrote
    score_tau 0 for "the objective's default", which is None now."""
    if values.get("score_tau") == 0:
        values = {**values, "score_tau": None}
    return values


def task_defaults(task: str) -> dict:
    """The options whose default depends on the task (empty for most tasks)."""
    return dict(TASK_DEFAULTS.get(task, {}))


def engine_support() -> dict[str, tuple[str, ...]]:
    """Which engines honour each TrainConfig field (``native_only`` / ``trl_only``; both otherwise)."""
    return {f.name: field_engines(f) for f in fields(TrainConfig)}


def engine_hint(name: str) -> str:
    """What to do instead, for a field the chosen engine does not honour."""
    return TrainConfig.__dataclass_fields__[name].metadata["instead"]


def field_help() -> dict[str, str]:
    """The --help text of each TrainConfig field: the docstring under it, read from this module's source, or the
    ``help`` metadata of an inherited field."""
    tree = ast.parse(inspect.getsource(TrainConfig))
    body = tree.body[0].body
    helps = {f.name: f.metadata["help"] for f in fields(TrainConfig) if "help" in f.metadata}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            helps[node.target.id] = " ".join(str(nxt.value.value).split())
    return helps


def help_sections() -> list[tuple[str, list[str]]]:
    """--help groups in order: (title, field names), from the ``# ---- title ----`` comments in TrainConfig's source;
    the inherited objective options open the group named by ``ObjectiveOptions.HELP_SECTION``."""
    source = inspect.getsource(TrainConfig)
    titles = {
        number: match.group(1)
        for number, line in enumerate(source.splitlines(), start=1)
        if (match := re.fullmatch(r"\s*# -{3,} (.+?) -{3,}", line))
    }
    names = {node.lineno: node.target.id for node in ast.parse(source).body[0].body if isinstance(node, ast.AnnAssign)}
    sections: list[tuple[str, list[str]]] = []
    for number in sorted({**titles, **names}):
        if number in titles:
            inherited = titles[number] == ObjectiveOptions.HELP_SECTION
            sections.append((titles[number], [f.name for f in fields(ObjectiveOptions)] if inherited else []))
        else:
            sections[-1][1].append(names[number])
    return sections

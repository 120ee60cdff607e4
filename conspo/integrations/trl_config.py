"""``ConSPOConfig``: TRL's ``GRPOConfig`` plus the objective options and the trainer's own, and the table of
GRPOConfig options that only shape GRPO's loss (``GRPO_ONLY_OPTIONS``), refused here when set. The trainer is
``conspo.integrations.trl.ConSPOTrainer`` (import both from there)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

try:
    import trl
    from trl import GRPOConfig
except ImportError as e:  # pragma: no cover - exercised only without trl
    raise ImportError("conspo.integrations.trl needs TRL: pip install 'conspo[trl]' (trl==1.16.0)") from e

from conspo.objective_options import ObjectiveOptions
from conspo.score_objectives import get_score_objective
from conspo.update import resolve_group_mode

SUPPORTED_TRL_VERSIONS = ("1.16.",)
if not trl.__version__.startswith(SUPPORTED_TRL_VERSIONS):
    raise ImportError(
        f"conspo.integrations.trl supports TRL {', '.join(v + 'x' for v in SUPPORTED_TRL_VERSIONS)}; found "
        f"{trl.__version__}. It overrides private GRPOTrainer methods whose behaviour changes between releases: "
        "pip install trl==1.16.0"
    )

_NO_RATIO = "ConSPO scores the current policy directly: it has no importance ratio and no clipping"
_NO_ADVANTAGE = "ConSPO uses no advantages, only which completions of a group are positive (positive_rule)"
_NO_KL = "ConSPOTrainer adds no KL term and keeps no reference model (the native trainer's --beta adds a k3 penalty)"
_LOSS_TYPE_ONLY = "a parameter of one of GRPO's loss_type variants, which ConSPO replaces"
# Why the entropy bonus is refused rather than added: docs/design.md section 4.
_NO_ENTROPY = (
    "it sets TRL's entropy bonus, which ConSPOTrainer does not add: ConSPO's loss and gradient are on "
    "another scale than GRPO's (docs/design.md section 8), so a coefficient tuned for GRPO would not mean "
    "the same regularisation, and the combination is untested"
)
_NO_VLLM_IS = (
    "reweights GRPO's per-token loss for the vLLM sampler/trainer mismatch; ConSPO's sequence-level "
    "contrast has no per-token loss to reweight"
)

#: GRPOConfig options that only shape GRPO's own loss, and why ConSPOTrainer does not honour them. The one table of
#: the rule: ``ConSPOConfig.__post_init__`` refuses each option set away from its ConSPOConfig default (every
#: default here is the "off" value). Every other GRPOConfig option works as in GRPOTrainer.
GRPO_ONLY_OPTIONS: dict[str, str] = {
    "beta": _NO_KL,
    "use_bias_correction_kl": "weights GRPO's KL term; " + _NO_KL,
    "sync_ref_model": "updates the reference model of the KL term; " + _NO_KL,
    "ref_model_mixup_alpha": "used by sync_ref_model; " + _NO_KL,
    "ref_model_sync_steps": "used by sync_ref_model; " + _NO_KL,
    "loss_type": "selects GRPO's policy loss and its aggregation; ConSPO's loss is the group-wise contrast "
    "(mean over valid groups of the mean over positives)",
    "scale_rewards": "scales GRPO's advantages; " + _NO_ADVANTAGE,
    "multi_objective_aggregation": "normalises rewards into GRPO's advantages; ConSPO sums the weighted rewards "
    "(reward_weights) and splits each group by positive_rule",
    "off_policy_mask_threshold": "drops negative-advantage sequences far from the sampler; " + _NO_ADVANTAGE,
    "epsilon": "clip range of GRPO's importance ratio; " + _NO_RATIO,
    "epsilon_high": "clip range of GRPO's importance ratio; " + _NO_RATIO,
    "delta": "two-sided clip of GRPO's importance ratio; " + _NO_RATIO,
    "importance_sampling_level": "level of GRPO's importance ratio; " + _NO_RATIO,
    "top_entropy_quantile": "keeps only high-entropy tokens in GRPO's per-token loss; ConSPO's loss is per "
    "sequence (a score over all completion tokens)",
    "sapo_temperature_neg": _LOSS_TYPE_ONLY + " (sapo)",
    "sapo_temperature_pos": _LOSS_TYPE_ONLY + " (sapo)",
    "vespo_k_pos": _LOSS_TYPE_ONLY + " (vespo)",
    "vespo_lambda_pos": _LOSS_TYPE_ONLY + " (vespo)",
    "vespo_k_neg": _LOSS_TYPE_ONLY + " (vespo)",
    "vespo_lambda_neg": _LOSS_TYPE_ONLY + " (vespo)",
    "entropy_coef": _NO_ENTROPY,
    "use_adaptive_entropy": _NO_ENTROPY,
    "entropy_coef_min": "used by the entropy bonus; " + _NO_ENTROPY,
    "entropy_coef_max": "used by the entropy bonus; " + _NO_ENTROPY,
    "entropy_coef_delta": "used by the entropy bonus; " + _NO_ENTROPY,
    "entropy_target": "used by the entropy bonus; " + _NO_ENTROPY,
    "vllm_importance_sampling_correction": _NO_VLLM_IS + " (ConSPOConfig's default is False)",
    # the deprecated cap is copied into clip_max by GRPOConfig: checked first so the message names what was set
    "vllm_importance_sampling_cap": "used by vllm_importance_sampling_correction, which " + _NO_VLLM_IS,
    "vllm_importance_sampling_mode": "used by vllm_importance_sampling_correction, which " + _NO_VLLM_IS,
    "vllm_importance_sampling_clip_max": "used by vllm_importance_sampling_correction, which " + _NO_VLLM_IS,
    "vllm_importance_sampling_clip_min": "used by vllm_importance_sampling_correction, which " + _NO_VLLM_IS,
}


@dataclass
class ConSPOConfig(ObjectiveOptions, GRPOConfig):
    """``GRPOConfig`` plus the objective options (``conspo.objective_options.ObjectiveOptions``: ``tau``, ``margin_*``,
    ``positive_*``, ``score``, ``score_tau``, the same declaration the native trainer and verl use) and the
    trainer's own (``objective``, ``group_mode``, ``no_valid_group_warn_steps``).

    GRPO-only options (``GRPO_ONLY_OPTIONS``) must keep their defaults: they would be silently ignored.
    """

    # GRPOConfig defaults this to True, which would make TRL compute an extra no-grad forward pass for ratios that
    # ConSPO never uses; off here, and refused when on (GRPO_ONLY_OPTIONS).
    vllm_importance_sampling_correction: bool = field(
        default=False, metadata={"help": "Not supported by ConSPO (GRPO's vLLM importance-sampling correction)."}
    )
    group_mode: str = field(
        default="auto",
        metadata={
            "help": "whole, coefficients, or auto (whole when per_device_train_batch_size % num_generations == 0)."
        },
    )
    objective: str = field(
        default="conspo",
        metadata={
            "help": "The sequence-score objective: conspo, disco, disco_ratio, real, or one registered with "
            "conspo.score_objectives.register_score_objective (conspo.score_objectives)."
        },
    )
    no_valid_group_warn_steps: int = field(
        default=10,
        metadata={
            "help": "Warn when no group has had both a positive and a negative completion (so the loss and its "
            "gradient are zero) for this many consecutive optimizer steps; 0: never."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        defaults = {f.name: f.default for f in fields(ConSPOConfig) if f.name in GRPO_ONLY_OPTIONS}
        for name, why in GRPO_ONLY_OPTIONS.items():
            value = getattr(self, name)
            if value != defaults[name]:
                raise ValueError(
                    f"ConSPOConfig.{name}={value!r} is not supported by ConSPOTrainer: {why}. Leave it "
                    f"at its default ({defaults[name]!r}), or train with GRPOTrainer."
                )
        try:
            get_score_objective(self.objective)
        except ValueError as e:
            raise ValueError(f"ConSPOConfig.objective: {e}") from None
        problem = self.option_problem(self.objective)
        if problem:
            raise ValueError(f"ConSPOConfig.{problem[1]}")
        if self.no_valid_group_warn_steps < 0:
            raise ValueError(
                f"ConSPOConfig.no_valid_group_warn_steps must be >= 0 (0: never warn), got "
                f"{self.no_valid_group_warn_steps}"
            )
        per_device, G = self.per_device_train_batch_size, self.num_generations
        try:
            resolve_group_mode(
                self.group_mode,
                couples_group=True,
                rows_per_micro_batch=per_device,
                group_size=G or 1,
                in_graph=self.objective == "conspo",
            )
        except ValueError as e:
            if self.group_mode != "whole" or self.objective != "conspo":
                raise ValueError(f"ConSPOConfig.group_mode: {e}") from None
            raise ValueError(
                f"group_mode='whole' keeps each group of num_generations={G} completions inside one micro-batch, so "
                f"per_device_train_batch_size ({per_device}) must be a multiple of {G}: set it to "
                f"{max(G, per_device - per_device % G)} or {per_device + G - per_device % G}, or use "
                "group_mode='coefficients' (exact for any layout when each generation batch gets one optimizer step)."
            ) from None

"""One exact update: the gradient of an objective's full-batch loss, however the batch is split.

A generated batch rarely fits one forward/backward pass, and a ConSPO row's loss depends on
its whole group. ``accumulate_gradients`` splits the batch into micro-batches and still
back-propagates exactly the full-batch gradient (docs/design.md section 4):

* ``whole``: every micro-batch holds whole groups; its loss is computed in-graph and weighted
  by its share of the objective's normaliser (rows, tokens or valid groups), not by
  1/number-of-micro-batches, so splitting never changes the update.
* ``coefficients`` (any sequence-score objective, conspo.score_objectives): score every row without
  gradient, get c = dL/ds for the whole batch (autograd on the detached scores, or a closed form), then
  back-propagate sum_i c_i * s_i(theta) micro-batch by micro-batch.
"""

from __future__ import annotations

import dataclasses

import torch

from conspo.objectives import coefficient_surrogate, get_objective, kl_k3
from conspo.reward_shaping import mask_truncated_rows
from conspo.rollout import Rollouts, token_logprobs
from conspo.score_objectives import get_score_objective, score_coefficients, sequence_score

GROUP_MODES = ("auto", "whole", "coefficients")


def resolve_group_mode(
    mode: str,
    *,
    couples_group: bool,
    rows_per_micro_batch: int,
    group_size: int,
    token_budget: bool = False,
    in_graph: bool = True,
) -> str:
    """How an objective stays exact when a batch is split into micro-batches of ``rows_per_micro_batch``
    rows (0: unsplit), or by a token budget (``token_budget``).

    ``whole``: every micro-batch holds whole groups (needs rows % group_size == 0);
    ``coefficients``: the sequence-score route, any split; ``auto``: coefficients for a group-coupled
    objective whose micro-batches split groups or are packed by a token budget (rows then pack
    freely), or that has no in-graph route (``in_graph=False``: DisCO, REAL, your own score objective),
    else whole. Raises ValueError naming the fix when the combination cannot be exact.
    """
    if mode not in GROUP_MODES:
        raise ValueError(f"group_mode must be one of {', '.join(GROUP_MODES)}, got {mode!r}")
    splits_groups = bool(rows_per_micro_batch) and rows_per_micro_batch % group_size != 0
    if mode == "coefficients" and not couples_group:
        raise ValueError(
            "group_mode=coefficients exists for the group-coupled score objectives only "
            "(conspo, disco, disco_ratio, real, your own)"
        )
    if mode == "whole" and couples_group and not in_graph:
        raise ValueError(
            "group_mode=whole exists for conspo only; this score objective trains by the coefficient "
            "route: use group_mode=coefficients (or auto)"
        )
    if mode == "auto":
        mode = "coefficients" if couples_group and (splits_groups or token_budget or not in_graph) else "whole"
    if mode == "whole" and splits_groups:
        why = "group_mode=whole" if couples_group else "this objective (advantages are computed per group)"
        fix = ", or group_mode=coefficients (or auto) to split groups exactly" if couples_group else ""
        raise ValueError(
            f"micro-batches of {rows_per_micro_batch} rows would split groups of {group_size}, but {why} "
            f"needs whole groups per micro-batch: use a multiple of {group_size}{fix}"
        )
    return mode


def micro_slices(n_rows: int, micro: int) -> list[slice]:
    """Consecutive row slices of at most ``micro`` rows (0: one slice of all rows)."""
    micro = micro or n_rows
    return [slice(i, min(i + micro, n_rows)) for i in range(0, n_rows, micro)]


def row_lengths(rollouts: Rollouts) -> torch.Tensor:
    """(B,) real tokens of each row: prompt (without left padding) + completion (up to its EOS)."""
    return rollouts.prompt_mask.sum(1) + rollouts.completion_mask.sum(1)


def token_budget_batches(
    rollouts: Rollouts, group_size: int, max_tokens: int, *, split_groups: bool
) -> list[torch.Tensor]:
    """Row indices of micro-batches whose padded size, rows x (longest prompt + longest completion
    among them), stays within ``max_tokens``.

    Groups are taken longest first so that similar lengths share a micro-batch (less padding);
    with ``split_groups=False`` every micro-batch holds whole groups, in group order inside it, so
    in-graph group losses see their layout. A group (or row) larger than the budget on its own
    gets a micro-batch of its own. Every row appears in exactly one micro-batch.
    """
    prompt_len = rollouts.prompt_mask.sum(1)
    completion_len = rollouts.completion_mask.sum(1)
    unit = 1 if split_groups else group_size
    units = torch.arange(len(rollouts)).view(-1, unit)
    order = torch.argsort(row_lengths(rollouts).view(-1, unit).max(1).values, descending=True, stable=True)
    batches, current, widest_prompt, widest_completion = [], [], 0, 0
    for u in order.tolist():
        rows = units[u]
        p = max(widest_prompt, int(prompt_len[rows].max()))
        c = max(widest_completion, int(completion_len[rows].max()))
        if current and (len(current) + 1) * unit * (p + c) > max_tokens:
            batches.append(current)
            current, p, c = [], int(prompt_len[rows].max()), int(completion_len[rows].max())
        current.append(u)
        widest_prompt, widest_completion = p, c
    if current:
        batches.append(current)
    return [units[sorted(b)].reshape(-1) for b in batches]


def without_padding(rollouts: Rollouts) -> Rollouts:
    """The same rows with the prompt's all-padding left columns and the completion's all-padding
    right columns removed: a micro-batch is padded only to its own longest row."""
    keep_prompt = rollouts.prompt_mask.bool().any(0).nonzero()
    start = int(keep_prompt[0]) if len(keep_prompt) else rollouts.prompt_mask.shape[1]
    width = int(rollouts.completion_mask.sum(1).max()) if len(rollouts) else 0
    width = max(width, 1)  # keep one column so shapes stay (b, >= 1)
    return Rollouts(
        rollouts.prompt_ids[:, start:],
        rollouts.prompt_mask[:, start:],
        rollouts.completion_ids[:, :width],
        rollouts.completion_mask[:, :width],
        rollouts.truncated,
        rollouts.texts,
    )


def micro_batches(
    rollouts: Rollouts, group_size: int, *, micro_batch_size: int = 0, max_tokens: int = 0, split_groups: bool
) -> list[torch.Tensor]:
    """Row indices of each micro-batch: by token budget when ``max_tokens`` is set, else by row count."""
    if max_tokens:
        return token_budget_batches(rollouts, group_size, max_tokens, split_groups=split_groups)
    return [torch.arange(sl.start, sl.stop) for sl in micro_slices(len(rollouts), micro_batch_size)]


@torch.no_grad()
def batch_token_logprobs(
    model, rollouts: Rollouts, batches: list[torch.Tensor], *, temperature: float = 1.0
) -> torch.Tensor:
    """(B, Tc) token log-probs (logits / ``temperature``) of every row without gradient, micro-batch by
    micro-batch (the sampling policy's log-probs when a batch is reused); columns past a row's completion are 0."""
    out = torch.zeros(rollouts.completion_mask.shape, dtype=torch.float32)
    for rows in batches:
        logps = token_logprobs(model, without_padding(rollouts.rows(rows)), temperature=temperature)
        out = out.to(torch.promote_types(out.dtype, logps.dtype))
        out[rows, : logps.shape[1]] = logps.to(out.dtype)
    return out


def accumulate_gradients(
    model,
    objective_name: str,
    rollouts: Rollouts,
    rewards: torch.Tensor,
    group_size: int,
    options: dict,
    *,
    micro_batch_size: int = 0,
    max_tokens_per_micro_batch: int = 0,
    group_mode: str = "auto",
    old_token_logps: torch.Tensor | None = None,
    ref_logprobs=None,
    beta: float = 0.0,
    temperature: float = 1.0,
    mask_truncated: bool = False,
) -> dict:
    """Back-propagate the objective's full-batch loss (``.grad`` accumulates); return its metrics.

    ``options`` are the loss's keyword options (``Objective.options``). Micro-batches hold
    ``micro_batch_size`` rows, or as many rows as fit ``max_tokens_per_micro_batch`` padded
    tokens (each padded only to its own longest row). With ``beta > 0`` a k3 KL penalty to the
    reference policy (``ref_logprobs(rollouts) -> (b, T)`` log-probs) is added, weighted per
    micro-batch by its share of the rows. Log-probs are of ``logits / temperature``: pass the
    sampling temperature to score the distribution the rollouts were drawn from (as TRL and verl do).
    ``mask_truncated``: rows with ``rollouts.truncated`` take part as empty completions (``mask_truncated_rows``).
    """
    objective = get_objective(objective_name)
    if mask_truncated:  # before anything reads the mask: normalisers, group sets, KL and micro-batch widths all see it
        rollouts = dataclasses.replace(
            rollouts, completion_mask=mask_truncated_rows(rollouts.completion_mask, rollouts.truncated)
        )
    mask = rollouts.completion_mask
    n_rows, width = mask.shape
    budget = max_tokens_per_micro_batch
    group_mode = resolve_group_mode(
        group_mode,
        couples_group=objective.couples_group,
        rows_per_micro_batch=0 if budget else micro_batch_size,
        group_size=group_size,
        token_budget=bool(budget),
        in_graph=objective.normalizer is not None,
    )
    batches = micro_batches(
        rollouts,
        group_size,
        micro_batch_size=micro_batch_size,
        max_tokens=budget,
        split_groups=group_mode == "coefficients",
    )

    def forward(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Rollouts]:
        """(logps, mask) of these rows, computed on their own padding only."""
        part = without_padding(rollouts.rows(rows))
        return token_logprobs(model, part, temperature=temperature), part.completion_mask, part

    def kl_term(part: Rollouts, logps: torch.Tensor) -> torch.Tensor:
        if not beta:
            return logps.new_zeros(())
        with torch.no_grad():
            ref = ref_logprobs(part)
        # kl_k3 is a mean over rows: weight by the rows' share of the batch
        return beta * kl_k3(logps, ref, part.completion_mask) * len(part) / n_rows

    if group_mode == "coefficients":
        score_objective = get_score_objective(objective.score_objective)
        options = {**objective.option_defaults, **options}
        kind = score_objective.score_kind(options)

        def old_of(rows, logps):  # the sampling policy's log-probs; on-policy: the current ones, detached
            return logps.detach() if old_token_logps is None else old_token_logps[rows][:, : logps.shape[1]].to(logps)

        scores = torch.empty(n_rows, dtype=torch.float64)
        with torch.no_grad():
            for rows in batches:
                logps, part_mask, _ = forward(rows)
                scores[rows] = sequence_score(kind, logps, old_of(rows, logps), part_mask).double()
        scores = scores.to(logps.dtype)
        coefficients, metrics = score_coefficients(
            score_objective, scores, rewards.to(scores.dtype), mask.bool().any(-1), group_size, **options
        )
        for rows in batches:
            logps, part_mask, part = forward(rows)
            s = sequence_score(kind, logps, old_of(rows, logps), part_mask)
            (coefficient_surrogate(coefficients[rows], s) + kl_term(part, logps)).backward()
        return metrics

    total = objective.normalizer(mask, rewards, group_size, **options)
    all_logps = torch.zeros(n_rows, width, dtype=torch.float64)
    for rows in batches:
        logps, part_mask, part = forward(rows)
        old = logps.detach() if old_token_logps is None else old_token_logps[rows][:, : logps.shape[1]]
        share = objective.normalizer(part_mask, rewards[rows], group_size, **options)
        if share > 0:
            loss, metrics = objective.loss(logps, old, part_mask, rewards[rows], group_size, **options)
            (loss * (share / total) + kl_term(part, logps)).backward()
            if len(batches) == 1:
                return metrics  # the whole batch in one piece: these are the batch's metrics
        elif beta:
            kl_term(part, logps).backward()
        all_logps[rows, : logps.shape[1]] = logps.detach().double()
    # Metrics of the whole batch from the detached log-probs: no extra forward pass.
    logps = all_logps.to(logps.dtype)
    old = logps if old_token_logps is None else old_token_logps
    with torch.no_grad():
        _, metrics = objective.loss(logps, old, mask, rewards, group_size, **options)
    return metrics


def grad_norm(model, max_norm: float) -> float:
    """The global gradient norm (before clipping); clips it to ``max_norm`` when > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))

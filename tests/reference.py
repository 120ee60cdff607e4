"""Loop reference implementations: one rollout and one token at a time, written from the
formulas in docs/design.md (not from conspo.objectives), to check the vectorised code against.

Slow by design; only for tests on small batches. Scalars are torch tensors so that
autograd works through them too.
"""

import math

import torch


def _score(logps_row, mask_row, normalize=True):
    total, count = torch.zeros((), dtype=logps_row.dtype), 0
    for t in range(len(mask_row)):
        if mask_row[t]:
            total = total + logps_row[t]
            count += 1
    if count == 0:
        return total, 0
    return (total / count if normalize else total), count


def _is_positive(reward, taking_part, threshold, rule):
    """docs/design.md section 2: reward >= threshold, or (group_mean) strictly above the mean reward of
    the completions of the group that take part (non-empty ones)."""
    if rule == "threshold":
        return reward >= threshold
    assert rule == "group_mean", rule
    mean = math.fsum(taking_part) / len(taking_part)
    return reward > mean


def conspo_loss_loop(token_logps, mask, rewards, G, margin, tau, threshold=0.5, normalize=True, rule="group_mean"):
    B = token_logps.shape[0]
    group_losses = []
    for g in range(B // G):
        scores, pos, neg = {}, [], []
        for i in range(g * G, (g + 1) * G):
            s, n = _score(token_logps[i], mask[i], normalize)
            if n == 0:
                continue
            scores[i] = s
        taking_part = [float(rewards[i]) for i in scores]
        for i in scores:
            (pos if _is_positive(float(rewards[i]), taking_part, threshold, rule) else neg).append(i)
        if not pos or not neg:
            continue
        terms = []
        for i in pos:
            numerator = torch.exp((scores[i] - margin) / tau)
            denominator = numerator
            for j in neg:
                denominator = denominator + torch.exp(scores[j] / tau)
            terms.append(-torch.log(numerator / denominator))
        group_losses.append(sum(terms) / len(pos))
    if not group_losses:
        return torch.zeros((), dtype=token_logps.dtype)
    return sum(group_losses) / len(group_losses)


def conspo_coefficients_loop(scores, rewards, G, margin, tau, threshold=0.5, rule="group_mean"):
    """dL/ds from the closed form of docs/design.md section 2, one element at a time (every row non-empty)."""
    B = len(scores)
    s = [float(x) for x in scores]
    c = [0.0] * B
    valid_groups = []
    for g in range(B // G):
        rows = range(g * G, (g + 1) * G)
        taking_part = [float(rewards[i]) for i in rows]
        pos = [i for i in rows if _is_positive(float(rewards[i]), taking_part, threshold, rule)]
        neg = [j for j in rows if j not in pos]
        if pos and neg:
            valid_groups.append((pos, neg))
    V = len(valid_groups)
    for pos, neg in valid_groups:
        P = len(pos)
        Z = {i: math.exp((s[i] - margin) / tau) + sum(math.exp(s[j] / tau) for j in neg) for i in pos}
        for i in pos:
            c[i] = -(1 - math.exp((s[i] - margin) / tau) / Z[i]) / (tau * V * P)
        for j in neg:
            c[j] = sum(math.exp(s[j] / tau) / Z[i] for i in pos) / (tau * V * P)
    return torch.tensor(c, dtype=torch.float64)


def _advantages(rewards, G, scale):
    A = []
    for g in range(len(rewards) // G):
        r = [float(x) for x in rewards[g * G : (g + 1) * G]]
        mean = sum(r) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (G - 1)) if G > 1 else 0.0
        for x in r:
            A.append((x - mean) / (std + 1e-4) if scale else x - mean)
    return A


def _ppo_term(logp, old, A, eps_low, eps_high):
    rho = torch.exp(logp - old)
    clipped = torch.clamp(rho, 1 - eps_low, 1 + eps_high)
    return -torch.minimum(rho * A, clipped * A)


def clipped_loss_loop(kind, token_logps, old, mask, rewards, G, eps_low, eps_high, max_len=None):
    """kind in grpo | dr_grpo | dapo | gspo."""
    B, T = token_logps.shape
    A = _advantages(rewards, G, scale=(kind != "dr_grpo"))
    total = torch.zeros((), dtype=token_logps.dtype)
    n_tokens = 0
    for i in range(B):
        idx = [t for t in range(T) if mask[i][t]]
        n_tokens += len(idx)
        if kind == "gspo":
            if idx:
                log_ratio = sum(token_logps[i][t] - old[i][t] for t in idx) / len(idx)
                total = total + _ppo_term(log_ratio, torch.zeros((), dtype=token_logps.dtype), A[i], eps_low, eps_high)
            continue
        row = torch.zeros((), dtype=token_logps.dtype)
        for t in idx:
            row = row + _ppo_term(token_logps[i][t], old[i][t], A[i], eps_low, eps_high)
        if kind == "grpo":
            total = total + (row / len(idx) if idx else row)
        else:
            total = total + row
    if kind in ("grpo", "gspo"):
        return total / B
    if kind == "dr_grpo":
        return total / (B * (T if max_len is None else max_len))
    return total / max(n_tokens, 1)  # dapo


def grpo_score_gap_loop(token_logps, old, mask, rewards, G, eps_low, eps_high):
    """docs/design.md section 1, written out: -(1/B) sum_g w_g (mean S+ - mean S-)."""
    B, T = token_logps.shape
    total = 0.0
    for g in range(B // G):
        rows = list(range(g * G, (g + 1) * G))
        r = [float(rewards[i]) for i in rows]
        k = sum(1 for x in r if x == 1)
        if k in (0, G):
            continue
        p = k / G
        mean = sum(r) / G
        sigma = math.sqrt(sum((x - mean) ** 2 for x in r) / (G - 1))
        w = k * (G - k) / (G * (sigma + 1e-4))
        assert abs(w - ((1 - p) * k / (sigma + 1e-4))) < 1e-9  # A+ * k == w_g
        s_pos, s_neg = [], []
        for i in rows:
            idx = [t for t in range(T) if mask[i][t]]
            rhos = [math.exp(float(token_logps[i][t] - old[i][t])) for t in idx]
            if float(rewards[i]) == 1:
                s_pos.append(sum(min(x, 1 + eps_high) for x in rhos) / max(len(idx), 1))
            else:
                s_neg.append(sum(max(x, 1 - eps_low) for x in rhos) / max(len(idx), 1))
        total += w * (sum(s_pos) / len(s_pos) - sum(s_neg) / len(s_neg))
    return -total / B


# --- sequence-score objectives (DisCO, REAL): from the papers' formulas, one row and one group at a time ---


def _score_loop(kind, logps_row, old_row, mask_row):
    """One completion's score: mean_logp, mean_ratio (mean token pi/pi_old) or mean_log_ratio."""
    total, count = torch.zeros((), dtype=logps_row.dtype), 0
    for t in range(len(mask_row)):
        if mask_row[t]:
            if kind == "mean_logp":
                total = total + logps_row[t]
            elif kind == "mean_ratio":
                total = total + torch.exp(logps_row[t] - old_row[t])
            else:
                assert kind == "mean_log_ratio", kind
                total = total + (logps_row[t] - old_row[t])
            count += 1
    return (total / count if count else total), count


def _labelled_groups(kind, token_logps, old, mask, rewards, G):
    """Per group: (scores of its positives, scores of its negatives); positive = reward above the mean reward of
    the group's non-empty completions (0/1 rewards: the correct ones); groups without both kinds are left out."""
    groups = []
    for g in range(token_logps.shape[0] // G):
        scores = {}
        for i in range(g * G, (g + 1) * G):
            s, n = _score_loop(kind, token_logps[i], old[i], mask[i])
            if n:
                scores[i] = s
        taking_part = [float(rewards[i]) for i in scores]
        pos = [scores[i] for i in scores if _is_positive(float(rewards[i]), taking_part, 0.5, "group_mean")]
        neg = [scores[i] for i in scores if not _is_positive(float(rewards[i]), taking_part, 0.5, "group_mean")]
        if pos and neg:
            groups.append((pos, neg))
    return groups


def disco_loss_loop(token_logps, old, mask, rewards, G, tau, kind="mean_logp"):
    """DisCO (arXiv 2505.12366), negated: mean over groups of -mean_+ s + tau log mean_- exp(s/tau)."""
    losses = []
    for pos, neg in _labelled_groups(kind, token_logps, old, mask, rewards, G):
        mean_pos = sum(pos) / len(pos)
        mean_exp = sum(torch.exp(s / tau) for s in neg) / len(neg)
        losses.append(-mean_pos + tau * torch.log(mean_exp))
    return sum(losses) / len(losses) if losses else torch.zeros((), dtype=token_logps.dtype)


def real_loss_loop(token_logps, old, mask, rewards, G, tau):
    """REAL (arXiv 2602.05630): mean over groups of log(1 + sum_+ exp(-s/tau)) + log(1 + sum_- exp(s/tau)),
    s = mean token log(pi/pi_old)."""
    losses = []
    for pos, neg in _labelled_groups("mean_log_ratio", token_logps, old, mask, rewards, G):
        plus = 1 + sum(torch.exp(-s / tau) for s in pos)
        minus = 1 + sum(torch.exp(s / tau) for s in neg)
        losses.append(torch.log(plus) + torch.log(minus))
    return sum(losses) / len(losses) if losses else torch.zeros((), dtype=token_logps.dtype)

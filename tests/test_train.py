"""Trainer: exact gradients under micro-batching, and smoke runs of the real CLI (cleanrl-style)."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import TINY, comparable, read_jsonl, run_cli

from conspo.models import build_char_tokenizer, build_tiny_model
from conspo.objectives import OBJECTIVES, get_objective
from conspo.rollout import generate, token_logprobs
from conspo.update import accumulate_gradients

# --- exactness of the update under micro-batching ------------------------------------


@pytest.fixture(scope="module")
def policy_and_batch():
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), hidden=32, layers=2, ffn=64, heads=2).double()
    G = 4
    rollouts = generate(model, tokenizer, ["12+34=", "5+6=", "99+1=", "7+70="], num_generations=G, max_new_tokens=5)
    rewards = torch.tensor(
        [1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.float64
    )  # group 1 and 3 have no contrast
    return model, rollouts, rewards, G


def _grad(model, **kwargs):
    model.zero_grad(set_to_none=True)
    metrics = accumulate_gradients(model, **kwargs)
    return torch.cat([p.grad.flatten() for p in model.parameters()]), metrics


def _full_batch_grad(model, name, rollouts, rewards, G, options):
    """The reference: the objective's loss on the whole batch in one graph, autograd."""
    model.zero_grad(set_to_none=True)
    logps = token_logprobs(model, rollouts)
    loss, _ = get_objective(name).loss(logps, logps.detach(), rollouts.completion_mask, rewards, G, **options)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    "micro,mode",
    [
        (0, "whole"),
        (4, "whole"),
        (8, "auto"),
        (3, "coefficients"),
        (5, "auto"),
        (16, "coefficients"),
        (1, "coefficients"),
    ],
)
def test_conspo_micro_batch_gradients_equal_full_batch(policy_and_batch, micro, mode):
    model, rollouts, rewards, G = policy_and_batch
    options = {
        "margin": 0.1,
        "tau": 0.3,
        "positive_threshold": 0.5,
        "positive_rule": "threshold",
        "score": "mean",
    }
    reference = _full_batch_grad(model, "conspo", rollouts, rewards, G, options)
    grad, metrics = _grad(
        model,
        objective_name="conspo",
        rollouts=rollouts,
        rewards=rewards,
        group_size=G,
        options=options,
        micro_batch_size=micro,
        group_mode=mode,
    )
    assert reference.abs().max() > 0
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)
    assert metrics["conspo/valid_group_frac"] == 0.5


@pytest.mark.parametrize(
    "split",
    [
        dict(micro_batch_size=4, group_mode="whole"),
        dict(micro_batch_size=3, group_mode="coefficients"),
        dict(max_tokens_per_micro_batch=40, group_mode="auto"),
    ],
)
def test_conspo_group_mean_rule_micro_batch_gradients_equal_full_batch(policy_and_batch, split):
    """positive_rule reaches every route of the native update (in-graph per micro-batch, normaliser, coefficients)."""
    model, rollouts, _, G = policy_and_batch
    rewards = torch.tensor(
        [0.2, 0.9, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 0.1, 0.8, 0.4, 0.6, 1, 1, 1, 1], dtype=torch.float64
    )  # graded; groups 1 and 3 all equal: no positive under group_mean
    options = {"margin": 0.1, "tau": 0.3, "positive_rule": "group_mean"}
    reference = _full_batch_grad(model, "conspo", rollouts, rewards, G, options)
    grad, metrics = _grad(
        model, objective_name="conspo", rollouts=rollouts, rewards=rewards, group_size=G, options=options, **split
    )
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)
    assert metrics["conspo/valid_group_frac"] == 0.5
    threshold = _full_batch_grad(
        model, "conspo", rollouts, rewards, G, {"margin": 0.1, "tau": 0.3, "positive_rule": "threshold"}
    )
    assert (threshold - reference).abs().max() > 1e-6, "the rules pick different positives here (0.5 in group 0)"


@pytest.mark.parametrize("name", [n for n in OBJECTIVES if n != "conspo"])
@pytest.mark.parametrize("micro", [0, 4, 8])
def test_clipped_objectives_micro_batch_gradients_equal_full_batch(policy_and_batch, name, micro):
    model, rollouts, rewards, G = policy_and_batch
    options = {"max_completion_length": 5} if name == "dr_grpo" else {}
    reference = _full_batch_grad(model, name, rollouts, rewards, G, options)
    grad, _ = _grad(
        model,
        objective_name=name,
        rollouts=rollouts,
        rewards=rewards,
        group_size=G,
        options=options,
        micro_batch_size=micro,
        group_mode="auto",
    )
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)


def _full_batch_grad_with(model, name, rollouts, rewards, G, options, old, beta, ref_model):
    """Reference with old log-probs and a KL term, in one graph."""
    from conspo.objectives import kl_k3

    model.zero_grad(set_to_none=True)
    logps = token_logprobs(model, rollouts)
    mask = rollouts.completion_mask
    loss, _ = get_objective(name).loss(logps, old, mask, rewards, G, **options)
    if beta:
        with torch.no_grad():
            ref = token_logprobs(ref_model, rollouts)
        loss = loss + beta * kl_k3(logps, ref, mask)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("budget", [1, 40, 90, 10_000])
def test_token_budget_micro_batches_give_the_full_batch_gradient(policy_and_batch, name, budget):
    """Micro-batches by token budget, each trimmed to its own padding, with old log-probs and a KL term."""
    import copy

    model, rollouts, rewards, G = policy_and_batch
    options = {"conspo": {"margin": 0.1, "tau": 0.3}, "dr_grpo": {"max_completion_length": 5}}.get(name, {})
    gen = torch.Generator().manual_seed(1)
    old = token_logprobs(model, rollouts).detach() + 0.05 * torch.randn(
        rollouts.completion_mask.shape, generator=gen, dtype=torch.float64
    )
    ref_model = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref_model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    reference = _full_batch_grad_with(model, name, rollouts, rewards, G, options, old, 0.05, ref_model)
    grad, _ = _grad(
        model,
        objective_name=name,
        rollouts=rollouts,
        rewards=rewards,
        group_size=G,
        options=options,
        max_tokens_per_micro_batch=budget,
        old_token_logps=old,
        beta=0.05,
        ref_logprobs=lambda part: token_logprobs(ref_model, part),
    )
    assert reference.abs().max() > 0
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("split_groups", [False, True])
@pytest.mark.parametrize("budget", [1, 30, 64, 200])
def test_token_budget_batches_cover_every_row_once_within_budget(policy_and_batch, split_groups, budget):
    from conspo.update import row_lengths, token_budget_batches, without_padding

    _, rollouts, _, G = policy_and_batch
    batches = token_budget_batches(rollouts, G, budget, split_groups=split_groups)
    assert sorted(torch.cat(batches).tolist()) == list(range(len(rollouts)))
    unit = 1 if split_groups else G
    for rows in batches:
        part = without_padding(rollouts.rows(rows))
        padded = len(rows) * (part.prompt_ids.shape[1] + part.completion_ids.shape[1])
        assert padded <= budget or len(rows) == unit, "only a unit too large on its own may exceed the budget"
        assert part.prompt_mask[:, 0].any() and part.completion_mask[:, -1].any(), "trimmed to its own padding"
        if not split_groups:
            assert rows.view(-1, G).eq(rows.view(-1, G)[:, :1] + torch.arange(G)).all(), "whole groups in order"
            assert (rows.view(-1, G)[:, 0] % G == 0).all()
    assert max(row_lengths(rollouts)) > min(row_lengths(rollouts)), "the batch must have ragged rows to mean anything"


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("split", [dict(micro_batch_size=4), dict(max_tokens_per_micro_batch=40)])
def test_mask_truncated_update_is_the_full_batch_gradient_of_the_masked_loss(policy_and_batch, name, split):
    """Truncated rows as empty completions, under micro-batching (one micro-batch of whole groups is all truncated;
    ConSPO under a token budget takes the coefficient route)."""
    import dataclasses

    from conspo.reward_shaping import mask_truncated_rows

    model, rollouts, rewards, G = policy_and_batch
    truncated = torch.zeros(len(rollouts), dtype=torch.bool)
    truncated[[0, 5, 10, 12, 13, 14, 15]] = True  # row 10 is group 2's only negative; group 3 entirely
    rollouts = dataclasses.replace(rollouts, truncated=truncated)
    options = {"conspo": {"margin": 0.1, "tau": 0.3}, "dr_grpo": {"max_completion_length": 5}}.get(name, {})
    masked = dataclasses.replace(rollouts, completion_mask=mask_truncated_rows(rollouts.completion_mask, truncated))
    reference = _full_batch_grad(model, name, masked, rewards, G, options)
    grad, metrics = _grad(
        model,
        objective_name=name,
        rollouts=rollouts,
        rewards=rewards,
        group_size=G,
        options=options,
        mask_truncated=True,
        **split,
    )
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)
    assert (_full_batch_grad(model, name, rollouts, rewards, G, options) - reference).abs().max() > 1e-8
    if name == "conspo":
        assert metrics["conspo/valid_group_frac"] == 0.25  # group 2 lost its only negative


def test_split_groups_refused_for_clipped_objectives(policy_and_batch):
    model, rollouts, rewards, G = policy_and_batch
    with pytest.raises(ValueError, match="whole groups"):
        accumulate_gradients(model, "grpo", rollouts, rewards, G, {}, micro_batch_size=3)


# --- the real CLI, tiny -----------------------------------------------------------------

STABLE_NAMES = {
    "reward/mean",
    "objective/loss",
    "objective/grad_norm",
    "conspo/score_gap",
    "conspo/margin",
    "gen/truncated_frac",
    "time/step_s",
    "train/lr",
}


@pytest.mark.slow
def test_train_smoke_writes_every_output(tmp_path, cache_dir):
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        *TINY,
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--save-every",
        "2",
        "--log-samples-every",
        "2",
        "--margin-schedule",
        "linear",
        "--margin-end",
        "0.2",
        "--output-dir",
        str(out),
        cache_dir=cache_dir,
    )
    assert "held-out accuracy after (greedy)" in proc.stdout + proc.stderr
    summary = json.load(open(out / "summary.json"))
    for key in ("objective", "steps", "heldout_accuracy_before", "heldout_accuracy_after", "wall_seconds"):
        assert key in summary
    assert summary["steps"] == 4
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4]
    assert STABLE_NAMES <= set(metrics[1])
    assert metrics[4]["conspo/margin"] == pytest.approx(0.2 * 3 / 4)  # linear ramp over 4 steps, at step index 3
    assert yaml.safe_load(open(out / "config.yaml"))["objective"] == "conspo"
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "final" / "model.safetensors").exists()
    assert len(read_jsonl(out / "samples.jsonl")) == 2 * 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["conspo", "grpo"])
def test_resume_equals_uninterrupted_run(tmp_path, cache_dir, objective):
    common = [*TINY, "--objective", objective, "--steps", "6", "--eval-every", "3", "--save-every", "2", "--seed", "3"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    run_cli("train", *common, "--output-dir", str(full), cache_dir=cache_dir)
    run_cli("train", *common, "--output-dir", str(parts), "--stop-after", "3", cache_dir=cache_dir)
    assert not (parts / "summary.json").exists()
    # a torn, half-written line after the checkpoint must not survive the resume
    with open(parts / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward/me')
    run_cli("train", "--resume", str(parts), cache_dir=cache_dir)
    assert comparable(read_jsonl(parts / "metrics.jsonl")) == comparable(read_jsonl(full / "metrics.jsonl"))
    from safetensors.torch import load_file

    a = load_file(str(full / "final" / "model.safetensors"))
    b = load_file(str(parts / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_coefficient_mode_run_matches_whole_group_run(tmp_path, cache_dir):
    """End to end: one step in coefficient mode with groups split gives the same weights as whole groups."""
    common = [*TINY, "--steps", "2", "--eval-every", "0", "--save-every", "0", "--lr", "1e-3"]
    run_cli("train", *common, "--output-dir", str(tmp_path / "whole"), "--group-mode", "whole", cache_dir=cache_dir)
    run_cli(
        "train",
        *common,
        "--output-dir",
        str(tmp_path / "coef"),
        "--group-mode",
        "coefficients",
        "--micro-batch-size",
        "3",
        cache_dir=cache_dir,
    )
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "coef" / "final" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    ma = read_jsonl(tmp_path / "whole" / "metrics.jsonl")[1]
    mb = read_jsonl(tmp_path / "coef" / "metrics.jsonl")[1]
    assert ma["objective/loss"] == pytest.approx(mb["objective/loss"], rel=1e-5)


@pytest.mark.slow
def test_compare_smoke(tmp_path, cache_dir):
    out = tmp_path / "cmp"
    proc = run_cli(
        "compare",
        "--objectives",
        "conspo,grpo",
        "--seeds",
        "2",
        *TINY,
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--output-dir",
        str(out),
        cache_dir=cache_dir,
    )
    data = json.load(open(out / "compare.json"))
    assert [r["objective"] for r in data["table"]] == ["conspo", "grpo"]
    assert all(r["seeds"] == 2 for r in data["table"])
    assert "| conspo | 2 |" in proc.stdout and (out / "compare.png").exists() and (out / "compare_lengths.png").exists()
    runs = data["runs"]["conspo"]
    assert all(
        [row[0] for row in run["generation"]] == [1, 2] and all(row[1] > 0 for row in run["generation"]) for run in runs
    )
    # the last 10% of 2 steps is the last step; the table averages it over the seeds
    assert data["table"][0]["late_length_mean"] == pytest.approx(sum(run["generation"][-1][1] for run in runs) / 2)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "conspo-seed0",
        "conspo-seed1",
        "grpo-seed0",
        "grpo-seed1",
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps", "0"], "steps=0"),
        (["--objective", "ppo"], "objective='ppo'"),
        (["--tau", "-1"], "tau=-1.0"),
        (["--micro-batch-size", "3", "--objective", "grpo"], "micro_batch_size=3"),
        (["--group-mode", "coefficients", "--objective", "dapo"], "group_mode"),
        (["--margin-schedule", "exp"], "margin_schedule='exp'"),
        (["--report-to", "mlflow"], "report_to"),
    ],
)
def test_bad_config_values_give_clear_errors(tmp_path, cache_dir, args, message):
    proc = run_cli("train", *args, "--output-dir", str(tmp_path / "x"), cache_dir=cache_dir, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_bad_yaml_config(tmp_path, cache_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: conspo\nlearning_rate: 0.1\n")
    proc = run_cli("train", "--config", str(bad), cache_dir=cache_dir, check=False)
    assert proc.returncode == 2 and "unknown option(s) ['learning_rate']" in proc.stderr
    bad.write_text("steps: many\n")
    proc = run_cli("train", "--config", str(bad), cache_dir=cache_dir, check=False)
    assert proc.returncode == 2 and "steps='many' should be of type int" in proc.stderr
    bad.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    proc = run_cli("train", "--config", str(bad), cache_dir=cache_dir, check=False)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr


def test_existing_output_dir_is_not_clobbered(tmp_path, cache_dir):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    proc = run_cli("train", "--output-dir", str(out), cache_dir=cache_dir, check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (out / "precious.txt").read_text() == "keep"


def test_help_shows_field_docs():
    proc = subprocess.run([sys.executable, "-m", "conspo", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "ConSPO temperature" in proc.stdout and "--group-mode" in proc.stdout


def test_tiny_base_replaces_an_incomplete_cache_and_leaves_no_temporary_directory(tmp_path):
    from conspo.models import TINY_MARKER
    from conspo.tasks import get_task
    from conspo.warmup import tiny_base

    task = get_task("addition")
    tiny_base(task, steps=2, lr=1e-3, batch_size=8, seed=0, cache_dir=tmp_path, log=lambda *a: None)
    [cached] = list(tmp_path.iterdir())
    (cached / TINY_MARKER).unlink()  # as if a crash had interrupted the first build
    tiny_base(task, steps=2, lr=1e-3, batch_size=8, seed=0, cache_dir=tmp_path, log=lambda *a: None)
    assert [p.name for p in tmp_path.iterdir()] == [cached.name], "no .tmp* directory may be left behind"
    assert (cached / TINY_MARKER).exists()


def test_warmup_can_stop_in_the_middle_of_a_longer_schedule(tmp_path, monkeypatch):
    """--sft-decay-steps H: the warm-up's lr follows the H-step linear schedule and stops at sft_steps;
    the base gets its own cache entry, and bases cached without the option keep their keys."""
    import torch

    from conspo.config import TrainConfig
    from conspo.errors import ConfigError
    from conspo.tasks import get_task
    from conspo.warmup import tiny_base

    seen_lrs = []
    adamw_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen_lrs.append(self.param_groups[0]["lr"])
        return adamw_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    task = get_task("addition")
    quiet = {"batch_size": 8, "seed": 0, "cache_dir": tmp_path, "log": lambda *a: None}
    _, _, annealed = tiny_base(task, steps=3, lr=1e-3, **quiet)
    assert seen_lrs == pytest.approx([1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    seen_lrs.clear()
    _, _, stopped = tiny_base(task, steps=3, lr=1e-3, decay_steps=6, **quiet)
    assert seen_lrs == pytest.approx([1e-3, 1e-3 * 5 / 6, 1e-3 * 4 / 6])
    assert stopped != annealed
    assert tiny_base(task, steps=3, lr=1e-3, decay_steps=3, **quiet)[2] == annealed  # same schedule, same base
    with pytest.raises(ConfigError, match="sft_decay_steps"):
        TrainConfig(sft_steps=10, sft_decay_steps=5).validate()


def test_warmup_stops_at_the_first_check_that_reaches_the_accuracy(tmp_path, monkeypatch):
    """--sft-stop-accuracy: the warm-up checks itself every WARMUP_CHECK_EVERY steps on training problems
    and stops at the first check at or above the target; the checks do not disturb training (the base
    equals one trained for that many steps of the same schedule) and the option has its own cache key."""
    import torch

    import conspo.warmup
    from conspo.config import TrainConfig
    from conspo.errors import ConfigError
    from conspo.tasks import get_task

    every = conspo.warmup.WARMUP_CHECK_EVERY
    checks = []

    def fake_accuracy(model, tokenizer, task, problems):
        assert all(p in task.train_problems() for p in problems[:5]), "checks use training problems only"
        checks.append(len(problems))
        return [0.1, 0.3, 0.5][len(checks) - 1]

    monkeypatch.setattr(conspo.warmup, "greedy_accuracy", fake_accuracy)
    task = get_task("addition")
    quiet = {"lr": 1e-3, "batch_size": 8, "seed": 0, "cache_dir": tmp_path, "log": lambda *a: None}
    stopped, _, stopped_path = conspo.warmup.tiny_base(
        task, steps=10 * every, decay_steps=10 * every, stop_accuracy=0.45, **quiet
    )
    assert checks == [conspo.warmup.WARMUP_CHECK_PROBLEMS] * 3  # steps 25, 50, 75: the third reaches 0.45
    plain, _, plain_path = conspo.warmup.tiny_base(task, steps=3 * every, decay_steps=10 * every, **quiet)
    assert stopped_path != plain_path  # own cache key
    for (name, a), b in zip(stopped.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="sft_stop_accuracy"):
        TrainConfig(sft_stop_accuracy=1.5).validate()


def test_warmup_check_measures_greedy_accuracy_on_the_given_problems():
    from conspo.heldout import evaluate_greedy
    from conspo.models import build_char_tokenizer, build_tiny_model
    from conspo.tasks import get_task
    from conspo.warmup import greedy_accuracy

    task = get_task("addition")
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), max_positions=64, seed=0)
    problems = task.train_problems()[:4]
    model.eval()
    expected, _ = evaluate_greedy(model, tokenizer, task, problems, max_new_tokens=task.max_new_tokens)
    model.train()
    assert greedy_accuracy(model, tokenizer, task, problems) == expected.accuracy
    assert model.training  # back in train mode for the next warm-up step
    # an untrained model solves nothing: the verifier's verdicts on exactly these problems are averaged
    seen = []
    task.score = lambda scored, completions: seen.append(list(scored)) or [1.0, 0.0, 1.0, 1.0]
    assert greedy_accuracy(model, tokenizer, task, problems) == 0.75
    assert seen == [problems]

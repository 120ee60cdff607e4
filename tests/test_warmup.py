"""The tiny base's supervised warm-up (conspo/warmup.py): its cache, its lr schedule cut short, its early stop
on a training-problem accuracy check."""

import pytest


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

"""ConSPOTrainer with default settings on the rewards TRL's own GRPOTrainer tests use beyond 0/1 ones: a
reward model's scores and a length reward. Both must move the weights (the default positive rule,
group_mean, splits every group whose rewards differ); the threshold rule at 0.5 leaves them unchanged for
the length reward (every completion is 'positive'), which is why it is no longer the default."""

import warnings

import pytest
import torch

pytest.importorskip("trl")

from helpers import PROMPTS, parity_reward  # noqa: E402

from conspo.models import build_char_tokenizer, build_tiny_model  # noqa: E402


def length_reward(completions, **kwargs):  # as in TRL's tests
    return [float(len(completion)) for completion in completions]


def format_bonus(completions, **kwargs):  # moves nothing under the threshold rule when added to a 0/1 reward
    return [0.2 if len(completion) % 3 == 0 else 0.0 for completion in completions]


def reward_model(tokenizer):
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    torch.manual_seed(5)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=64,
    )
    return Qwen2ForSequenceClassification(config)


def train_one_step(tmp_path, reward_funcs, **conspo_options):
    from datasets import Dataset

    from conspo.integrations.trl import ConSPOConfig, ConSPOTrainer

    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), hidden=32, layers=1, ffn=64, heads=2, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = ConSPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        max_steps=1,
        learning_rate=0.1,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        **conspo_options,
    )  # TRL's tests train at lr 0.1 and compare parameters
    processing = [tokenizer if isinstance(f, torch.nn.Module) else None for f in reward_funcs]
    trainer = ConSPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        reward_processing_classes=processing if any(processing) else None,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = [n for n, p in before.items() if not torch.equal(p, after[n].detach())]
    return moved, [str(w.message) for w in caught]


@pytest.mark.parametrize("which", ["reward_model", "length"])
def test_default_conspo_trainer_moves_the_weights_on_graded_rewards(tmp_path, which):
    tokenizer = build_char_tokenizer()
    funcs = [reward_model(tokenizer)] if which == "reward_model" else [length_reward]
    moved, _ = train_one_step(tmp_path, funcs)
    assert moved, "no parameter changed"


def test_threshold_rule_leaves_the_length_reward_without_a_gradient(tmp_path):
    moved, _ = train_one_step(tmp_path, [length_reward], positive_rule="threshold")
    assert not moved


def test_a_reward_that_never_moves_the_update_is_named(tmp_path):
    """0/1 + format bonus under the threshold rule: the bonus never changes which completions are positive."""
    _, messages = train_one_step(
        tmp_path, [parity_reward, format_bonus], positive_rule="threshold", no_valid_group_warn_steps=1
    )
    named = [m for m in messages if "reward format_bonus: its differences within groups changed no update" in m]
    assert len(named) == 1 and "parity_reward: its" not in " ".join(messages)

"""examples/verl: the Hydra overrides compose with verl 0.9.1's own config and pass its validation.

Nothing here launches Ray, vLLM or a GPU; it checks that the launch configuration is one that
verl accepts and that ConSPO's config check calls exact.
"""

import pytest

pytest.importorskip("verl", reason="verl is not installed: run `make test-verl` (builds .venv-verl)")
pytest.importorskip("transfer_queue", reason="verl's v1 trainer needs TransferQueue: run `make test-verl`")

import os
import subprocess
import warnings

import verl_sim as vs
from hydra import compose, initialize_config_dir
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import omega_conf_to_dataclass, validate_config

import conspo.integrations.verl as plugin

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "verl")


def read_overrides(name):
    """What run_math.sh passes: the non-comment, non-blank lines of the .overrides files."""
    with open(os.path.join(EXAMPLE, f"{name}.overrides")) as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def example_config(algo):
    script_args = [
        "data.train_files=/data/train.parquet",
        "data.val_files=/data/math500.parquet",
        "actor_rollout_ref.model.path=Qwen/Qwen2.5-Math-1.5B",
        f"reward.custom_reward_function.path={EXAMPLE}/reward.py",
        "trainer.n_gpus_per_node=8",
    ]
    with initialize_config_dir(config_dir=vs.CONFIG_DIR, version_base=None):
        return compose("ppo_trainer", overrides=read_overrides("common") + read_overrides(algo) + script_args)


@pytest.mark.parametrize("algo", ["conspo", "grpo"])
def test_example_overrides_pass_verls_validation_and_the_conspo_check(algo):
    config = example_config(algo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert not need_critic(config) and not need_reference_policy(config)
    assert plugin.check_config(config) == []  # exact: one optimizer step per batch, nothing added
    assert config.actor_rollout_ref.rollout.name == "vllm" and config.actor_rollout_ref.rollout.n == 8
    if algo == "conspo":
        options = omega_conf_to_dataclass(config.actor_rollout_ref.actor.policy_loss)
        assert isinstance(options, plugin.ConSPOPolicyLossConfig) and options.tau == 0.3
        assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == "conspo.integrations.verl"
        assert config.trainer.v1.trainer_mode == "conspo_sync"


def test_the_two_runs_differ_only_in_the_objective():
    ours, grpo = set(read_overrides("conspo")), set(read_overrides("grpo"))
    keys = {o.lstrip("+").split("=")[0] for o in ours ^ grpo}
    allowed = (
        "algorithm.",
        "actor_rollout_ref.actor.policy_loss",
        "actor_rollout_ref.actor.loss_agg_mode",
        "actor_rollout_ref.actor.clip_ratio",
        "trainer.v1.trainer_mode",
        "trainer.experiment_name",
        "ray_kwargs.",
    )
    assert all(k.startswith(allowed) for k in keys), sorted(keys)


def test_launch_script_parses():
    subprocess.run(["bash", "-n", os.path.join(EXAMPLE, "run_math.sh")], check=True)

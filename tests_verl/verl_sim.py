"""One verl 0.9 training step on CPU, with verl's own code wherever it can run without GPUs.

What is verl's code here (called, not copied):
  driver  ``PPOTrainer._balance_batch`` (Karmarkar-Karp sequence-length balancing over dp ranks,
          ``get_seqlen_balanced_partitions``, ``KVBatchMeta.reorder``), ``_compute_old_log_prob``,
          ``_compute_advantage`` (ours for ConSPO, verl's for GRPO), ``_update_actor``;
  dispatch ``KVBatchMeta.chunk`` (what ``dispatch_nd_compute_dataproto`` splits by dp rank);
  worker  ``TrainingWorker.train_mini_batch`` (``make_iterator``: mini-batches, epochs, shuffle),
          ``TrainingWorker.train_batch``, ``BaseEngine.train_batch``, ``FSDPEngine.forward_backward_batch``
          (``prepare_micro_batches`` / ``rearrange_micro_batches``, one backward per micro-batch),
          ``ppo_loss`` (the policy-loss registry, ``global_batch_info``, ``agg_loss``).
What is simulated: the model (``ToyPolicy``, float64, token log-probs in verl's no-padding
layout), the TransferQueue store (``FakeTransferQueue``, in memory), Ray dispatch (a loop over
ranks), FSDP's gradient all-reduce, which *averages* over ranks (``dp_average``), and the
device (verl's ``get_device_id`` asks CUDA; here it answers "cpu").
"""

from __future__ import annotations

import contextlib
import inspect
import os
import types
from dataclasses import dataclass, field
from functools import partial

import torch
import transfer_queue
import verl
from hydra import compose, initialize_config_dir
from tensordict import NonTensorStack, TensorDict
from transfer_queue import KVBatchMeta
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.engine.base import BaseEngine
from verl.workers.engine.fsdp import transformer_impl
from verl.workers.engine.fsdp.transformer_impl import FSDPEngine
from verl.workers.engine_workers import TrainingWorker
from verl.workers.utils.losses import ppo_loss

DTYPE = torch.float64
VOCAB = 11
PARTITION = "train"
CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class ToyPolicy(torch.nn.Module):
    """A tiny causal LM: log p(x_{t+1} | x_<=t) from an embedding and a running mean of the context."""

    def __init__(self, seed: int = 0, dim: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(VOCAB, dim, generator=g, dtype=DTYPE) * 0.8)
        self.mix = torch.nn.Parameter(torch.randn(dim, dim, generator=g, dtype=DTYPE) * 0.5)
        self.out = torch.nn.Parameter(torch.randn(dim, VOCAB, generator=g, dtype=DTYPE) * 0.8)

    def sequence_logps(self, ids: torch.Tensor) -> torch.Tensor:
        """(L,) where entry t is log p(ids[t+1] | ids[:t+1]); the last entry is 0 (nothing follows)."""
        h = self.embed[ids]
        context = h.cumsum(0) / torch.arange(1, len(ids) + 1, dtype=DTYPE)[:, None]
        logp = torch.log_softmax(torch.tanh(h + context @ self.mix) @ self.out, dim=-1)
        nxt = logp[:-1].gather(1, ids[1:, None]).squeeze(1)
        return torch.cat([nxt, nxt.new_zeros(1)])

    def nested_logps(self, input_ids: torch.Tensor) -> torch.Tensor:
        """verl's model output layout: a jagged tensor (bsz, prompt+response), left-shifted log-probs."""
        return torch.nested.as_nested_tensor([self.sequence_logps(x) for x in input_ids.unbind()], layout=torch.jagged)

    def padded_response_logps(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) response-token log-probs and (B, T) response mask, rows in the given order."""
        width = max(len(r["responses"]) for r in rows)
        logps = torch.zeros(len(rows), width, dtype=DTYPE)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            n_prompt, n = len(r["prompts"]), len(r["responses"])
            lp = self.sequence_logps(r["input_ids"])
            logps = logps.index_put((torch.full((n,), i), torch.arange(n)), lp[n_prompt - 1 : n_prompt - 1 + n])
            mask[i, :n] = r["response_mask"].bool()
        return logps, mask


def grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def make_rows(group_rewards: list[list[float]], seed: int = 0, masked: tuple[int, int] | None = None) -> list[dict]:
    """One row per rollout, groups contiguous (the layout ``conspo.objectives`` wants).

    Keys follow verl v1: ``{uid}_{session}_{output}``. Prompts of 2-5 tokens, responses of 1-7,
    reward on the last response token (``rm_scores``). ``masked=(g, j)`` zeroes the response
    mask of rollout j of group g (an excluded rollout).
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    for gi, rewards in enumerate(group_rewards):
        n_prompt = int(torch.randint(2, 6, (1,), generator=g))
        prompt = torch.randint(1, VOCAB, (n_prompt,), generator=g)
        for j, reward in enumerate(rewards):
            n = int(torch.randint(1, 8, (1,), generator=g))
            response = torch.randint(0, VOCAB, (n,), generator=g)
            mask = torch.ones(n, dtype=torch.int64)
            if masked == (gi, j):
                mask.zero_()
            rm = torch.zeros(n, dtype=DTYPE)
            rm[-1] = reward
            rows.append(
                dict(
                    key=f"u{gi}_{j}_0",
                    uid=f"u{gi}",
                    prompts=prompt.clone(),
                    responses=response,
                    input_ids=torch.cat([prompt, response]),
                    response_mask=mask,
                    loss_mask=mask.clone(),
                    rm_scores=rm,
                    reward=float(reward),
                )
            )
    return rows


class FakeTransferQueue:
    """In-memory stand-in for TransferQueue's ``kv_batch_get`` / ``kv_batch_put`` (one process).

    Per-token fields come back as jagged nested tensors, strings as ``NonTensorStack``, rows in
    the order of ``keys``; fields a row lacks are left out (as the stock trainer expects).
    """

    def __init__(self, rows: list[dict]):
        self.data = {r["key"]: {k: v for k, v in r.items() if k not in ("key", "reward")} for r in rows}
        self.tags = {r["key"]: {"seq_len": len(r["input_ids"])} for r in rows}

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        assert partition_id == PARTITION
        rows = [self.data[k] for k in keys]
        names = list(rows[0]) if select_fields is None else [f for f in select_fields if f in rows[0]]
        out = {}
        for name in names:
            values = [r[name] for r in rows]
            if isinstance(values[0], torch.Tensor):
                out[name] = torch.nested.as_nested_tensor(values, layout=torch.jagged)
            else:
                out[name] = NonTensorStack(*values)
        return TensorDict(out, batch_size=[len(keys)])

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        assert partition_id == PARTITION
        if fields is not None:
            for name, value in fields.items():
                values = value.unbind() if isinstance(value, torch.Tensor) else value.tolist()
                for key, v in zip(keys, values, strict=True):
                    self.data[key][name] = v
        return KVBatchMeta(keys=list(keys), tags=[self.tags[k] for k in keys], partition_id=partition_id)

    def install(self, monkeypatch):
        monkeypatch.setattr(transfer_queue, "kv_batch_get", self.kv_batch_get)
        monkeypatch.setattr(transfer_queue, "kv_batch_put", self.kv_batch_put)

    def batch(self, keys) -> KVBatchMeta:
        return KVBatchMeta(keys=list(keys), tags=[self.tags[k] for k in keys], partition_id=PARTITION)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


CONSPO_OVERRIDES = [
    "algorithm.adv_estimator=conspo",
    "trainer.v1.trainer_mode=conspo_sync",
    "actor_rollout_ref.actor.policy_loss._target_=conspo.integrations.verl.ConSPOPolicyLossConfig",
    "actor_rollout_ref.actor.policy_loss.loss_mode=conspo",
]

GRPO_OVERRIDES = [
    "algorithm.adv_estimator=grpo",
    "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
    "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
]


def verl_config(
    overrides: list[str],
    *,
    prompts: int,
    n: int,
    mini: int,
    micro: int = 2,
    epochs: int = 1,
    shuffle: bool = False,
    dynamic: bool = False,
    max_tokens: int = 32,
):
    """verl's own ``ppo_trainer.yaml`` composed with Hydra overrides, as ``main_ppo`` would."""
    base = [
        f"data.train_batch_size={prompts}",
        f"actor_rollout_ref.rollout.n={n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.actor.ppo_epochs={epochs}",
        f"actor_rollout_ref.actor.shuffle={shuffle}",
        f"actor_rollout_ref.actor.use_dynamic_bsz={dynamic}",
        f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={max_tokens}",
        "actor_rollout_ref.actor.strategy=fsdp",
        "actor_rollout_ref.rollout.calculate_log_probs=False",
        "trainer.total_training_steps=4",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("ppo_trainer", overrides=base + list(overrides))


# ---------------------------------------------------------------------------------------------
# Workers (simulated ranks running verl's worker/engine code)
# ---------------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """What the simulated workers saw: per optimizer step, the gradient of each rank."""

    rank_grads: list[list[list[torch.Tensor]]] = field(default_factory=list)  # [rank][step] -> grads
    micro_batch_uids: list[list[list[str]]] = field(default_factory=list)  # [rank] -> micro-batches -> uids
    loss_metrics: list[dict] = field(default_factory=list)

    def dp_average(self) -> list[list[torch.Tensor]]:
        """FSDP/DDP all-reduce: the *mean* over ranks of each step's gradient."""
        n_ranks, n_steps = len(self.rank_grads), len(self.rank_grads[0])
        return [
            [sum(self.rank_grads[r][k][i] for r in range(n_ranks)) / n_ranks for i in range(len(self.rank_grads[0][k]))]
            for k in range(n_steps)
        ]


class _Engine:
    """Just enough of an FSDP engine for verl's ``train_batch``/``forward_backward_batch`` to run."""

    ulysses_sequence_parallel_size = 1
    scaler = None

    def __init__(self, policy, rank, dp, record: StepRecord):
        self.policy, self.rank, self.dp, self.record = policy, rank, dp, record
        self.forward_backward_batch = types.MethodType(FSDPEngine.forward_backward_batch, self)
        self.train_batch = types.MethodType(BaseEngine.train_batch, self)

    def get_data_parallel_size(self):
        return self.dp

    def get_data_parallel_rank(self):
        return self.rank

    def get_data_parallel_group(self):
        return None  # the default (1-process) group: collectives are identities, ranks are a loop

    def is_mp_src_rank_with_outputs(self):
        return False

    def train_mode(self, **_):
        return contextlib.nullcontext()

    def _gradient_sync_context(self, *, is_last_micro_batch):
        return contextlib.nullcontext()

    def optimizer_zero_grad(self):
        self.policy.zero_grad(set_to_none=True)

    def optimizer_step(self):
        self.record.rank_grads[self.rank].append(grads(self.policy))  # no update: every step sees the same weights
        return 0.0

    def lr_scheduler_step(self):
        return None

    def forward_step(self, micro_batch, loss_function, forward_only):
        self.record.micro_batch_uids[self.rank].append([str(u) for u in micro_batch["uid"]])
        log_probs = self.policy.nested_logps(micro_batch["input_ids"])
        loss, metrics = loss_function(model_output={"log_probs": log_probs}, data=micro_batch, dp_group=None)
        self.record.loss_metrics.append(
            {k: (float(v.values[-1]) if hasattr(v, "aggregation") else v) for k, v in metrics.items()}
        )
        return loss, {"loss": loss.detach().item(), "metrics": metrics}


def _worker(policy, rank, dp, actor_config, engine_cfg, record):
    worker = types.SimpleNamespace(
        engine=_Engine(policy, rank, dp, record),
        loss_fn=partial(ppo_loss, config=actor_config),  # as ActorRolloutRefWorker.init_model sets it
        engine_config=types.SimpleNamespace(forward_only=False, **engine_cfg),
        model_config={"use_remove_padding": True},
        profiler=types.SimpleNamespace(step=lambda: None),
        device_name="cpu",
    )
    worker.train_batch = types.MethodType(inspect.unwrap(TrainingWorker.train_batch), worker)
    worker.train_mini_batch = types.MethodType(inspect.unwrap(TrainingWorker.train_mini_batch), worker)
    return worker


class _WorkerGroup:
    """The actor worker group as the driver sees it: dispatch by dp rank, run, collect."""

    def __init__(self, policy, store: FakeTransferQueue, dp: int, config, record: StepRecord):
        self.policy, self.store, self.dp, self.record = policy, store, dp, record
        self._dispatch_info = {"actor": list(range(dp))}
        self.actor_config = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
        actor = config.actor_rollout_ref.actor
        self.engine_cfg = dict(
            use_dynamic_bsz=actor.use_dynamic_bsz,
            max_token_len_per_gpu=actor.ppo_max_token_len_per_gpu,
            micro_batch_size_per_gpu=actor.ppo_micro_batch_size_per_gpu,
            use_fused_kernels=False,
        )

    def compute_log_prob(self, batch: KVBatchMeta) -> KVBatchMeta:
        """The actor's forward at the current weights; writes full-sequence ``log_probs`` as verl's worker does."""
        data = self.store.kv_batch_get(batch.keys, PARTITION, ["input_ids"])
        with torch.no_grad():
            log_probs = self.policy.nested_logps(data["input_ids"])
        entropy = torch.nested.as_nested_tensor([torch.zeros_like(x) for x in log_probs.unbind()], layout=torch.jagged)
        return self.store.kv_batch_put(
            batch.keys, PARTITION, TensorDict({"log_probs": log_probs, "entropy": entropy}, batch_size=[len(batch)])
        )

    def update_actor(self, batch: KVBatchMeta):
        self.record.rank_grads = [[] for _ in range(self.dp)]
        self.record.micro_batch_uids = [[] for _ in range(self.dp)]
        for rank, chunk in enumerate(batch.chunk(self.dp)):  # dispatch_nd_compute_dataproto: contiguous chunks
            data = self.store.kv_batch_get(chunk.keys, PARTITION)
            for key, value in chunk.extra_info.items():  # what tqbridge adds to the worker's TensorDict
                tu.assign_non_tensor_data(data, key, value)
            _worker(self.policy, rank, self.dp, self.actor_config, self.engine_cfg, self.record).train_mini_batch(data)
        return {"metrics": {"mfu": 0.0}}


def run_step(trainer_cls, config, policy, rows, *, dp: int, global_steps: int = 1, monkeypatch):
    """One verl training step on ``rows``: balance, old log-probs, advantages, actor update.

    Returns (StepRecord, driver metrics, balanced row keys). The policy is not updated: each
    optimizer step's gradient is recorded instead.
    """
    store = FakeTransferQueue(rows)
    store.install(monkeypatch)
    monkeypatch.setattr(transformer_impl, "get_device_id", lambda: "cpu")  # verl asks CUDA for the device
    record = StepRecord()
    trainer = trainer_cls.__new__(trainer_cls)
    trainer.config = config
    trainer.use_critic = False
    trainer.global_steps = global_steps
    trainer.total_training_steps = int(config.trainer.total_training_steps)
    trainer.tokenizer = types.SimpleNamespace(eos_token_id=0)
    trainer.actor_rollout_wg = _WorkerGroup(policy, store, dp, config, record)
    if hasattr(trainer_cls, "conspo_margin"):  # what ConSPOTrainerSync.__init__ sets up besides verl's state
        from conspo.integrations.verl import ADV_ESTIMATOR, optimizer_steps_per_batch

        trainer._conspo_steps_per_batch = optimizer_steps_per_batch(config)
        trainer._conspo_loss_config = (
            omega_conf_to_dataclass(config.actor_rollout_ref.actor.policy_loss)
            if config.algorithm.adv_estimator == ADV_ESTIMATOR
            else None
        )
    metrics: dict = {}
    batch = store.batch([r["key"] for r in rows])
    batch = trainer._balance_batch(batch, metrics=metrics)
    batch = trainer._compute_old_log_prob(batch, metrics=metrics)
    batch = trainer._compute_advantage(batch, metrics=metrics)
    trainer._update_actor(batch, metrics=metrics)
    return record, metrics, list(batch.keys)

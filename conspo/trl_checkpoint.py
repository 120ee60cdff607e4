"""The checkpoint format of ``--engine trl``, beside the native one (``conspo.checkpoint``).

transformers' own ``checkpoint-<step>/`` directories (resumed by TRL's ``resume_from_checkpoint``, which skips
the data already seen), with the parts transformers pickles written as safetensors + JSON instead
(``with_safetensors_checkpoints``), and a ``state.json`` written last that marks the checkpoint complete and
carries the run's config, as a native checkpoint's does (``CheckpointCallback``). Rotation is the native one
(``conspo.checkpoint.rotate_checkpoints``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from transformers import TrainerCallback

from conspo.checkpoint import (
    fsync_file,
    load_optimizer_file,
    load_rng_file,
    rotate_checkpoints,
    save_optimizer_file,
    save_rng_file,
    write_json,
)
from conspo.config import TrainConfig
from conspo.run import StopRequest

#: The files of one process's random states and of the optimizer in a TRL checkpoint (conspo.checkpoint formats).
OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.json"


def rng_file_name(process_index: int) -> str:
    return f"rng_state_{process_index}.safetensors"


def with_safetensors_checkpoints(trainer_class):
    """``trainer_class`` (GRPOTrainer or ConSPOTrainer) writing its checkpoints without pickles.

    transformers' Trainer saves the optimizer, scheduler, RNG states and training arguments with
    ``torch.save``; conspo never writes or loads pickles. These four methods are the places it does
    so: they are replaced by the same contents as safetensors + JSON, and the rest of transformers'
    checkpoint and resume logic (model weights in safetensors, trainer_state.json, skipping the
    batches already trained on, restoring the RNG at the right moment) is used unchanged.
    Under DeepSpeed or FSDP the sharded optimizer state is saved by that engine, in its own format.
    """

    class SafetensorsCheckpoints(trainer_class):
        def _sharded(self) -> bool:
            return bool(getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False))

        def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
            if self._sharded():
                return super()._save_optimizer_and_scheduler(output_dir)
            if self.args.should_save:
                save_optimizer_file(self.optimizer, Path(output_dir) / OPTIMIZER_FILE)
                write_json(Path(output_dir) / SCHEDULER_FILE, self.lr_scheduler.state_dict())

        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            if checkpoint is None or self._sharded():
                return super()._load_optimizer_and_scheduler(checkpoint)
            load_optimizer_file(self.optimizer, Path(checkpoint) / OPTIMIZER_FILE, device=self.args.device)
            with open(Path(checkpoint) / SCHEDULER_FILE) as f:
                self.lr_scheduler.load_state_dict(json.load(f))

        def _save_rng_state(self, output_dir: str) -> None:
            os.makedirs(output_dir, exist_ok=True)  # another process may not have created it yet
            save_rng_file(Path(output_dir) / rng_file_name(self.args.process_index))
            # every process's file is written before the checkpoint is marked complete
            self.accelerator.wait_for_everyone()

        def _load_rng_state(self, checkpoint: str | None) -> None:
            if checkpoint is not None:
                load_rng_file(Path(checkpoint) / rng_file_name(self.args.process_index))

        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            super()._save(output_dir, state_dict)
            # transformers also pickles the TrainingArguments next to the weights; nothing reads it back
            # on resume, and the run's config.yaml and state.json hold the same settings as text
            Path(output_dir or self.args.output_dir, "training_args.bin").unlink(missing_ok=True)

        def create_model_card(self, *args, **kwargs) -> None:
            """TRL writes a hub model card (README.md) into the run directory at each save: not wanted there."""

    SafetensorsCheckpoints.__name__ = SafetensorsCheckpoints.__qualname__ = (
        f"SafetensorsCheckpoints{trainer_class.__name__}"
    )
    return SafetensorsCheckpoints


class CheckpointCallback(TrainerCallback):
    """Asks TRL to save every ``save_every`` steps, at the end, at ``--stop-after`` and on Ctrl-C;
    marks each saved checkpoint complete with a ``state.json`` written last (after fsyncing its files)
    and keeps the newest ``keep_checkpoints``. A checkpoint without ``state.json`` (killed while being
    written) is never resumed from and is deleted by the next save."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, main: bool, start_step: int, stop: StopRequest, state: dict):
        self.cfg, self.run_dir, self.main, self.start_step, self.stop = cfg, run_dir, main, start_step, stop
        self.state = state  # run_id, heldout_accuracy_before, and the wall time before this invocation
        self.started = time.time()
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        step, cfg = state.global_step, self.cfg
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
            control.should_save = True
        if step < cfg.steps and (self.stop.requested or (cfg.stop_after and step - self.start_step >= cfg.stop_after)):
            control.should_save = control.should_training_stop = True
            self.stopped_at = step
        return control

    def on_save(self, args, state, control, **kwargs):
        if not self.main:
            return
        checkpoint = self.run_dir / f"checkpoint-{state.global_step}"
        for path in checkpoint.rglob("*"):  # the marker must not outlive the files it vouches for
            if path.is_file():
                fsync_file(path)
        wall = self.state["wall_seconds"] + time.time() - self.started
        write_json(
            checkpoint / "state.json",
            {
                "step": state.global_step,
                "engine": "trl",
                "config": asdict(self.cfg),
                **self.state,
                "wall_seconds": wall,
                "skipped_steps": 0,
            },
        )
        rotate_checkpoints(self.run_dir, self.cfg.keep_checkpoints)  # also drops what a killed save left

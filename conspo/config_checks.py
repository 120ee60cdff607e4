"""The checks of a ``TrainConfig`` that concern where it runs: options the chosen engine would ignore, --engine
trl's limits and vLLM's modes and needs, and the device. Run by ``TrainConfig.validate()`` before any work, so a
run never starts on an engine or machine that would quietly do something else."""

from __future__ import annotations

from dataclasses import fields

from conspo.errors import ConfigError

#: The engines ``--engine`` chooses between; a field honoured by both needs no declaration.
ENGINES = ("native", "trl")


def field_engines(f) -> tuple[str, ...]:
    """The engines that honour TrainConfig field ``f``: declared with ``native_only`` / ``trl_only``, else both."""
    return f.metadata.get("engines", ENGINES)


def check_device(cfg) -> None:
    """``device``: a device torch knows, and CUDA only where torch sees a GPU."""
    import torch

    if cfg.device == "auto":
        return
    try:
        device = torch.device(cfg.device)
    except RuntimeError as e:
        raise ConfigError(f"invalid config: device={cfg.device!r}: {e}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = (
            "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, no GPU visible"
        )
        raise ConfigError(
            f"invalid config: device={cfg.device!r}: CUDA is not available (torch {torch.__version__}, "
            f"{build}); use --device cpu or auto"
        )


def check_engine(cfg) -> None:
    """Options the chosen engine would ignore (declared at each field: ``native_only`` / ``trl_only``), and what
    --engine trl cannot do."""
    defaults = type(cfg)()
    for f in fields(cfg):
        name, engines = f.name, field_engines(f)
        if cfg.engine not in engines and getattr(cfg, name) != getattr(defaults, name):
            raise ConfigError(
                f"invalid config: {name}={getattr(cfg, name)!r} is not supported by --engine "
                f"{cfg.engine} (only by {', '.join(engines)}): {f.metadata['instead']}"
            )
    if cfg.engine == "trl":
        if cfg.dtype == "float16":
            raise ConfigError(
                "invalid config: dtype='float16' is not supported by --engine trl (TRL trains in "
                "float32 or bfloat16): use --dtype bfloat16 or float32"
            )
        for name in ("save_every", "stop_after"):
            if cfg.updates_per_batch > 1 and getattr(cfg, name) % cfg.updates_per_batch:
                # TRL reuses a generation batch for updates_per_batch steps and regenerates after a resume
                raise ConfigError(
                    f"invalid config: {name}={getattr(cfg, name)} with updates_per_batch="
                    f"{cfg.updates_per_batch} on --engine trl: must be a multiple of updates_per_batch, "
                    "so that checkpoints fall between generation batches and a resume stays exact"
                )
        from conspo.objectives import get_objective

        if get_objective(cfg.objective).score_objective and cfg.beta:
            raise ConfigError(
                f"invalid config: beta={cfg.beta!r}: {cfg.objective} on TRL (ConSPOTrainer) has no KL "
                "term; use --beta 0 or --engine native"
            )
        check_vllm(cfg)


def check_vllm(cfg) -> None:
    """--engine trl's vLLM options: values, options the chosen mode would ignore, and vLLM's needs (checked here,
    before the model is loaded, rather than failing inside GRPOTrainer's constructor)."""

    def bad(name, why):
        raise ConfigError(f"invalid config: {name}={getattr(cfg, name)!r}: {why}")

    if not 0 < cfg.vllm_gpu_memory_utilization <= 1:
        bad("vllm_gpu_memory_utilization", "must be in (0, 1]")
    if cfg.vllm_tensor_parallel_size < 1:
        bad("vllm_tensor_parallel_size", "must be >= 1")
    if not 0 < cfg.vllm_server_port < 65536:
        bad("vllm_server_port", "must be a TCP port (1-65535)")
    defaults = type(cfg)()
    # TRL silently ignores each of these outside its mode; refused so a run never differs from what was asked
    for name, mode, elsewhere in (
        ("vllm_gpu_memory_utilization", "colocate", "the server takes `trl vllm-serve --gpu_memory_utilization`"),
        ("vllm_tensor_parallel_size", "colocate", "the server takes `trl vllm-serve --tensor_parallel_size`"),
        ("vllm_server_host", "server", "colocate mode runs vLLM inside each training process"),
        ("vllm_server_port", "server", "colocate mode runs vLLM inside each training process"),
    ):
        if cfg.vllm_mode != mode and getattr(cfg, name) != getattr(defaults, name):
            bad(
                name,
                f"is only used with --vllm-mode {mode}, not {cfg.vllm_mode}: "
                + (f"add --vllm-mode {mode}" if cfg.vllm_mode == "none" else elsewhere),
            )
    if cfg.vllm_mode == "none":
        return
    import importlib.util

    import torch

    if cfg.device == "cpu" or not torch.cuda.is_available():
        why = "device='cpu'" if cfg.device == "cpu" else f"no CUDA GPU is visible to torch {torch.__version__}"
        bad(
            "vllm_mode",
            f"vLLM generates on CUDA GPUs and {why}: run on a GPU machine with --device auto or "
            "cuda, or use --vllm-mode none",
        )
    if importlib.util.find_spec("vllm") is None:
        bad(
            "vllm_mode",
            "needs the vllm package, which is not installed: pip install 'vllm>=0.22,<=0.31' "
            "(the versions TRL 1.16 supports), or use --vllm-mode none",
        )

"""Math data: benchmark / JSONL / Hugging Face loaders and prompt templates.

Every loader returns ``Example`` rows (id, problem, answer, source, extra) and validates the
whole input up front, so that a malformed row fails at load time with its file, line and
field, not hours into a run. With ``on_error="skip"`` bad rows are skipped and counted
(``result.report``).

The shared benchmark files are found through ``data_dir=`` (``--data-dir``), else
``$CONSPO_DATA_DIR``, else ``../shared/data`` beside a development checkout (``default_data_dir``);
otherwise loading one by name fails naming both settings. Their ``answer`` fields are final answers
(gsm8k: the number after ``####`` with thousands commas removed).

Prompt templates (``PROMPT_TEMPLATES``): "qwen_math_boxed" (default; the Qwen2.5-Math CoT
system prompt, answers in ``\\boxed{}``), "r1" (DeepSeek-R1-Zero style: reasoning in
``<think>``, answer in ``<answer>``) and "plain" (``problem + "\\nAnswer:"``, for base models).
``conspo.rewards.extract_answer`` understands the answer format of all three.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_SIZES",
    "DEFAULT_TEMPLATE",
    "Example",
    "LoadReport",
    "LoadedExamples",
    "MAX_ROW_BYTES",
    "PROMPT_TEMPLATES",
    "PromptTemplate",
    "build_prompt",
    "default_data_dir",
    "development_data_dir",
    "gsm8k_final_answer",
    "load_benchmark",
    "load_hf_dataset",
    "load_jsonl",
]

#: Rows longer than this (in bytes, before decoding) are rejected: no math problem is this long,
#: and a runaway line usually means a broken file (a missing newline, binary data).
MAX_ROW_BYTES = 1 << 20  # 1 MiB

#: Benchmark name -> file under the data directory (the layout of the shared data folder; docs/design.md section 6).
BENCHMARKS: dict[str, str] = {
    "math500": "math500/test.jsonl",
    "aime24": "aime24/test.jsonl",
    "aime25": "aime25/test.jsonl",
    "amc23": "amc23/test.jsonl",
    "minerva_math": "minerva_math/test.jsonl",
    "olympiadbench": "olympiadbench/test.jsonl",
    "gsm8k": "gsm8k/test.jsonl",
    "gsm8k_train": "gsm8k/train.jsonl",
    "math_train": "math_train/train.jsonl",
}

#: Row counts from the data README's table (checked by tests/test_math_data.py).
BENCHMARK_SIZES: dict[str, int] = {
    "math500": 500,
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "minerva_math": 272,
    "olympiadbench": 675,
    "gsm8k": 1319,
    "gsm8k_train": 7473,
    "math_train": 7470,
}

_DATA_DIR_ENV = "CONSPO_DATA_DIR"


@dataclass(frozen=True)
class Example:
    """One math problem with its final answer.

    id: unique within its data set. problem: the statement given to the model (LaTeX as in
    the source). answer: the gold final answer as a string. source: the data set's name.
    extra: every other field of the source row (solution, subject, level, ...).
    """

    id: str
    problem: str
    answer: str
    source: str
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict:
        """The row as a flat dict (what custom rewards receive as ``example``)."""
        return {**self.extra, "id": self.id, "problem": self.problem, "answer": self.answer, "source": self.source}


@dataclass
class LoadReport:
    """What a loader read: rows seen, loaded, skipped, and why (first 20 reasons kept)."""

    origin: str
    n_rows: int = 0
    n_loaded: int = 0
    n_skipped: int = 0
    skipped: list[str] = field(default_factory=list)

    def add_skip(self, message: str) -> None:
        self.n_skipped += 1
        if len(self.skipped) < 20:
            self.skipped.append(message)


class LoadedExamples(list):
    """A ``list[Example]`` that also carries the ``LoadReport`` of the load that produced it."""

    def __init__(self, examples: Iterable[Example], report: LoadReport):
        super().__init__(examples)
        self.report = report


class _RowError(ValueError):
    """A row problem; ``field`` is the offending field (None for row-level problems)."""

    def __init__(self, message: str, field_name: str | None = None):
        super().__init__(message)
        self.field_name = field_name


def _as_text(value: Any, field_name: str, *, numbers_ok: bool) -> str:
    """A non-empty string from a row value, or _RowError naming the field."""
    if isinstance(value, str):
        if not value.strip():
            raise _RowError(f"field {field_name!r} is empty", field_name)
        return value
    if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float):
            if not math.isfinite(value):
                raise _RowError(f"field {field_name!r} is {value!r}", field_name)
            return str(int(value)) if value.is_integer() else repr(value)
        return str(value)
    if value is None:
        raise _RowError(f"field {field_name!r} is null", field_name)
    allowed = "a string or a number" if numbers_ok else "a string"
    raise _RowError(
        f"field {field_name!r} must be {allowed}, got {type(value).__name__} {str(value)[:60]!r}", field_name
    )


def _row_to_example(
    row: Any,
    *,
    problem_field: str,
    answer_field: str,
    id_field: str | None,
    default_id: str,
    default_source: str,
    answer_fn: Callable[[Mapping[str, Any]], Any] | None = None,
) -> Example:
    if not isinstance(row, Mapping):
        raise _RowError(f"expected a JSON object, got {type(row).__name__}")
    present = ", ".join(map(str, list(row)[:12]))
    for name in (problem_field,) + (() if answer_fn else (answer_field,)):
        if name not in row:
            raise _RowError(f"field {name!r} is missing (fields present: {present})", name)
    problem = _as_text(row[problem_field], problem_field, numbers_ok=False)
    if answer_fn is not None:
        try:
            raw_answer = answer_fn(row)
        except Exception as exc:  # noqa: BLE001 - reported with the row's location
            raise _RowError(f"answer_fn failed: {type(exc).__name__}: {exc}", answer_field) from exc
    else:
        raw_answer = row[answer_field]
    answer = _as_text(raw_answer, answer_field, numbers_ok=True).strip()
    if id_field is None:
        ex_id = default_id
    else:
        if id_field not in row:
            raise _RowError(
                f"field {id_field!r} is missing (fields present: {present}); pass id_field=None to number rows instead",
                id_field,
            )
        ex_id = _as_text(row[id_field], id_field, numbers_ok=True)
    source = row.get("source") if isinstance(row.get("source"), str) and row.get("source") else default_source
    used = {problem_field, answer_field, "source"} | ({id_field} if id_field else set())
    extra = {k: v for k, v in row.items() if k not in used}
    return Example(id=ex_id, problem=problem, answer=answer, source=source, extra=extra)


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            yield line_no, raw


def load_jsonl(
    path: str | os.PathLike,
    *,
    problem_field: str = "problem",
    answer_field: str = "answer",
    id_field: str | None = "id",
    on_error: str = "raise",
    source: str | None = None,
    max_row_bytes: int = MAX_ROW_BYTES,
) -> LoadedExamples:
    """Load and validate a JSONL file of math problems (one JSON object per line).

    Each row must have a non-empty string ``problem_field``, a non-empty ``answer_field``
    (a string, or a number, which is converted: ``27.0`` -> ``"27"``) and, unless
    ``id_field=None`` (rows are then numbered ``"<file stem>-<line>"``), a unique id. Blank
    lines are ignored. Other fields go to ``Example.extra``; ``source`` comes from the row's
    ``source`` field, else the ``source`` argument, else the file name.

    on_error: "raise" (default): the first bad row raises ValueError naming the file, the line
        and the field (invalid JSON, not UTF-8, a row over ``max_row_bytes``, a missing/empty/
        wrongly typed field, a duplicate id). "skip": bad rows are skipped and counted in
        ``result.report``. Either way, a file with no usable row raises.
    """
    _check_on_error(on_error)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    report = LoadReport(origin=str(path))
    default_source = source or path.stem
    examples: list[Example] = []
    first_line_of_id: dict[str, int] = {}
    for line_no, raw in _iter_lines(path):
        if not raw.strip():
            continue
        report.n_rows += 1
        where = f"{path} line {line_no}"
        try:
            if len(raw) > max_row_bytes:
                raise _RowError(f"row is {len(raw):,} bytes, over the {max_row_bytes:,}-byte limit")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _RowError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _RowError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
            ex = _row_to_example(
                row,
                problem_field=problem_field,
                answer_field=answer_field,
                id_field=id_field,
                default_id=f"{path.stem}-{line_no}",
                default_source=default_source,
            )
            if ex.id in first_line_of_id:
                raise _RowError(
                    f"field {id_field!r}: duplicate id {ex.id!r} (first seen on line {first_line_of_id[ex.id]})",
                    id_field,
                )
        except _RowError as exc:
            message = f"{where}: {exc}"
            if on_error == "raise":
                raise ValueError(message) from None
            report.add_skip(message)
            continue
        first_line_of_id[ex.id] = line_no
        examples.append(ex)
    report.n_loaded = len(examples)
    if not examples:
        detail = f"; {report.n_skipped} bad rows, e.g. {report.skipped[0]}" if report.skipped else ""
        raise ValueError(f"{path}: no usable rows ({report.n_rows} non-blank lines){detail}")
    return LoadedExamples(examples, report)


def development_data_dir() -> Path | None:
    """``../shared/data`` beside a development checkout of this repository, if that is what is running.

    Only a source checkout (``pyproject.toml`` next to the package) has this layout; an installed
    copy lives in site-packages, where a path derived from the source file means nothing.
    """
    root = Path(__file__).resolve().parents[2]
    candidate = root.parent / "shared" / "data"
    return candidate if (root / "pyproject.toml").is_file() and candidate.is_dir() else None


def default_data_dir() -> Path | None:
    """Where the shared benchmark sets are when no ``--data-dir`` is given.

    ``$CONSPO_DATA_DIR`` if set; else ``development_data_dir()`` (a development checkout's
    ``../shared/data``); else None, and loading a benchmark by name then fails naming both ways to set it.
    """
    env = os.environ.get(_DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return development_data_dir()


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, *, on_error: str = "raise") -> LoadedExamples:
    """Load a shared benchmark by name (see ``BENCHMARKS``), validated like ``load_jsonl``.

    data_dir: the folder that holds ``math500/test.jsonl`` etc. Default: ``default_data_dir()``.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid names are: {', '.join(BENCHMARKS)}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    how_to_set = (
        f"Pass --data-dir PATH (or set {_DATA_DIR_ENV}=PATH) pointing at the folder that holds {BENCHMARKS[name]}"
    )
    if root is None:
        raise FileNotFoundError(f"benchmark {name!r}: no data directory given. {how_to_set}.")
    path = root / BENCHMARKS[name]
    if not path.is_file():
        how = (
            "the data_dir argument"
            if data_dir is not None
            else (f"${_DATA_DIR_ENV}" if os.environ.get(_DATA_DIR_ENV) else "the development checkout's ../shared/data")
        )
        raise FileNotFoundError(
            f"benchmark {name!r} not found: {path} does not exist (data directory {root}, from {how}). "
            f"{how_to_set}; one JSONL per set with id, problem and answer fields (see docs/design.md section 6)."
        )
    return load_jsonl(path, on_error=on_error, source=name)


def gsm8k_final_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after ``####``, thousands commas removed."""
    if "####" not in solution:
        raise ValueError("GSM8K solution has no '####' final-answer line")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def load_hf_dataset(
    name: str,
    split: str = "test",
    *,
    config: str | None = None,
    problem_field: str = "problem",
    answer_field: str = "answer",
    id_field: str | None = None,
    answer_fn: Callable[[Mapping[str, Any]], Any] | None = None,
    data_files: Any = None,
    on_error: str = "raise",
    source: str | None = None,
    **load_kwargs: Any,
) -> LoadedExamples:
    """Load math problems with the ``datasets`` package (imported here, only when used).

    name: a Hub dataset id ("HuggingFaceH4/MATH-500"), a builder with ``data_files``
        (``"json"``, ``data_files="x.jsonl"``) or a local data file (``"data/x.jsonl"``,
        ``.json/.jsonl/.csv/.parquet``), which is loaded through the matching builder offline.
    id_field: the id column, or None to number rows ``"<name>-<split>-<index>"``.
    answer_fn: computes the answer from the row when the column is not a bare final answer,
        e.g. ``answer_fn=lambda r: gsm8k_final_answer(r["answer"])`` for ``openai/gsm8k``.
    load_kwargs: passed to ``datasets.load_dataset`` (``cache_dir``, ``revision``, ...).
    Rows are validated like ``load_jsonl`` (errors name the dataset, split, row and field).
    """
    _check_on_error(on_error)
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency of the training extras
        raise ImportError("load_hf_dataset needs the 'datasets' package: pip install datasets") from exc
    builder, files = name, data_files
    suffix = Path(name).suffix.lower()
    if files is None and suffix in _LOCAL_BUILDERS and Path(name).expanduser().is_file():
        builder, files = _LOCAL_BUILDERS[suffix], str(Path(name).expanduser())
    ds = datasets.load_dataset(builder, config, split=split, data_files=files, **load_kwargs)
    label = Path(name).stem if builder != name else name
    origin = f"{name}[{split}]"
    report = LoadReport(origin=origin)
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(ds):
        report.n_rows += 1
        try:
            ex = _row_to_example(
                row,
                problem_field=problem_field,
                answer_field=answer_field,
                id_field=id_field,
                default_id=f"{label}-{split}-{i}",
                default_source=source or label,
                answer_fn=answer_fn,
            )
            if ex.id in seen:
                raise _RowError(
                    f"field {id_field!r}: duplicate id {ex.id!r} (first seen in row {seen[ex.id]})", id_field
                )
        except _RowError as exc:
            message = f"{origin} row {i}: {exc}"
            if on_error == "raise":
                raise ValueError(message) from None
            report.add_skip(message)
            continue
        seen[ex.id] = i
        examples.append(ex)
    report.n_loaded = len(examples)
    if not examples:
        raise ValueError(f"{origin}: no usable rows ({report.n_rows} rows, {report.n_skipped} skipped)")
    return LoadedExamples(examples, report)


# ---------------------------------------------------------------------------------------
# Prompt templates
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTemplate:
    """How a problem becomes a prompt.

    system: system message for chat models (None: no system message).
    user: the user message, a format string with ``{problem}``.
    plain: the whole prompt for tokenizers without a chat template, with ``{problem}``.
    stop: strings that end a completion when the plain form is used (a chat-rendered prompt ends at the
        chat template's turn marker instead).
    """

    name: str
    system: str | None
    user: str
    plain: str
    description: str = ""
    stop: tuple[str, ...] = ()


_QWEN_BOXED_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
_R1_SYSTEM = (
    "A conversation between User and Assistant. The User asks a question and the Assistant "
    "solves it. The Assistant first thinks the problem through, writing its reasoning inside "
    "<think> </think> tags, and then states the final answer inside <answer> </answer> tags, "
    "i.e. <think> reasoning here </think> <answer> answer here </answer>."
)

PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    "qwen_math_boxed": PromptTemplate(
        name="qwen_math_boxed",
        system=_QWEN_BOXED_SYSTEM,
        user="{problem}",
        plain="Question: {problem}\n" + _QWEN_BOXED_SYSTEM + "\nAnswer: Let's think step by step.",
        description="Qwen2.5-Math chain-of-thought prompt; the answer goes in \\boxed{}.",
    ),
    "r1": PromptTemplate(
        name="r1",
        system=_R1_SYSTEM,
        user="{problem}",
        plain=_R1_SYSTEM + "\nUser: {problem}\nAssistant: <think>",
        description="DeepSeek-R1-Zero style: reasoning in <think></think>, answer in <answer></answer>.",
    ),
    "plain": PromptTemplate(
        name="plain",
        system=None,
        user="{problem}\nAnswer:",
        plain="{problem}\nAnswer:",
        description="The problem followed by 'Answer:', for base models and short answers; generation "
        "stops at the end of the line (a base model continues with the next question).",
        stop=("\n",),
    ),
    "raw": PromptTemplate(
        name="raw",
        system=None,
        user="{problem}",
        plain="{problem}",
        description="The problem text exactly as stored (for data sets whose problems are already prompts).",
    ),
}
DEFAULT_TEMPLATE = "qwen_math_boxed"


def _problem_text(example: Example | Mapping[str, Any] | str) -> str:
    if isinstance(example, Example):
        return example.problem
    if isinstance(example, str):
        return example
    if isinstance(example, Mapping) and isinstance(example.get("problem"), str):
        return example["problem"]
    raise TypeError(
        f"build_prompt needs an Example, a dict with a 'problem' string, or a str; got {type(example).__name__}"
    )


def uses_chat_template(tokenizer, chat: bool | None = None) -> bool:
    """Whether ``build_prompt`` renders with the tokenizer's chat template (else the template's plain form)."""
    has_chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if chat is True and not has_chat:
        raise ValueError("chat=True but the tokenizer has no chat template")
    return has_chat and chat is not False


def stop_strings(template: str | PromptTemplate, tokenizer) -> tuple[str, ...]:
    """The stop strings of ``template`` as ``build_prompt`` renders it for ``tokenizer``: its ``stop`` for the
    plain form; none for a chat-rendered prompt (it ends at the chat template's turn marker)."""
    template = PROMPT_TEMPLATES[template] if isinstance(template, str) else template
    return () if uses_chat_template(tokenizer) else template.stop


def build_prompt(
    example: Example | Mapping[str, Any] | str,
    template: str | PromptTemplate = DEFAULT_TEMPLATE,
    tokenizer: Any = None,
    *,
    chat: bool | None = None,
) -> str:
    """The prompt text for one problem.

    When ``tokenizer`` has a chat template (and ``chat`` is not False) the system/user messages
    are rendered with ``tokenizer.apply_chat_template(messages, tokenize=False,
    add_generation_prompt=True)``; a chat template that rejects the system role gets the system
    text prepended to the user message instead. Otherwise the template's plain-text form is used.
    """
    if isinstance(template, str):
        if template not in PROMPT_TEMPLATES:
            raise ValueError(
                f"unknown prompt template {template!r}; valid templates are: {', '.join(PROMPT_TEMPLATES)}"
            )
        template = PROMPT_TEMPLATES[template]
    problem = _problem_text(example)
    if not uses_chat_template(tokenizer, chat):
        return template.plain.replace("{problem}", problem)
    user = template.user.replace("{problem}", problem)
    messages = ([{"role": "system", "content": template.system}] if template.system else []) + [
        {"role": "user", "content": user}
    ]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - e.g. "System role not supported": merge it into the user turn
        if not template.system:
            raise
        merged = [{"role": "user", "content": template.system + "\n\n" + user}]
        return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)

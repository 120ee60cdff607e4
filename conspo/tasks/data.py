"""Your data: a problem set named by a short name or a path, read as TRL reads data sets.

``resolve_data_source`` is the one resolver of "a short name or a path" (training, held-out
evaluation and ``conspo eval`` use it): a shared set's short name (math500, math_train, ...), a
JSONL file, a local Hugging Face ``datasets`` folder (``save_to_disk``) or a Hub id.
``load_rows`` reads any of them as a list of dicts.

``DataTask`` (``--task data``, inferred from ``--train-data`` with ``--reward``) trains on such
rows with the user's rewards: the prompt is TRL's ``prompt`` column (a string, or a list of chat
messages rendered with the tokenizer's chat template and a generation prompt) or ``problem``
(``--prompt-field`` names another); every other column reaches the rewards as a keyword.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from conspo.tasks import Problem

#: Rows held out of the training file when no --eval-data is given (the last ones, never trained on).
HELDOUT_FRACTION, HELDOUT_MAX = 0.1, 200


def resolve_data_source(source: str, data_dir: str | None = None) -> tuple[str, str]:
    """("jsonl", path) | ("disk", folder) | ("hub", id) for a short name, a JSONL file, a datasets folder
    or a Hub id."""
    from conspo.tasks.math_data import BENCHMARKS, default_data_dir

    if source in BENCHMARKS:
        root = Path(data_dir).expanduser() if data_dir else default_data_dir()
        if root is None:
            raise FileNotFoundError(
                f"{source!r}: a shared set's short name, but no data folder: pass --data-dir "
                "(or set CONSPO_DATA_DIR) to the folder that holds it"
            )
        return "jsonl", str(root / BENCHMARKS[source])
    path = Path(source).expanduser()
    if path.is_dir():
        return "disk", str(path)
    if path.suffix.lower() in (".jsonl", ".json") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"{source}: no such JSONL file")
        return "jsonl", str(path)
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return "hub", source
    raise FileNotFoundError(
        f"{source!r}: not a shared set's short name ({', '.join(BENCHMARKS)}), a JSONL file, a "
        "datasets folder or a Hub id (owner/name)"
    )


def load_rows(source: str, data_dir: str | None = None, *, split: str = "train") -> list[dict]:
    """Every row of a problem set (``resolve_data_source``) as a dict; errors name the file and line."""
    kind, where = resolve_data_source(source, data_dir)
    if kind == "jsonl":
        rows = []
        with open(where, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where} line {line_no}: not valid JSON: {e}") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{where} line {line_no}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    import datasets

    if kind == "disk":
        loaded = datasets.load_from_disk(where)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(
                    f"{where}: a DatasetDict without a {split!r} split (splits: {', '.join(loaded)}); "
                    f"pass the folder of one split"
                )
            loaded = loaded[split]
        return [dict(row) for row in loaded]
    try:
        return [dict(row) for row in datasets.load_dataset(where, split=split)]
    except Exception as e:  # noqa: BLE001 - offline, unknown id, gated: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{where}: could not load it from the Hugging Face Hub ({first}); use a JSONL file or a "
            "datasets folder (save_to_disk) instead"
        ) from None


def _prompt_field(rows: Sequence[dict], prompt_field: str, origin: str) -> str:
    if prompt_field:
        field = prompt_field
    else:
        field = "prompt" if rows and "prompt" in rows[0] else "problem"
    for i, row in enumerate(rows):
        value = row.get(field)
        if not (isinstance(value, str) and value) and not _is_messages(value):
            have = ", ".join(sorted(row)) or "no fields"
            raise ValueError(
                f"{origin} row {i}: field {field!r} must be a non-empty string or a list of chat "
                f"messages (the row has {have}); --prompt-field names the prompt column"
            )
    return field


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


class DataTask:
    """Train on the user's rows with the user's rewards (``--train-data`` + ``--reward``)."""

    name = "data"

    def __init__(
        self,
        train: str,
        heldout: str = "",
        *,
        reward_funcs: Sequence,
        reward_weights=None,
        prompt_field: str = "",
        data_dir: str | None = None,
        max_new_tokens: int = 256,
        reward_errors: str = "raise",
    ):
        from conspo.rewards import RewardSet

        train_rows = load_rows(train, data_dir)
        if not train_rows:
            raise ValueError(f"{train}: no rows")
        if heldout:
            heldout_rows = load_rows(heldout, data_dir, split="test")
        else:  # the last rows, never trained on
            n = max(1, min(HELDOUT_MAX, int(len(train_rows) * HELDOUT_FRACTION)))
            if len(train_rows) < 2:
                raise ValueError(f"{train}: one row; give at least two, or --eval-data")
            train_rows, heldout_rows = train_rows[:-n], train_rows[-n:]
        self.prompt_field = _prompt_field(train_rows, prompt_field, train)
        _prompt_field(heldout_rows, self.prompt_field, heldout or train)
        self._rows = {"train": train_rows, "heldout": heldout_rows}
        self.max_new_tokens = max_new_tokens
        self.rewards = RewardSet(reward_funcs, reward_weights, errors=reward_errors)
        self.reward_funcs, self.reward_weights = self.rewards.funcs, self.rewards.weights
        self._tokenizer = None
        self._cache: dict[str, list[Problem]] = {}

    def set_tokenizer(self, tokenizer) -> None:
        """Chat prompts are rendered with the tokenizer's chat template: call before asking for problems."""
        self._tokenizer = tokenizer
        self._cache.clear()

    def render(self, prompt) -> str:
        """The text the model is given: a string prompt as it is (as TRL), chat messages through the chat template."""
        if isinstance(prompt, str):
            if self.prompt_field == "prompt":
                return prompt
            prompt = [{"role": "user", "content": prompt}]  # a bare problem: a user turn, when there is a template
            if not getattr(self._tokenizer, "chat_template", None):
                return prompt[0]["content"]
        if self._tokenizer is None or not getattr(self._tokenizer, "chat_template", None):
            raise ValueError("conversational prompts need a tokenizer with a chat template")
        return self._tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def _problems(self, key: str) -> list[Problem]:
        if key not in self._cache:
            problems = []
            for i, row in enumerate(self._rows[key]):
                raw = row[self.prompt_field]
                columns = {k: v for k, v in row.items() if k != "prompt"}  # as TRL: every column but the prompt
                text = self.render(raw)
                # the prompt the rewards get is the one TRL would pass: the row's own prompt column, else the text
                problems.append(
                    Problem(
                        id=str(row.get("id", f"{key}-{i}")),
                        prompt=text,
                        answer=str(row.get("answer", "")),
                        meta={"reward_prompt": raw if self.prompt_field == "prompt" else text, "columns": columns},
                    )
                )
            self._cache[key] = problems
        return self._cache[key]

    def train_problems(self) -> list[Problem]:
        return self._problems("train")

    def heldout_problems(self) -> list[Problem]:
        return self._problems("heldout")

    def score(self, problems: list[Problem], completions: list[str]) -> list[float]:
        """The weighted total of the rewards per completion (0 where no reward scored it)."""
        import torch

        from conspo.reward_shaping import combine_rewards
        from conspo.tasks import reward_inputs

        per_reward = self.rewards.score(*reward_inputs(problems, completions)).tensor()
        return torch.nan_to_num(combine_rewards(per_reward, torch.tensor(self.reward_weights))).tolist()

    def trl_rows(self) -> list[dict]:
        """The training rows as TRL's GRPOTrainer reads them (the prompt column named ``prompt``)."""
        rows = []
        for row in self._rows["train"]:
            row = dict(row)
            if self.prompt_field != "prompt":
                raw = row[self.prompt_field]
                row["prompt"] = raw if _is_messages(raw) else self.render(raw)
            rows.append(row)
        return rows


def load_problem_set(source: str, data_dir: str | None = None, *, split: str = "test"):
    """Math problems (``conspo.tasks.math_data.Example``: id, problem, answer) from a short name or a path, the
    same resolver as ``load_rows``; used by ``--task math`` and ``conspo eval``. JSONL rows are validated by
    ``load_jsonl`` (ids optional: rows without an ``id`` field are numbered)."""
    from conspo.tasks.math_data import BENCHMARKS, Example, LoadedExamples, LoadReport, load_benchmark, load_jsonl

    if source in BENCHMARKS:
        return load_benchmark(source, data_dir)
    kind, where = resolve_data_source(source, data_dir)
    if kind == "jsonl":
        with open(where, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "{}")
        try:
            has_ids = "id" in json.loads(first)
        except (json.JSONDecodeError, TypeError):
            has_ids = False
        return load_jsonl(where, id_field="id" if has_ids else None)
    rows = load_rows(source, data_dir, split=split)
    examples = []
    for i, row in enumerate(rows):
        if not (isinstance(row.get("problem"), str) and row.get("answer") not in (None, "")):
            raise ValueError(
                f"{source} row {i}: needs a `problem` string and an `answer` (has {', '.join(sorted(row))})"
            )
        examples.append(
            Example(
                id=str(row.get("id", f"{Path(where).name}-{i}")),
                problem=row["problem"],
                answer=str(row["answer"]),
                source=source,
                extra={k: v for k, v in row.items() if k not in ("id", "problem", "answer")},
            )
        )
    report = LoadReport(origin=source, n_rows=len(rows), n_loaded=len(examples))
    return LoadedExamples(examples, report)

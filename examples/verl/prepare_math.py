"""Write the MATH example's data as verl parquet files: MATH train for training, MATH-500 to validate.

    python examples/verl/prepare_math.py --out ~/data/conspo_math [--data-dir ../shared/data]

Each row: ``prompt`` (chat messages: conspo's "qwen_math_boxed" system prompt and the problem;
verl applies the model's chat template), ``data_source``, ``ability``, ``reward_model``
({"style": "rule", "ground_truth": answer}) and ``extra_info`` (id, split, index), verl's layout.
The sets are read from the shared JSONL folder (``conspo.tasks.math_data``), not downloaded.
"""

import argparse
import os

import pandas as pd

from conspo.tasks.math_data import PROMPT_TEMPLATES, load_benchmark

SETS = {"train": "math_train", "math500": "math500"}


def rows(name: str, split: str, data_dir: str | None) -> list[dict]:
    template = PROMPT_TEMPLATES["qwen_math_boxed"]
    out = []
    for i, example in enumerate(load_benchmark(name, data_dir)):
        out.append(
            {
                "data_source": name,
                "prompt": [
                    {"role": "system", "content": template.system},
                    {"role": "user", "content": template.user.format(problem=example.problem)},
                ],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": example.answer},
                "extra_info": {"id": str(example.id), "split": split, "index": i},
            }
        )
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder for train.parquet and math500.parquet")
    p.add_argument(
        "--data-dir", default=None, help="folder holding math_train/ and math500/ (default: conspo's lookup)"
    )
    args = p.parse_args()
    os.makedirs(os.path.expanduser(args.out), exist_ok=True)
    for split, name in SETS.items():
        path = os.path.join(os.path.expanduser(args.out), f"{split}.parquet")
        table = pd.DataFrame(rows(name, split, args.data_dir))
        table.to_parquet(path)
        print(f"{path}: {len(table)} rows")


if __name__ == "__main__":
    main()

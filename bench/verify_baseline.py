"""Load an older revision of ``conspo.rewards`` next to the current one, for side-by-side runs.

``load_baseline(rev)`` copies ``conspo/rewards/*.py`` at git revision ``rev`` into a temporary
package ``conspo_baseline.rewards`` (imports renamed) and imports it, so one process can score
the same batch with the old and the new code (bench/bench_verify.py, bench/verify_dev.py).
Nothing is copied into the repository. Returns None (with the reason) when git or the revision
is not available, e.g. in a shallow clone.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The reward code before issue 11 (per-completion statuses, extraction/normalisation rework).
DEFAULT_BASELINE_REV = "c0834c9"


def load_baseline(rev: str = DEFAULT_BASELINE_REV):
    """(module ``conspo_baseline.rewards`` at ``rev``, None) or (None, why it is unavailable)."""
    try:
        names = subprocess.run(
            ["git", "ls-tree", "--name-only", f"{rev}:conspo/rewards"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"git revision {rev} not available ({exc})"
    root = Path(tempfile.mkdtemp(prefix="conspo_baseline_"))
    pkg = root / "conspo_baseline" / "rewards"
    pkg.mkdir(parents=True)
    (root / "conspo_baseline" / "__init__.py").write_text("")
    for name in names:
        if not name.endswith(".py"):
            continue
        src = subprocess.run(
            ["git", "show", f"{rev}:conspo/rewards/{name}"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        (pkg / name).write_text(src.replace("conspo.rewards", "conspo_baseline.rewards"))
    sys.path.insert(0, str(root))
    return importlib.import_module("conspo_baseline.rewards"), None

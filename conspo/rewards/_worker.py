"""Entry point of a verification worker process: ``python -m conspo.rewards._worker FN INIT MAX_MEMORY_MB``.

A separate module (not imported by ``conspo.rewards``) so that running it with ``-m`` does not
re-execute a module that is already imported. See ``conspo.rewards.pool``.
"""

import sys

from conspo.rewards.pool import worker_main

if __name__ == "__main__":
    worker_main(sys.argv[1:])

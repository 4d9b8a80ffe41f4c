"""`python -m evomerge` = the `evomerge` command."""

import sys

from evomerge.cli import main

if __name__ == "__main__":  # vLLM's tensor-parallel ranks on CPU are spawned: they re-import this module
    sys.exit(main())

"""``python -m msfer.cli COMMAND`` (as ``torchrun -m msfer.cli train`` starts each process)."""
import sys

from . import main

sys.exit(main())

"""``python -m unlearnkit``, also the form ``accelerate launch -m unlearnkit ...`` starts in every process."""

import os
import sys

from unlearnkit.cli import main

if __name__ == "__main__":
    if os.environ.get("RANK", "0") != "0":
        # Under a launcher every process runs the command; one prints its summary (errors still reach stderr).
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    main()

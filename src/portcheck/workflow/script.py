"""What every workflow/scripts adapter shares: the job's log, and a clean error for problems users can fix."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from typing import Callable


def run_script(snakemake, main: Callable) -> None:
    """Run `main(snakemake)` with stdout, stderr and logging going to the job's log file.
    A PortcheckError is written to the log and to the terminal without a traceback, and fails the job."""
    from portcheck.errors import PortcheckError

    log_path = snakemake.log[0] if snakemake.log else None
    with open(log_path, "a", encoding="utf-8") if log_path else contextlib.nullcontext(sys.stderr) as log:
        handler = logging.StreamHandler(log)
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                main(snakemake)
        except PortcheckError as error:
            message = f"portcheck: {error}"
            print(message, file=log)
            print(message, file=sys.__stderr__)
            sys.exit(1)
        except BaseException:
            traceback.print_exc(file=log)
            raise
        finally:
            logging.getLogger().removeHandler(handler)

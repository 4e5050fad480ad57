"""`dvc` as scripts/dvc runs it: DVC's own command line, less one warning that misleads.

On a clone with no dvc.lock committed (this project commits none: a lock is made by running the
pipeline, and the committed params name an archive this repository does not hold), `dvc exp run`
first checks out the committed outputs, finds that none has been recorded yet, and warns once per
output: "No file hash info found for '<path>'. It won't be created." Nothing is wrong: the
experiment then makes them. Every other message of DVC is kept.
"""

import logging
import sys

from dvc.cli import main

NOISE = "No file hash info found for "


class _NotYetRecorded(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(NOISE)


for name in ("dvc_data.index.checkout", "dvc_data.hashfile.checkout"):
    logging.getLogger(name).addFilter(_NotYetRecorded())

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

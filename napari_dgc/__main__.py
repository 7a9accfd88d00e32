"""``python -m napari_dgc``: the ``napari-dgc`` command line, as ``torchrun -m napari_dgc`` starts it."""

import sys

from napari_dgc.cli import main

sys.exit(main())

"""``python -m exec_client`` is the ``exec-client`` command."""

from ._cli import main

main()

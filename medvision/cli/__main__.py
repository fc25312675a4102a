"""``python -m medvision.cli ...`` (and ``torchrun --module medvision.cli ...``): the ``medvision`` command."""

from medvision.cli import main

main()

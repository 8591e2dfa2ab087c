"""`python -m geovit ...`: what torchrun launches (`torchrun ... -m geovit.cli train ...`)."""

from geovit.cli._common import main

main()

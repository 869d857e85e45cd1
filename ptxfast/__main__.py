"""`python -m ptxfast ...` (also what `torchrun -m ptxfast train ...` runs)."""

from ptxfast.cli import main

if __name__ == "__main__":
    main()

"""`python -m kernelgen ...`: the same command line as `kernelgen ...`."""

from kernelgen.cli import main

main()

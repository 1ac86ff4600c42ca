"""Fuzzing what reads untrusted bytes: the checkpoint loader, the image decoders, the wire.

    python -m tools.fuzz --list                          # the targets
    python -m tools.fuzz --count 10000                   # every target, 10 000 mutants each
    python -m tools.fuzz checkpoint-zip --count 500 --seed 3
    python -m tools.fuzz checkpoint-legacy --seed 0 --save 1234 -o mutant.pt   # one mutant, to debug

mutators.py makes mutants, seeds.py the sound files they start from, targets.py and wire.py feed
them to the code under test, runner.py judges each outcome (see docs/fuzzing.md).
"""

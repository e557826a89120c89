"""DermEval Stage 2 (SOREB): ``accelerate launch recipes/soreb.py --config recipes/configs/...yaml``.

A thin entry point over :mod:`dermtrl.scripts.soreb`, where the usage, the settings and the code are.
"""

from dermtrl.scripts.soreb import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config()).end()  # finish trackers, destroy the process group (as TRL's)

"""DermEval Stage 1 (SFT with TRL's SFTTrainer): ``accelerate launch recipes/sft.py --config recipes/configs/...yaml``.

A thin entry point over :mod:`dermtrl.scripts.sft`, where the usage, the settings and the code are.
"""

from dermtrl.scripts.sft import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config()).end()  # finish trackers, destroy the process group (as TRL's)

"""DermEval Stage 1: supervised fine-tuning of LLaVA-1.5 + LoRA with TRL's SFTTrainer (paper Section 3.3, eq. 1).

The model reads (image, diagnostic narrative) and learns to write the evaluation text y*: a critique followed
by six explicit score fields in Figure 4's label format. Only the assistant turn carries labels.

Usage:

```bash
# the paper's settings (GPU): llava-1.5-7b, LoRA r=64 / alpha=16 / dropout 0.05, lr 2e-5 cosine, 5 epochs
accelerate launch recipes/sft.py --config recipes/configs/dermeval_sft.yaml

# the embedded default: tiny local model, synthetic cases, CPU, a couple of minutes
accelerate launch recipes/sft.py --config recipes/configs/demo_sft.yaml

# any field can be overridden on the command line
accelerate launch recipes/sft.py --config recipes/configs/demo_sft.yaml --num_train_epochs 1
```
"""

from dermtrl.scripts.sft import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config()).end()  # finish trackers, destroy the process group (as TRL's)

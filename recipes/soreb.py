"""DermEval Stage 2: SOREB (Score-Oriented REINFORCE with EMA Baseline, paper Section 3.3, eqs. 2-5).

Continues the Stage-1 LoRA adapter: one sampled evaluation per example, reward = negative MSE between its parsed
scores and the expert scores, an EMA baseline, a policy gradient on the generated tokens only, plus the text loss.

Usage:

```bash
# the paper's settings (GPU): llava-1.5-7b + the Stage-1 adapter, LoRA r=64 / alpha=16, lr 2e-5 cosine, 5 epochs
accelerate launch recipes/soreb.py --config recipes/configs/dermeval_soreb.yaml

# the embedded default: tiny local model, synthetic cases, CPU; runs Stage 1 first when its output is absent and
# prints the Table-1 report on held-out cases before and after Stage 2
accelerate launch recipes/soreb.py --config recipes/configs/demo_soreb.yaml

# data parallel on CPU (both processes end with the same baseline and weights)
accelerate launch --cpu --num_processes 2 recipes/soreb.py --config recipes/configs/demo_soreb.yaml
```
"""

from dermtrl.scripts.soreb import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config()).end()  # finish trackers, destroy the process group (as TRL's)

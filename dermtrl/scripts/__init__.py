"""DermEval's training scripts, as ``trl/scripts``: each module has ``main(script_args, training_args, model_args)``
and ``make_parser()``. ``recipes/sft.py`` and ``recipes/soreb.py`` are thin entry points over them, so
``accelerate launch recipes/soreb.py --config ...`` works, and so does importing them from Python (the Space,
Stage 2 running Stage 1 first) without loading a file by its path."""

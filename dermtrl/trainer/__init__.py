"""Stage 2 of DermEval: the SOREB trainer and its config, TRL-shaped (``SOREBConfig`` beside ``SOREBTrainer``).

Import from the modules (``from dermtrl.trainer.<module> import ...``): this package imports nothing, so
that loading one module never pulls in another's heavy dependencies."""

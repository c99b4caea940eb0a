"""One run, top to bottom: the recipe, its step, the loss, evaluation, the protocol, checkpoints."""

"""The one listwise prompt (inference, labelling, training) and the exact prompts of published checkpoints."""

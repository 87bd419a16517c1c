"""Training recipes (sft, rl) as plain loops built from small components."""

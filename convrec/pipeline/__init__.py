"""Stage 1: teacher lists -> remap -> reflect -> adjust -> SFT set (see PAPER.md, "Stage 1")."""

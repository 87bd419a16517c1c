"""`convrec demo`: the whole pipeline as a plan of CLI steps (`plan`), with the two RL runs run as
side-by-side child processes (`side_by_side`)."""
